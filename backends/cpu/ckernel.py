"""What every C kernel of the CPU backend shares: the C prelude, the per-op entry, and the Python wrapper.

Each kernel's C exists once, as a *team function*: called by every thread of a running OpenMP team, it
splits its own work with `share()` (its first argument `par`: 0 lets thread 0 do it all). The native
step (native/) pastes team functions into its one C file and calls them inside the step's team; the
per-op library (NumPy mode, and the native step's Python fallbacks) is the same text behind `entry()`,
an exported function that opens a team around one call:

    lib = cc.build(PRELUDE + dense_kernel.TEAM + entry("dense_linear", "...params", "gemv_f32(1, ...)", work), ...)

`CKernel` is the Python side of such a library: it builds it, types its entry, holds a layer's weights
as the kernel takes them (made once per set of arrays, with their addresses: `.ctypes.data` costs
microseconds a call) and one result buffer per shape; `compiled()` is the no-compiler fallback.
"""
from __future__ import annotations

import ctypes
import warnings
from typing import Any, Callable, Sequence

import numpy as np

import ir

from . import cc

PRELUDE = r"""#ifndef TRITIUM_PRELUDE
#define TRITIUM_PRELUDE
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define ERR_INDEX 1  /* an index out of range */
#define ERR_MEMORY 2
#define ERR_CALLBACK 3  /* a Python fallback raised */

/* this thread's rows [lo, hi) of n: an even split of the team when par, else thread 0 runs them all */
static inline void share(int64_t n, int par, int64_t *lo, int64_t *hi) {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    if (!par) { *lo = 0; *hi = t == 0 ? n : 0; return; }
    *lo = n * t / T; *hi = n * (t + 1) / T;
}
#define SHARE(n) int64_t lo, hi; share((n), par, &lo, &hi)

/* a wrapped index (negative counts from the end, as NumPy), or -1 when out of range */
static inline int64_t wrap(int64_t i, int64_t n) { if (i < 0) i += n; return i >= 0 && i < n ? i : -1; }

#if defined(__AVX2__)
/* the sum of 8 lanes: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)) */
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif
#endif /* TRITIUM_PRELUDE */
"""


def entry(name: str, params: str, call: str, work: str, scratch: str | None = None) -> str:
    """An exported `int name(params)` that runs team function `call` on a team of its own (from `work` >= 1:
    on one thread below) and returns the error code it set (`err`), 0 on success. With `scratch` (a C
    byte count), `scratch` points to that much memory during the call (ERR_MEMORY when malloc fails)."""
    lines = [f"int {name}({params}) {{", "    int err = 0;"]
    if scratch is not None:
        lines += [f"    void *scratch = malloc((size_t)({scratch}) + 1);", "    if (!scratch) return ERR_MEMORY;"]
    lines += [f"    #pragma omp parallel if ({work})", f"    {call};"]
    if scratch is not None:
        lines.append("    free(scratch);")
    return "\n".join(lines + ["    return err;", "}", ""])


Held = tuple[list[Any], list[int | None]]  # the arrays as the kernel takes them, and their addresses


class CKernel:
    """A compiled per-op library and its entry `self.fn` (argtypes as given, returning an error code)."""

    what = "kernel"  # for error messages: the op it runs

    def __init__(self, source: str, name: str, argtypes: Sequence[Any], symbol: str | None = None) -> None:
        self.source = source  # for --emit
        self.lib = cc.build(source, name)
        self.fn = getattr(self.lib, symbol or name)
        self.fn.argtypes = list(argtypes)
        self.fn.restype = ctypes.c_int
        self.openmp = "openmp" in cc.features()  # decoding holds BLAS to one thread around it (generate.py)
        self._held: tuple[tuple, list[Any], list[int | None]] | None = None
        self._out: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}

    def held(self, given: tuple, prepare: Callable[[], Sequence[Any]]) -> Held:
        """The weights as the kernel takes them: `prepare()` once per set of `given` arrays (a layer's are
        the same arrays every call; another array, even with equal values, is prepared again)."""
        h = self._held
        if h is None or len(h[0]) != len(given) or any(a is not b for a, b in zip(h[0], given)):
            arrays = list(prepare())
            h = self._held = (given, arrays, [a.ctypes.data if isinstance(a, np.ndarray) else None for a in arrays])
        return h[1], h[2]

    def buffer(self, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """One f32 result buffer per shape, reused by every call (kernels.py: callers never write a kernel's
        result, and copy it when it is an output), with its address."""
        if shape not in self._out:
            y = np.empty(shape, np.float32)
            self._out[shape] = (y, y.ctypes.data)
        return self._out[shape]

    def call(self, *args: Any) -> None:
        """Run the entry; its error code as the exception it stands for."""
        err = self.fn(*args)
        if err:
            raise MemoryError(f"{self.what} kernel: out of memory") if err == 2 else RuntimeError(
                f"{self.what} kernel: error {err}")


def compiled(node: ir.Node, make: Callable[[], Any], reference: bool) -> Any:
    """`make()`; without a C compiler, the op's NumPy reference with a warning (reference=True), or None:
    the kernel declines and the op's template runs instead."""
    try:
        return make()
    except cc.NoCompilerError as e:
        if not reference:
            return None
        warnings.warn(f"{e}; %{node.name} runs {node.op} with the NumPy reference, much slower", RuntimeWarning,
                      stacklevel=3)
        return reference_of(node)


def reference_of(node: ir.Node) -> Callable[..., np.ndarray]:
    op, attrs = ir.OPS[node.op], node.attrs
    return lambda *ins: op.reference(list(ins), attrs)


__all__ = ["PRELUDE", "entry", "CKernel", "compiled", "reference_of"]
