"""The f32 `linear` kernel for decoding: generated C specialised to one layer's shape (D inputs, OUT outputs).

For a few tokens a linear is a GEMV, bound by reading the weight once; OpenBLAS's GEMV reaches about half
the memory bandwidth on SmolLM2's small layers (576x576: 11 GB/s of 25), and its threads spin after each
call, fighting the OpenMP team of the LUT and sparse kernels for the cores, so decoding had to hold BLAS to
one thread. This kernel streams W [OUT, D] once per call, 4 rows at a time with AVX2 FMA, every token's
dot products from the same rows, OpenMP threads over blocks of outputs; one thread computes each output, so
the result does not depend on the thread count. From BLAS_ROWS tokens on (prompts) NumPy's matmul runs.

The factory declines (returns None, and the `linear` template runs) for non-f32 linears, weights that are
not parameters, or a machine without a C compiler: the template computes the same linear with BLAS.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

import ir

from . import cc
from .kernels import register_kernel

BLAS_ROWS = 8  # tokens per call from which BLAS's GEMM (reading W once for all of them, blocked) is faster
PAR_MIN = 1 << 15  # OUT x D from which the outputs are split over threads (below, a thread team costs more)

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* specialised: %(desc)s */
#define D %(D)d
#define OUT %(OUT)d
#define PAR_MIN %(PAR_MIN)d

#if defined(__AVX2__)
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* y[n, o0..o1) = (bias +) x[n, :] . w[o, :] for every token n */
static void rows(const float *x, int64_t N, const float *w, const float *bias, float *y, int o0, int o1) {
    int o = o0;
#if defined(__AVX2__)
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = w + (size_t)o * D, *w1 = w0 + D, *w2 = w1 + D, *w3 = w2 + D;
        for (int64_t n = 0; n < N; n++) {
            const float *xn = x + n * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int i = 0;
            for (; i + 8 <= D; i += 8) {
                __m256 v = _mm256_loadu_ps(xn + i);
                a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w0 + i), a0);
                a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w1 + i), a1);
                a2 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w2 + i), a2);
                a3 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w3 + i), a3);
            }
            float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
            for (; i < D; i++) { s0 += xn[i] * w0[i]; s1 += xn[i] * w1[i]; s2 += xn[i] * w2[i]; s3 += xn[i] * w3[i]; }
            float *yn = y + n * OUT + o;
            yn[0] = bias ? s0 + bias[o] : s0;
            yn[1] = bias ? s1 + bias[o + 1] : s1;
            yn[2] = bias ? s2 + bias[o + 2] : s2;
            yn[3] = bias ? s3 + bias[o + 3] : s3;
        }
    }
#endif
    for (; o < o1; o++) {
        const float *wo = w + (size_t)o * D;
        for (int64_t n = 0; n < N; n++) {
            const float *xn = x + n * D;
            float s = 0.0f;
            for (int i = 0; i < D; i++) s += xn[i] * wo[i];
            y[n * OUT + o] = bias ? s + bias[o] : s;
        }
    }
}

/* y[N, OUT] = x[N, D] @ w[OUT, D]^T (+ bias [OUT], or NULL) */
void dense_linear(const float *x, int64_t N, const float *w, const float *bias, float *y) {
    const int blocks = (OUT + 15) / 16;  /* 16 outputs per block: threads never share a cache line of y */
    #pragma omp parallel for schedule(static) if ((int64_t)OUT * D >= PAR_MIN)
    for (int b = 0; b < blocks; b++)
        rows(x, N, w, bias, y, b * 16, b * 16 + 16 < OUT ? b * 16 + 16 : OUT);
}
"""


def source(D: int, out: int) -> str:
    """The C source of one specialised kernel."""
    spec = dict(D=D, OUT=out, PAR_MIN=PAR_MIN)
    return SOURCE % {**spec, "desc": ", ".join(f"{k}={v}" for k, v in spec.items())}


class DenseLinear:
    """A compiled kernel for one layer shape; call with (x, w[, bias]) as the `linear` op."""

    def __init__(self, D: int, out: int) -> None:
        self.D, self.out = D, out
        self.source = source(D, out)  # for --emit
        self.fn = cc.build(self.source, "dense_linear").dense_linear
        self.openmp = "openmp" in cc.features()  # decoding holds BLAS to one thread around it (generate.py)
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.fn.restype = None
        self._weights: tuple | None = None  # ((w, bias) as given, their addresses)
        self._out: dict[int, tuple[np.ndarray, int]] = {}  # tokens -> a result buffer and its address

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        N = math.prod(x.shape[:-1])
        if N >= BLAS_ROWS or N == 0:
            y = np.matmul(x, w.T)
            return y if bias is None else np.add(y, bias, out=y)
        held = self._weights
        if held is None or held[0][0] is not w or held[0][1] is not bias:  # a layer's weights: the same arrays
            if not (w.flags.c_contiguous and w.dtype == np.float32):
                raise ValueError(f"dense_linear kernel: the weight must be C-contiguous f32, got {w.dtype} {w.strides}")
            b = None if bias is None else np.ascontiguousarray(bias, np.float32)
            held = self._weights = ((w, bias), (w.ctypes.data, None if b is None else b.ctypes.data), b)
        X = np.ascontiguousarray(x.reshape(N, self.D), dtype=np.float32)
        if N not in self._out:  # decoding calls with one token again and again: one buffer (callers may not write it)
            y = np.empty((N, self.out), np.float32)
            self._out[N] = (y, y.ctypes.data)
        y, yp = self._out[N]
        self.fn(cc.address(X), N, held[1][0], held[1][1], yp)
        return y.reshape(*x.shape[:-1], self.out)


@register_kernel("linear")
def dense_linear_kernel(node: ir.Node, graph: ir.Graph) -> DenseLinear | None:
    """The C kernel for an f32 linear whose weight is a contiguous parameter; None (the template runs it)
    otherwise, or when this machine has no C compiler."""
    w = node.operands[1]
    if node.type.dtype.name != "f32" or w[0] != "@" or graph.params[w[1:]].dtype.name != "f32":
        return None
    if w[1:] in graph.weights and not np.asarray(graph.weights[w[1:]]).flags.c_contiguous:
        return None
    out, D = graph.params[w[1:]].shape
    try:
        return DenseLinear(D, out)
    except cc.NoCompilerError:
        return None
