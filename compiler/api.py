"""The public entry point: `compiler.compile(model, example_inputs=None, target="cpu", passes=None)`.

    compiled = compiler.compile(hf_model)          # traces on the first call
    out = compiled(input_ids)                      # same structure as hf_model(input_ids)
    print(compiled.graph)                          # the final IR

Like torch.compile, a model compiled without example inputs is traced on its first call and
re-traced when a call no longer fits a traced graph (other shapes, dtypes or argument structure).
Hugging Face models are traced with a symbolic sequence length, so one trace serves all lengths.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch
from torch.utils import _pytree as pytree

import ir
from backends import Executable, get_backend
from ir.errors import CompileError
from ir.interpreter import RuntimeShapeError

DEFAULT_PASSES = "fold_transposes,constant_fold,cse,dce"
MAX_TRACES = 8  # re-traces kept per compiled model before warning, like torch.compile's cache limit


@dataclass
class _Specialization:
    imported: Any  # frontends.common.Imported
    graph: ir.Graph  # what runs: after the user's pipeline and the target's layout passes
    executable: Executable
    portable: ir.Graph  # before the layout passes: what save() writes, loadable for any target

    @property
    def source(self) -> str | None:
        """The code the backend generated for this trace (None for the reference runtime)."""
        return self.executable.source


class Compiled:
    """A compiled model: call it like the model. `.graph` is the final IR, `.source` the code."""

    def __init__(self, model: torch.nn.Module | ir.Graph, target: str, passes: Any, dynamic: bool | None,
                 verify: bool, print_ir_after_all: bool | TextIO, time_passes: bool, dump_dir: str | Path | None,
                 calibration: Sequence[Any] | None = None, loss: Any = None):
        self.model, self.target = model, target
        self.calibration, self.loss = calibration, loss
        self.backend = get_backend(target)
        self.passes = DEFAULT_PASSES if passes is None else passes
        self._pm_options = dict(verify=verify, print_ir_after_all=print_ir_after_all, time_passes=time_passes,
                                dump_dir=dump_dir)
        self.dynamic = dynamic
        self._specs: list[_Specialization] = []

    # -- tracing -----------------------------------------------------------------------------------
    def _build(self, imported: Any, extra: str = "", calibration: list[list[np.ndarray]] | None = None) -> _Specialization:
        """Run the pipeline (then the passes in `extra`) and the target's lowering on an imported
        graph; `calibration`: graph-input samples, else the compile() samples mapped onto this trace."""
        from passes import PassContext

        from .pass_manager import PassManager, lower

        if calibration is None:
            calibration = self._calibration_inputs(imported)
        ctx = PassContext(calibration=calibration or None, model=self.model, loss=self.loss)
        pm = PassManager(self.passes, context=ctx, **self._pm_options)
        g = pm.run(imported.graph)
        if extra:
            g = PassManager(extra, **self._pm_options).run(g)
        else:
            self.pass_manager = pm
        lowered = lower(self.backend, g, **self._pm_options)
        return _Specialization(imported, lowered, self.backend.build(lowered), g)

    def _calibration_inputs(self, imported: Any) -> list[list[np.ndarray]] | None:
        """Calibration samples (each like example_inputs: a tuple of args, a dict of kwargs, or one
        tensor) as graph-input arrays."""
        if self.calibration is None:
            return None
        out = []
        for i, sample in enumerate(self.calibration):
            if isinstance(sample, torch.Tensor):
                sample = (sample,)
            args, kwargs = ((), dict(sample)) if isinstance(sample, dict) else (tuple(sample), {})
            xs = imported.graph_inputs(args, kwargs)
            if xs is None:
                raise CompileError(f"calibration sample {i} does not match the traced signature; give it like example_inputs")
            out.append(xs)
        return out

    def trace(self, args: tuple, kwargs: dict) -> _Specialization:
        if isinstance(self.model, ir.Graph):
            raise CompileError("an IR graph has no Python signature to re-trace; call it with arrays matching its inputs")
        spec = self._build(self._import(args, kwargs))
        self._specs.insert(0, spec)
        if len(self._specs) > MAX_TRACES:
            self._specs.pop()
            warnings.warn(f"compiled {type(self.model).__name__} re-traced more than {MAX_TRACES} times; "
                          "pass example_inputs with dynamic=True or keep input shapes fixed", stacklevel=3)
        return spec

    def _import(self, args: tuple, kwargs: dict) -> Any:
        """The model traced for a call (a frontends.common.Imported)."""
        from frontends.torch_export import export

        return export(self.model, args, kwargs, dynamic=self.dynamic)

    def step_graph(self, batch: int) -> Any:
        """The KV-cache step graph that generate() compiles for `batch` prompts (a frontends.kv_cache.CacheGraph)."""
        from frontends.kv_cache import export_with_cache

        return export_with_cache(self.model, batch)

    @property
    def graph(self) -> ir.Graph:
        if not self._specs:
            raise CompileError("not traced yet: call the compiled model once, or pass example_inputs to compile()")
        return self._specs[0].graph

    @property
    def source(self) -> str | None:
        """The generated code of the latest trace (target="cpu": a NumPy module); None for the
        reference runtime or before the first trace. Each trace's is in `_specs[i].source`."""
        return self._specs[0].source if self._specs else None

    # -- calling -----------------------------------------------------------------------------------
    def _inputs_for(self, spec: _Specialization, args: tuple, kwargs: dict) -> list[np.ndarray] | None:
        """The graph inputs for this call, or None if the call does not fit this trace."""
        xs = spec.imported.graph_inputs(args, kwargs)
        if xs is None:
            return None
        try:
            ir.interpreter.bind_inputs(spec.graph, xs)
        except RuntimeShapeError:
            return None
        return xs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from frontends.common import to_torch

        if isinstance(self.model, ir.Graph):
            outs = self._specs[0].executable([np.asarray(a) for a in args])
            return outs[0] if len(outs) == 1 else tuple(outs)
        for spec in self._specs:
            xs = self._inputs_for(spec, args, kwargs)
            if xs is not None:
                break
        else:
            self._check_arguments(args, kwargs)
            spec = self.trace(args, kwargs)
            xs = self._inputs_for(spec, args, kwargs)
            if xs is None:
                raise CompileError("internal: a fresh trace does not accept the inputs it was traced with")
        outs = [to_torch(o) for o in spec.executable(xs)]
        imp = spec.imported
        return pytree.tree_unflatten(outs, imp.out_spec) if imp.out_spec is not None else tuple(outs)

    def _check_arguments(self, args: tuple, kwargs: dict) -> None:
        """A call that fits no trace: refuse what the model's forward cannot bind, a NumPy array anywhere (a trace
        would bake it in as a constant), and anything but a tensor where a trace of this structure took one."""
        import inspect

        try:
            sig = inspect.signature(self.model.forward)
        except (TypeError, ValueError):  # no signature to read: the trace will say
            sig = None
        if sig is not None:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as e:
                raise CompileError(f"compiled {type(self.model).__name__}: {e}; its forward takes {sig}") from None
        takes_tensor: set[int] = set()
        for s in self._specs:
            call = (tuple(args), {**kwargs, **s.imported.extra_kwargs})
            if s.imported.in_spec is not None and pytree.tree_structure(call) == s.imported.in_spec:
                takes_tensor |= set(s.imported.input_leaves)
        for i, (path, leaf) in enumerate(pytree.tree_flatten_with_path((tuple(args), {**kwargs}))[0]):
            if isinstance(leaf, np.ndarray) or (i in takes_tensor and not isinstance(leaf, torch.Tensor)):
                key = path[1].key if isinstance(path[1], pytree.MappingKey) else f"argument {path[1].idx}"
                kind = type(leaf).__qualname__
                kind = kind if type(leaf).__module__ == "builtins" else f"{type(leaf).__module__}.{kind}"
                raise CompileError(f"compiled {type(self.model).__name__}: {key}{pytree.keystr(path[2:])} is a {kind}; "
                                   "call it as the model, with "
                                   "torch.Tensor arguments (torch.as_tensor(x) converts a list or a NumPy array)")

    # -- generation --------------------------------------------------------------------------------
    @property
    def generator(self) -> Any:
        """The decoding runtime (compiler/generate.py): KV-cache step graphs compiled like this model."""
        if getattr(self, "_generator", None) is None:
            from .generate import Generator
            from .seq2seq import Seq2SeqGenerator

            seq2seq = getattr(getattr(self.model, "config", None), "is_encoder_decoder", False)
            self._generator = Seq2SeqGenerator(self) if seq2seq else Generator(self)
        return self._generator

    def generate(self, input_ids: Any, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, **kwargs: Any) -> Any:
        """Generate from a causal LM with a KV cache, with Hugging Face `generate`'s keywords: the
        prompt followed by the new token ids (an encoder-decoder model such as T5: the decoder's ids,
        the encoder run once; compiler/seq2seq.py). Also `attention_mask` (left padding), `pad_token_id`
        and `hooks` (compiler.generate.DecodingHook). Greedy unless `do_sample`; `seed` makes
        sampling reproducible. `grammar=` (lark EBNF) or `json_schema=`, with `tokenizer=`,
        constrain the output to a grammar (compiler/grammar). `.generator.stats` has the timings of the last call."""
        _keywords(self.generator.stream, kwargs, "generate")
        return self.generator.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                       eos_token_id=eos_token_id, **kwargs)

    def stream(self, input_ids: Any, **kwargs: Any) -> Any:
        """Like `generate`, but yields each step's new tokens (int64 [batch]) as they are produced."""
        _keywords(self.generator.stream, {k: v for k, v in kwargs.items() if k != "input_ids"}, "stream")
        return self.generator.stream(input_ids, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the final IR, its weights (safetensors) and a manifest to the directory `path`;
        `compiler.load(path)` brings it back without re-running the passes. No pickle anywhere."""
        from .artifact import save

        if not self._specs:
            raise CompileError("not traced yet: call the compiled model once, or pass example_inputs, before save()")
        spec = self._specs[0]
        return save(spec.portable, path, imported=spec.imported if spec.imported.in_spec is not None else None,
                    target=self.target, pipeline=str(self.pass_manager))

    def __repr__(self) -> str:
        return f"<Compiled {type(self.model).__name__} target={self.target!r} traces={len(self._specs)}>"


def _keywords(fn: Any, kwargs: dict, what: str) -> None:
    """Keywords `fn` does not take are a CompileError naming those it does (as HF generate refuses them)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise CompileError(f"{what}() got unknown keyword argument(s) {unknown}; it takes {sorted(set(params) - {'self'})}")


_OPTIONS = {"dynamic", "verify", "print_ir_after_all", "time_passes", "dump_dir", "calibration", "loss"}


def compile(model: torch.nn.Module | ir.Graph, example_inputs: Sequence[Any] | dict[str, Any] | None = None,
            target: str = "cpu", passes: Any = None, **options: Any) -> Compiled:
    """Compile a PyTorch model (or an IR graph) for `target` ("cpu", "reference", "cuda").

    example_inputs: positional args as a tuple/list, or keyword args as a dict; without them the
        model is traced on its first call.
    passes: a pipeline spec ("dce,cse"), a list of passes, or None for the default pipeline.
    options: dynamic (symbolic sequence length; default on for Hugging Face models), verify
        (verify after every pass; default True), print_ir_after_all, time_passes, dump_dir,
        calibration (samples shaped like example_inputs, for data-driven passes), loss
        (`loss(model) -> scalar` for passes that use gradients).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise CompileError(f"unknown option(s) {sorted(unknown)}; compile() takes {sorted(_OPTIONS)}")
    c = Compiled(model, target, passes, options.get("dynamic"), options.get("verify", True),
                 options.get("print_ir_after_all", False), options.get("time_passes", False), options.get("dump_dir"),
                 options.get("calibration"), options.get("loss"))
    if isinstance(model, ir.Graph):
        from frontends.common import Imported

        c._specs.append(c._build(Imported(model, None, list(range(len(model.inputs))), None)))
    elif example_inputs is not None:
        if not isinstance(example_inputs, (tuple, list, dict)):
            raise CompileError(f"example_inputs must be a tuple or list of positional arguments or a dict of keyword "
                               f"arguments, got {type(example_inputs).__name__} (one tensor x: pass (x,))")
        args, kwargs = (tuple(), dict(example_inputs)) if isinstance(example_inputs, dict) else (tuple(example_inputs), {})
        c.trace(args, kwargs)
    elif not isinstance(model, torch.nn.Module):
        raise CompileError(f"compile() takes a torch.nn.Module or an ir.Graph, got {type(model).__name__}")
    return c


class GGUFCompiled(Compiled):
    """compile_gguf's result: a Compiled whose every graph (the KV-cache step, and a forward call's
    trace) holds the file's weights as stored, quantized ones as u8 blocks decoded by `dequant_gguf`
    nodes; `.tokenizer` is the file's. Until a forward call is traced, `.graph`, `.source` and
    `.save()` are the batch-1 step graph's (compile_gguf builds it)."""

    def __init__(self, gm: Any, target: str, passes: Any, **options: Any):
        super().__init__(gm.model, target, passes, options.get("dynamic"), options.get("verify", True),
                         options.get("print_ir_after_all", False), options.get("time_passes", False),
                         options.get("dump_dir"), options.get("calibration"))
        self.gguf, self.tokenizer = gm, gm.tokenizer

    def _import(self, args: tuple, kwargs: dict) -> Any:
        from frontends.gguf import bind_gguf

        imp = super()._import(args, kwargs)  # the skeleton's weights are uninitialised: bind every one
        return replace(imp, graph=bind_gguf(imp.graph, self.gguf))

    def step_graph(self, batch: int) -> Any:
        from frontends.gguf import gguf_graph

        return gguf_graph(self.gguf, batch)

    def _step(self) -> _Specialization:
        return self.generator.step_for(1, False)[0]

    @property
    def graph(self) -> ir.Graph:
        return self._specs[0].graph if self._specs else self._step().graph

    @property
    def source(self) -> str | None:
        return self._specs[0].source if self._specs else self._step().source

    def save(self, path: str | Path) -> Path:
        return super().save(path) if self._specs else self.generator.save(path)

    def __repr__(self) -> str:
        return f"<GGUFCompiled {self.gguf.path.name} ({self.gguf.architecture}) target={self.target!r}>"


def compile_gguf(path: str | Path, target: str = "cpu", passes: Any = None, **options: Any) -> GGUFCompiled:
    """Compile a llama.cpp GGUF file for `target` with its weights exactly as the file stores them:
    quantized tensors stay their blocks (`dequant_gguf`, bit-identical to gguf-py's decoder), never
    requantized. The batch-1 KV-cache step graph is traced and compiled now (`passes` run on it as
    compile()'s do), so `.generate`, `.stream` and `.save` are ready; `.tokenizer` is the file's.
    options: as compile()'s, but `loss` (no gradients through a file). Raises
    frontends.gguf.GGUFError for a file it cannot load (truncated, unsupported type or architecture)."""
    from frontends.gguf import read_gguf

    unknown = set(options) - (_OPTIONS - {"loss"})
    if unknown:
        raise CompileError(f"unknown option(s) {sorted(unknown)}; compile_gguf() takes {sorted(_OPTIONS - {'loss'})}")
    c = GGUFCompiled(read_gguf(path), target, passes, **options)
    c._step()
    return c


__all__ = ["compile", "compile_gguf", "Compiled", "GGUFCompiled", "DEFAULT_PASSES"]
