"""Ahead-of-time compilation of generated kernels for real GPUs, on a machine without one.

    with exe.recording() as launches:      # run the model once (e.g. in the interpreter)
        exe(inputs)
    reports = compile_launches(exe, launches, archs=(80, 90))

Each launch is compiled the way the GPU would run it (its argument types and constexprs) through
Triton's whole pipeline down to cubin for sm_80 / sm_90, and ptxas (the one Triton ships) reports
registers, spills and shared memory per kernel. `check(reports)` fails on spills unless the kernel
is listed in ALLOWED_SPILLS with a reason.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ir.errors import CompileError

# kernel text fragment -> why spilling there is accepted (none so far)
ALLOWED_SPILLS: dict[str, str] = {}

_TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int64": "i64",
                    "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}


@dataclass(frozen=True)
class LaunchKey:
    kernel: str  # kernel name in the module
    signature: tuple[tuple[str, str], ...]  # (param, triton type), in order
    constexprs: tuple[tuple[str, int], ...]
    options: tuple[tuple[str, int], ...] = ()  # launch options: num_warps, num_stages


OPTIONS = ("num_warps", "num_stages")


@dataclass
class KernelReport:
    kernel: str
    arch: int
    constexprs: dict[str, int]
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int  # bytes of shared memory (Triton's metadata)
    num_warps: int
    cubin_bytes: int

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def arg_type(v: Any) -> str:
    import torch

    if isinstance(v, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(v.dtype).removeprefix("torch.")]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    raise CompileError(f"kernel argument of type {type(v).__name__} has no Triton signature type")


class Recorder:
    """Stands in for a kernel in the generated module: records each launch's types, then runs it
    (unless `run` is False)."""

    def __init__(self, name: str, kernel: Any, sink: set[LaunchKey], run: bool = True) -> None:
        self.name, self.kernel, self.sink, self.run = name, kernel, sink, run

    def __getitem__(self, grid: Any) -> Any:
        launch = self.kernel[grid] if self.run else (lambda *a, **k: None)

        def run(*args: Any, **constexprs: int) -> Any:
            params = self.kernel.arg_names
            sig = tuple((p, arg_type(a)) for p, a in zip(params, args))
            cx = tuple(sorted((k, v) for k, v in constexprs.items() if k not in OPTIONS))
            opts = tuple(sorted((k, v) for k, v in constexprs.items() if k in OPTIONS))
            self.sink.add(LaunchKey(self.name, sig, cx, opts))
            return launch(*args, **constexprs)
        return run


def merge(recorded: Iterable[tuple[dict[str, str], set[LaunchKey]]]) -> tuple[str, set[LaunchKey], dict[str, str]]:
    """One module holding every distinct kernel of several executables ((exe.kernels, launches) pairs),
    and their launches renamed into it: each kernel text is compiled once however many models use it."""
    names: dict[str, str] = {}  # kernel text with its name replaced -> name in the merged module
    out: set[LaunchKey] = set()
    for kernels, launches in recorded:
        for k in launches:
            text = re.sub(rf"^def {re.escape(k.kernel)}\(", "def KERNEL(", kernels[k.kernel], flags=re.M)
            out.add(dataclasses.replace(k, kernel=names.setdefault(text, f"k{len(names)}")))
    texts = {n: t.replace("def KERNEL(", f"def {n}(", 1) for t, n in names.items()}
    return "import triton\nimport triton.language as tl\n\n\n" + "\n\n".join(texts.values()), out, texts


def unexplained_spills(reports: list[KernelReport], kernels: dict[str, str]) -> list[KernelReport]:
    """Reports of kernels that spill registers and are not listed (by a text fragment) in ALLOWED_SPILLS."""
    return [r for r in reports if r.spills and not any(f in kernels[r.kernel] for f in ALLOWED_SPILLS)]


def ptxas_info(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ptxas -v of Triton's own ptxas."""
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.ptx"
        f.write_text(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", "-o", str(Path(d) / "k.cubin"), str(f)],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise CompileError(f"ptxas failed for {gpu}: {r.stderr.strip()[:500]}")
    text = r.stdout + r.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if regs is None or spills is None:
        raise CompileError(f"could not read registers/spills from ptxas -v output:\n{text[:500]}")
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


def aot_kernels(source: str) -> dict[str, Any]:
    """The module's kernels as triton JITFunctions (never the interpreter's stand-ins), for compilation."""
    from triton.runtime.jit import JITFunction

    from . import load_module

    ns = load_module(source, {"_dev": "cuda"}, JITFunction)
    return {k: v for k, v in ns.items() if isinstance(v, JITFunction)}


def compile_launches(source: str, launches: Iterable[LaunchKey], archs: Iterable[int] = (80, 90)) -> list[KernelReport]:
    """Compile each recorded launch for each arch. Under TRITON_INTERPRET=1 (which patches Triton's
    language for the interpreter, process-wide) this runs in a fresh interpreter without it."""
    from . import interpreting

    if interpreting():
        return _in_subprocess(source, list(launches), list(archs))
    return _compile_here(source, launches, archs)


def _in_subprocess(source: str, launches: list[LaunchKey], archs: list[int]) -> list[KernelReport]:
    """Fresh interpreters without TRITON_INTERPRET, one per CPU core, each compiling a share of the
    launches (Triton's compile is single-threaded)."""
    import json
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    shares = [launches[i::max(1, os.cpu_count() or 1)] for i in range(max(1, os.cpu_count() or 1))]
    procs = []
    for share in (s for s in shares if s):
        job = {"source": source, "archs": archs,
               "launches": [{"kernel": k.kernel, "signature": k.signature, "constexprs": k.constexprs,
                             "options": k.options} for k in share]}
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(job, f)
        f.close()
        p = subprocess.Popen([sys.executable, "-m", "backends.triton.aot", f.name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=root)
        procs.append((p, f.name))
    reports = []
    for p, path in procs:  # all run at once; collect each
        out, err = p.communicate()
        os.unlink(path)
        if p.returncode != 0:
            raise CompileError(f"AOT compilation failed:\n{err[-3000:]}")
        reports += [KernelReport(**d) for d in json.loads(out)]
    return reports


def _main() -> None:
    import dataclasses
    import json
    import sys

    with open(sys.argv[1]) as f:
        job = json.load(f)
    keys = [LaunchKey(d["kernel"], tuple(map(tuple, d["signature"])), tuple(map(tuple, d["constexprs"])),
                      tuple(map(tuple, d["options"])))
            for d in job["launches"]]
    json.dump([dataclasses.asdict(r) for r in _compile_here(job["source"], keys, job["archs"])], sys.stdout)


def _compile_here(source: str, launches: Iterable[LaunchKey], archs: Iterable[int]) -> list[KernelReport]:
    jobs = sorted(launches, key=lambda k: (k.kernel, k.signature, k.constexprs))
    return [_compile_one(source, key, arch) for key in jobs for arch in archs]


_MODULES: dict[str, dict[str, Any]] = {}  # source -> its kernels, per worker process


def _compile_one(source: str, key: LaunchKey, arch: int) -> KernelReport:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if source not in _MODULES:
        _MODULES[source] = aot_kernels(source)
    fn = _MODULES[source][key.kernel]
    cx = dict(key.constexprs)
    sig = dict(key.signature) | {c: "constexpr" for c in cx}
    try:
        c = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=GPUTarget("cuda", arch, 32),
                           options=dict(key.options))
    except Exception as e:  # Triton's compile errors are untyped: name the kernel, keep the cause
        raise CompileError(f"kernel {key.kernel} ({cx}) does not compile for sm_{arch}: {e}") from e
    regs, st, ld = ptxas_info(c.asm["ptx"], arch)
    return KernelReport(key.kernel, arch, cx, regs, st, ld, c.metadata.shared, c.metadata.num_warps, len(c.asm["cubin"]))


def table(reports: list[KernelReport]) -> str:
    rows = [f"{'kernel':8} {'arch':>5} {'regs':>5} {'spill st/ld':>12} {'shared':>7} {'warps':>5}  constexprs"]
    for r in reports:
        rows.append(f"{r.kernel:8} {'sm_' + str(r.arch):>5} {r.registers:5d} {f'{r.spill_stores}/{r.spill_loads}':>12} "
                    f"{r.shared:7d} {r.num_warps:5d}  {r.constexprs}")
    return "\n".join(rows)


if __name__ == "__main__":
    _main()
