"""Compile generated C with the system compiler, cache the shared library on disk by source hash.

    lib = build(source, name="lut_linear")     # ctypes.CDLL, compiled once per source and flags

The compiler is $CC or `cc`. Flags: -O3 -fPIC -shared -ffp-contract=off (kernels reproduce the
reference's float rounding, so no FMA contraction), plus -mavx2 -mfma -mf16c when this CPU has AVX2 (and FMA, F16C)
(asked at run time with __builtin_cpu_supports), and -fopenmp when the compiler has OpenMP.
Libraries live in $TRITIUM_CACHE/kernels (default ~/.cache/tritium/kernels) next to their source.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ir.errors import TritiumError

BASE_FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off")


class KernelCompileError(TritiumError):
    """The C compiler is there but failed on generated source (the message names the file)."""


class NoCompilerError(TritiumError):
    """No C compiler on this machine: callers fall back to NumPy, with a warning."""


def cache_dir() -> Path:
    root = os.environ.get("TRITIUM_CACHE") or Path.home() / ".cache" / "tritium"
    d = Path(root) / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    return d


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        raise NoCompilerError(f"no C compiler: {cc!r} is not on PATH (set CC, or install gcc or clang)")
    return path


def _run(cmd: list[str], src: Path) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelCompileError(f"could not run the C compiler on {src}: {e}") from None
    if r.returncode != 0:
        raise KernelCompileError(f"C compiler failed on {src} (exit {r.returncode}):\n  {' '.join(cmd)}\n"
                                 + "\n".join(r.stderr.strip().splitlines()[-20:]))


def _compile(source: str, name: str, flags: tuple[str, ...]) -> Path:
    """The path of the shared library for `source` (compiled now unless cached)."""
    cc = compiler()
    key = hashlib.sha256("\0".join([cc, *flags, source]).encode()).hexdigest()[:20]
    d = cache_dir()
    so, src = d / f"{name}-{key}.so", d / f"{name}-{key}.c"
    if so.exists():
        return so
    src.write_text(source)
    with tempfile.TemporaryDirectory(dir=d) as tmp:  # compile aside, then rename: no half-written library
        out = Path(tmp) / so.name
        _run([cc, *flags, str(src), "-o", str(out)], src)
        os.replace(out, so)
    return so


@lru_cache(maxsize=None)
def features() -> frozenset[str]:
    """What this CPU and compiler offer: {"avx2", "openmp"} or a subset."""
    found = set()
    probe = ("int tritium_has_avx2(void) { return __builtin_cpu_supports(\"avx2\") && __builtin_cpu_supports(\"fma\")"
             " && __builtin_cpu_supports(\"f16c\"); }\n")
    try:
        lib = ctypes.CDLL(str(_compile(probe, "probe-avx2", BASE_FLAGS)))
        if lib.tritium_has_avx2():
            found.add("avx2")
    except KernelCompileError:
        pass  # not x86, or a compiler without the builtin: portable C
    try:
        _compile("#include <omp.h>\nint tritium_threads(void) { return omp_get_max_threads(); }\n", "probe-omp",
                 BASE_FLAGS + ("-fopenmp",))
        found.add("openmp")
    except KernelCompileError:
        pass  # single-threaded kernels
    return frozenset(found)


def flags() -> tuple[str, ...]:
    f = features()
    return BASE_FLAGS + (("-mavx2", "-mfma", "-mf16c") if "avx2" in f else ()) + (("-fopenmp",) if "openmp" in f else ())


_LIBS: dict[Path, ctypes.CDLL] = {}
_VIEW = ctypes.c_char.from_buffer


def address(a: np.ndarray) -> int:
    """The address of a C-contiguous array's data, for a kernel call: through the buffer protocol when the
    array is writable (cheaper than `a.ctypes.data`, and decode steps make hundreds of such calls)."""
    try:
        return ctypes.addressof(_VIEW(a)) if a.nbytes else a.ctypes.data
    except (TypeError, ValueError, BufferError):  # read-only or not contiguous: numpy's own way
        return a.ctypes.data


def build(source: str, name: str) -> ctypes.CDLL:
    """Compile (or find in the cache) and load `source`; raises NoCompilerError or KernelCompileError."""
    so = _compile(source, name, flags())
    if so not in _LIBS:
        try:
            _LIBS[so] = ctypes.CDLL(str(so))
        except OSError as e:
            raise KernelCompileError(f"could not load {so} (compiled from {so.with_suffix('.c')}): {e}") from None
    return _LIBS[so]
