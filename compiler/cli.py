"""The `tritium` command line.

    tritium compile examples/llama.py:build --dump-ir -
    tritium compile examples/llama.py:build --emit out/   # the generated C of the whole graph: out/step.c
    tritium opt model.ir --passes constant_fold,cse,dce --print-ir-after-all
    tritium generate examples/smollm2.py:load --prompt "The capital of France is" --passes ptqtp
    tritium generate examples/smollm2.py:load --prompt "A user as JSON:" --json-schema user.json --do-sample
    tritium generate SmolLM2-135M-Instruct.Q4_1.gguf --prompt "Hello"   # a llama.cpp file, as it stores its weights
    tritium analyze examples/smollm2.py:load --passes ptqtp --hardware h100 --kv-len 512   # roofline, per op kind
    tritium passes        # every pass: options, types, defaults, what it does, where it came from
    tritium ops           # every IR op signature

Each subcommand is an entry of COMMANDS: name -> (help, add its arguments, run it). A run function
returns the exit status; user errors are TritiumErrors, printed as `tritium: error: ...` (status 1).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import ir

Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def read_text(path: str, what: str) -> str:
    """A UTF-8 text file (or - for stdin); a directory, a missing file or binary data is a user error."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ir.TritiumError(f"{what} {path}: not UTF-8 text (byte {e.start}); give a text file") from None
    except OSError as e:
        raise ir.TritiumError(f"cannot read {what} {path}: {e.strerror or e}") from None


def write_text(path: str, text: str, what: str) -> None:
    """Write `text` to a file (- for stdout); a directory or an unwritable path is a user error."""
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ir.TritiumError(f"cannot write {what} {path}: {e.strerror or e}") from None


def out_dir(path: str | None, what: str) -> None:
    """A directory the command will write into: it may exist, but not as a file."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise ir.TritiumError(f"{what} {path}: exists and is not a directory; give a directory")


def _opt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="IR text file, or - for stdin")
    p.add_argument("--passes", default="", help='pipeline, e.g. "constant_fold,cse,dce" (see `tritium passes`)')
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass to stderr")
    p.add_argument("--time-passes", action="store_true", help="print a table of pass times to stderr")
    p.add_argument("--dump-dir", help="write every stage as NNN_<pass>.ir into this directory")
    p.add_argument("--no-verify", action="store_true", help="don't verify the input and each pass's output")
    p.add_argument("-o", "--output", default="-", help="where to write the result IR (default: stdout)")


def _opt(args: argparse.Namespace) -> int:
    from .pass_manager import PassManager

    text = read_text(args.file, "IR file")
    out_dir(args.dump_dir, "--dump-dir")
    pm = PassManager(args.passes, verify=not args.no_verify, print_ir_after_all=args.print_ir_after_all,
                     time_passes=args.time_passes, dump_dir=args.dump_dir)
    g = ir.parse(text, verify=not args.no_verify)
    write_text(args.output, str(pm.run(g)), "-o")
    return 0


def _passes(args: argparse.Namespace) -> int:
    from passes import PASSES, pass_origin

    for name, cls in PASSES.items():  # reading PASSES loads plugins
        opts = ", ".join(f"{k}: {t} = {d!r}" for k, t, d in cls.options())
        print(f"{name}{f' {{{opts}}}' if opts else ''}  [{pass_origin(name)}]")
        print(f"    {cls.summary()}")
    return 0


def _ops(args: argparse.Namespace) -> int:
    for name in sorted(ir.OPS):
        op = ir.OPS[name]
        print(op.signature() + (f"\n    {op.doc}" if op.doc else ""))
    return 0


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="path/file.py:function, where function() returns (model, example_inputs)")
    p.add_argument("--target", default="cpu", help="reference, cpu or cuda (default: cpu)")
    p.add_argument("--passes", default=None, help="pipeline spec (default: the compiler's default pipeline)")
    p.add_argument("--dump-ir", metavar="FILE", help="write the final IR to FILE, or - for stdout")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass to stderr")
    p.add_argument("--time-passes", action="store_true", help="print a table of pass times to stderr")
    p.add_argument("--dump-dir", help="write every stage as NNN_<pass>.ir into this directory")
    p.add_argument("--no-run", action="store_true", help="compile only; don't run the example inputs")
    p.add_argument("--report", action="store_true", help="per quantized layer: relative error and bits per weight; model size")
    p.add_argument("--save", metavar="DIR", help="save the compiled model (IR, safetensors weights, manifest) to DIR")
    p.add_argument("--emit", metavar="DIR", help="write the generated code to DIR (target=cpu: DIR/step.c, one C function per node)")


def load_spec(spec: str, second: str = "example_inputs") -> tuple[Any, Any]:
    """Import `path/file.py:function` and call it; it must return (model, example_inputs) (or, for
    `tritium generate`, (model, tokenizer): `second` names it in the error)."""
    import importlib.util
    from pathlib import Path

    path, sep, func = spec.rpartition(":")
    if not sep or not path or not func:
        raise ir.TritiumError(f"SPEC must look like path/file.py:function, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise ir.TritiumError(f"SPEC {spec!r}: no such file {path}")
    mod_spec = importlib.util.spec_from_file_location(f"_tritium_spec_{file.stem}", file)
    if mod_spec is None or mod_spec.loader is None:  # not a .py file
        raise ir.TritiumError(f"SPEC {spec!r}: {path} is not a Python file (.py)")
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(file.parent.resolve()))  # let the file import its neighbours
    try:
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ir.TritiumError(f"SPEC {spec!r}: {path} has no function {func!r}")
    result = fn()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ir.TritiumError(f"SPEC {spec!r}: {func}() must return (model, {second}), got {type(result).__name__}")
    return result


def emit(executable: Any, directory: str, target: str) -> list[str]:
    """Write a backend's generated files (`executable.files`, else its `.source` as forward.py) to `directory`."""
    from pathlib import Path

    files = getattr(executable, "files", None) or ({"forward.py": executable.source} if executable.source else {})
    if not files:
        raise ir.TritiumError(f"target={target} generates no code to emit; use --target cpu")
    out = Path(directory)
    written = []
    for name, text in files.items():
        path = out / name
        if Path(name).is_absolute() or ".." in Path(name).parts:  # a backend names files inside DIR only
            raise ir.TritiumError(f"refusing to write generated file {name!r} outside {directory}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(str(path))
    return written


def _compile(args: argparse.Namespace) -> int:
    import torch
    from torch.utils import _pytree as pytree

    import compiler

    model, example = load_spec(args.spec)
    if not isinstance(model, (torch.nn.Module, ir.Graph)):
        raise ir.TritiumError(f"SPEC {args.spec!r}: the first value must be a torch.nn.Module or an ir.Graph, "
                              f"got {type(model).__name__}")
    for d, what in ((args.dump_dir, "--dump-dir"), (args.save, "--save"), (args.emit, "--emit")):
        out_dir(d, what)
    c = compiler.compile(model, example, target=args.target, passes=args.passes,
                         print_ir_after_all=args.print_ir_after_all, time_passes=args.time_passes,
                         dump_dir=args.dump_dir)
    if args.dump_ir:
        write_text(args.dump_ir, str(c.graph), "--dump-ir")
    if args.report:
        from .report import format_fallbacks, format_report, quantization_report

        print(format_report(*quantization_report(c._specs[0].imported.graph, c.graph)))
        fallbacks = format_fallbacks(c._specs[0].executable)
        if fallbacks:
            print(fallbacks)
    if args.save:
        print(f"// saved to {c.save(args.save)}", file=sys.stderr)
    if args.emit:
        for path in emit(c._specs[0].executable, args.emit, args.target):
            print(f"// wrote {path}", file=sys.stderr)
    print(f"// compiled {type(model).__name__} for target={args.target}: {len(c.graph.nodes)} nodes, "
          f"{len(c.graph.params)} params ({c.graph.param_bytes() / 1e6:.2f} MB)", file=sys.stderr)
    if args.no_run:
        return 0
    pos, kw = (tuple(), dict(example)) if isinstance(example, dict) else (tuple(example), {})
    with torch.no_grad():
        out = c(*pos, **kw)
        ref = model(*pos, **kw, **c._specs[0].imported.extra_kwargs) if isinstance(model, torch.nn.Module) else None
    ref_leaves = pytree.tree_leaves(ref) if ref is not None else []
    for i, (path, leaf) in enumerate(pytree.tree_flatten_with_path(out)[0]):
        name = pytree.keystr(path) or "output"
        line = f"{name}: {str(leaf.dtype).removeprefix('torch.')}{list(leaf.shape)} {leaf.flatten()[:4].tolist()}"
        if i < len(ref_leaves) and isinstance(ref_leaves[i], torch.Tensor):
            line += f"  max |compiled - eager| = {(leaf - ref_leaves[i]).abs().max().item():.2e}"
        print(line)
    return 0


def _analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="path/file.py:function returning (model, example_inputs) or, for a causal LM, "
                   "(model, tokenizer); or a .gguf file")
    p.add_argument("--passes", default=None, help="pipeline spec, e.g. ptqtp (default: the compiler's default pipeline)")
    p.add_argument("--target", default="cpu", help="whose lowering to analyze: reference, cpu or cuda (default: cpu)")
    p.add_argument("--hardware", default="this-machine", metavar="NAME|FILE.toml",
                   help="h100, a100, epyc-2core-avx2, a TOML file, or this-machine (measured now, default)")
    p.add_argument("--seq", type=int, default=None, help="prompt tokens: the prefill's length (default 128; other "
                   "models: the example inputs')")
    p.add_argument("--batch", type=int, default=None, help="prompts per step (causal LMs; default 1)")
    p.add_argument("--kv-len", type=int, default=None, help="positions the decode step attends to, itself included "
                   "(causal LMs; default seq + 1)")
    p.add_argument("--per-op", action="store_true", help="also list every node")
    p.add_argument("--plot", metavar="FILE.png", help="write a roofline plot, each op kind a point")
    p.add_argument("--profile", action="store_true", help="run the step (target cpu, native) and show each op's "
                   "measured time beside its prediction")
    p.add_argument("--repeat", type=int, default=20, help="--profile: timed runs (default 20; medians)")


def _analyze(args: argparse.Namespace) -> int:
    import torch

    import compiler
    from compiler import analyze as an

    for v, what in ((args.seq, "--seq"), (args.batch, "--batch"), (args.kv_len, "--kv-len"), (args.repeat, "--repeat")):
        if v is not None and v < 1:
            raise ir.TritiumError(f"{what} must be >= 1, got {v}")
    if args.profile and args.target != "cpu":
        raise ir.TritiumError(f"--profile runs the native CPU step; use --target cpu, not {args.target}")
    hw = an.load_hardware(args.hardware)  # before compiling: a bad name fails at once
    example: Any = None
    if args.spec.endswith(".gguf"):
        if not Path(args.spec).is_file():
            raise ir.TritiumError(f"SPEC {args.spec!r}: no such GGUF file")
        c = compiler.compile_gguf(args.spec, target=args.target, passes=args.passes)
        lm = True
    else:
        model, example = load_spec(args.spec, "example_inputs or tokenizer")
        if not isinstance(model, torch.nn.Module):
            raise ir.TritiumError(f"SPEC {args.spec!r}: the first value must be a torch.nn.Module, got {type(model).__name__}")
        lm = callable(getattr(model, "can_generate", None)) and model.can_generate()
        c = compiler.compile(model, None if lm else example, target=args.target, passes=args.passes)
    analyses = []
    if lm:  # the KV-cache step graph, as generate() runs it: the prefill, then one decode step
        seq, batch = args.seq or 128, args.batch or 1
        kv = args.kv_len or seq + 1
        spec, _ = c.generator.step_for(batch, False)
        g = spec.graph
        analyses.append(an.analyze(g, an.step_env(g, seq, seq), hw, f"prefill of {batch} x {seq} tokens"))
        env = an.step_env(g, 1, kv)
        analyses.append(an.analyze(g, env, hw, f"decode step (batch {batch}, kv-len {kv})"))
        inputs = an.step_inputs(g, env)
    else:
        if args.batch is not None or args.kv_len is not None:
            raise ir.TritiumError("--batch and --kv-len apply to causal LMs (their KV-cache step graph); "
                                  f"{type(model).__name__} is analyzed at its example inputs' shapes")
        spec = c._specs[0]
        pos, kw = (tuple(), dict(example)) if isinstance(example, dict) else (tuple(example), {})
        inputs = spec.imported.graph_inputs(pos, kw)
        env = ir.interpreter.bind_inputs(spec.graph, inputs)
        if args.seq is not None:  # the sequence axis: the first input's axis 1, when it is symbolic
            d = spec.graph.inputs[0][1].shape[1:2]
            if not (d and isinstance(d[0], str) and d[0] in env):
                raise ir.TritiumError("--seq: the first input has no symbolic sequence axis (axis 1)")
            env[d[0]] = args.seq
            inputs = None
        analyses.append(an.analyze(spec.graph, env, hw, f"forward of {type(model).__name__}"))
    if args.profile:
        if inputs is None:
            raise ir.TritiumError("--profile runs the example inputs; drop --seq (or give inputs of that length)")
        an.attach(analyses[-1], an.profile(spec, inputs, args.repeat))
    print("\n\n".join(an.format_analysis(a, per_op=args.per_op) for a in analyses))
    if args.plot:
        an.plot(analyses, args.plot)
        print(f"// wrote {args.plot}", file=sys.stderr)
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="path/file.py:function, where function() returns (model, tokenizer); "
                   "or a .gguf file (its weights and tokenizer, the quantized blocks kept as stored)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--target", default="cpu", help="reference, cpu or cuda (default: cpu)")
    p.add_argument("--passes", default=None, help="pipeline spec, e.g. ptqtp (default: the compiler's default pipeline)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grammar", metavar="FILE.lark", help="constrain the output to a lark EBNF grammar (start rule: start)")
    g.add_argument("--json-schema", metavar="FILE.json", help="constrain the output to JSON valid against this schema")


def _generate(args: argparse.Namespace) -> int:
    import torch

    import compiler

    if not args.prompt:
        raise ir.TritiumError("--prompt is empty; give the text to continue")
    if args.seed is not None and args.seed < 0:
        raise ir.TritiumError(f"--seed must be >= 0, got {args.seed}")
    if args.spec.endswith(".gguf"):
        if not Path(args.spec).is_file():
            raise ir.TritiumError(f"SPEC {args.spec!r}: no such GGUF file")
        c = compiler.compile_gguf(args.spec, target=args.target, passes=args.passes)
        tok = c.tokenizer
    else:
        model, tok = load_spec(args.spec, "tokenizer")
        if not isinstance(model, torch.nn.Module):
            raise ir.TritiumError(f"SPEC {args.spec!r}: the first value must be a torch.nn.Module, got {type(model).__name__}")
        if not (hasattr(tok, "encode") and hasattr(tok, "decode")):
            raise ir.TritiumError(f"SPEC {args.spec!r}: the second value must be a tokenizer (encode/decode), "
                                  f"got {type(tok).__name__}")
        c = compiler.compile(model, target=args.target, passes=args.passes)
    ids = tok.encode(args.prompt)
    eos = getattr(tok, "eos_token_id", None)
    constrain: dict = {}
    if args.grammar or args.json_schema:
        what = "--grammar" if args.grammar else "--json-schema"
        constrain = {"grammar" if args.grammar else "json_schema": read_text(args.grammar or args.json_schema, what),
                     "tokenizer": tok}
        eos = None  # the grammar's stop tokens (the tokenizer's), allowed where it is complete
    print(args.prompt, end="", flush=True)
    new: list[int] = []
    shown = ""
    for t in c.stream([ids], max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_token_id=eos, **constrain):
        new.append(int(t[0]))
        text = tok.decode(new, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # a multi-byte character still incomplete
            print(text[len(shown):], end="", flush=True)
            shown = text
    st = c.generator.stats
    print(f"\n// {len(new)} tokens; prefill {st.prompt_tokens} tokens in {st.prefill_s * 1e3:.0f} ms; "
          f"decode {st.decode_tokens_per_s:.1f} tokens/s (target={args.target})", file=sys.stderr)
    return 0


COMMANDS: dict[str, tuple[str, Setup, Run]] = {
    "compile": ("compile a model (SPEC = file.py:function) and show its IR and outputs", _compile_args, _compile),
    "opt": ("run a pass pipeline on IR text and print the result", _opt_args, _opt),
    "generate": ("generate text from a causal LM (SPEC = file.py:function returning (model, tokenizer), or a .gguf file)",
                 _generate_args, _generate),
    "analyze": ("roofline analysis: per op, layer and op kind the FLOPs, bytes, bound and predicted time on a "
                "machine (SPEC as for compile or generate, or a .gguf file)", _analyze_args, _analyze),
    "passes": ("list every pass with its options", lambda p: None, _passes),
    "ops": ("list every IR op signature", lambda p: None, _ops),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritium", description="Tritium: a plugin-based model compiler.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_, setup, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        setup(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ir.TritiumError as e:  # user errors: a message, never a traceback
        print(f"tritium: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
