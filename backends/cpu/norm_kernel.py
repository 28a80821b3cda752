"""The f32 `rms_norm` kernel: generated C specialised to the normalised length D (the last axis).

At batch 1 the NumPy template's five array calls (square, sum, sqrt, two multiplies) cost about 20 us
for SmolLM2's 576 values, most of it call overhead, twice per layer and step; this kernel makes one
pass to sum the squares (8 AVX2 lanes) and one to scale, y = (x * r) * w with r = 1 / sqrt(mean + eps),
in the reference's order for the scaling (only the sum of squares adds in another order). NaN and inf
propagate as in the reference (an inf row: mean inf, r 0, inf * 0 = NaN).

The factory declines (the template runs) for other dtypes, norms over more than the last axis, a
weight that is not a parameter, a symbolic or zero D, or no C compiler.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

import ir

from . import cc
from .kernels import register_kernel

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* specialised: %(desc)s */
#define D %(D)d

/* y[n, :] = x[n, :] * (1 / sqrt(mean(x[n, :]^2) + eps)) (* w) for every row n */
void rms_norm(const float *x, int64_t N, const float *w, float eps, float *y) {
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * D;
        float *yn = y + n * D;
        float ss = 0.0f;
        int i = 0;
#if defined(__AVX2__)
        __m256 a = _mm256_setzero_ps();
        for (; i + 8 <= D; i += 8) {
            __m256 v = _mm256_loadu_ps(xn + i);
            a = _mm256_add_ps(a, _mm256_mul_ps(v, v));
        }
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        ss = _mm_cvtss_f32(s);
#endif
        for (; i < D; i++) ss += xn[i] * xn[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        if (w)
            for (i = 0; i < D; i++) yn[i] = (xn[i] * r) * w[i];
        else
            for (i = 0; i < D; i++) yn[i] = xn[i] * r;
    }
}
"""


def source(D: int) -> str:
    """The C source of one specialised kernel."""
    return SOURCE % {"D": D, "desc": f"D={D}"}


class RmsNorm:
    """A compiled kernel for one normalised length; call with (x[, w]) as the `rms_norm` op."""

    def __init__(self, D: int, eps: float) -> None:
        self.D, self.eps = D, eps
        self.source = source(D)  # for --emit
        self.fn = cc.build(self.source, "rms_norm").rms_norm
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
        self.fn.restype = None
        self._w: tuple | None = None  # (w as given, its f32 copy, the copy's address)
        self._out: dict[int, tuple[np.ndarray, int]] = {}  # rows -> a result buffer and its address

    def __call__(self, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        N = math.prod(x.shape[:-1])
        wp = None
        if w is not None:
            if self._w is None or self._w[0] is not w:  # a layer's weight: the same array every call
                c = np.ascontiguousarray(w, np.float32)
                self._w = (w, c, c.ctypes.data)
            wp = self._w[2]
        X = np.ascontiguousarray(x.reshape(N, self.D), dtype=np.float32)
        if N not in self._out:  # decoding calls with one token again and again: one buffer (callers may not write it)
            y = np.empty((N, self.D), np.float32)
            self._out[N] = (y, y.ctypes.data)
        y, yp = self._out[N]
        self.fn(cc.address(X), N, wp, self.eps, yp)
        return y.reshape(x.shape)


@register_kernel("rms_norm")
def rms_norm_kernel(node: ir.Node, graph: ir.Graph) -> RmsNorm | None:
    """The C kernel for an f32 rms_norm over the last axis of static length, weighted by a parameter or
    not; None (the template runs it) otherwise, or when this machine has no C compiler."""
    D = node.type.shape[-1] if node.type.rank else None
    if node.type.dtype.name != "f32" or node.attrs["axes"] != 1 or not isinstance(D, int) or D < 1:
        return None
    if len(node.operands) > 1 and (node.operands[1][0] != "@" or graph.params[node.operands[1][1:]].dtype.name != "f32"):
        return None
    try:
        return RmsNorm(D, float(np.float32(node.attrs["eps"])))
    except cc.NoCompilerError:
        return None
