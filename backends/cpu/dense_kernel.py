"""The f32 `linear` kernel for decoding: C that streams W [OUT, D] 4 rows at a time (AVX2 FMA).

For a few tokens a linear is a GEMV, bound by reading the weight once; OpenBLAS's GEMV reaches about half
the memory bandwidth on SmolLM2's small layers (576x576: 11 GB/s of 25), and its threads spin after each
call, fighting the OpenMP team of the LUT and sparse kernels for the cores, so decoding had to hold BLAS to
one thread. This kernel streams W once per call, every token's dot products from the same rows, the team
sharing blocks of 16 outputs; one thread computes each output, so the result does not depend on the thread
count. From BLAS_ROWS tokens on (prompts) NumPy's matmul runs.

`TEAM` is the C (a team function, ckernel.py; the native step's `linear` calls it too); the per-op
library adds an entry that opens its own team from PAR_MIN multiply-adds. The factory declines (returns
None, and the `linear` template runs) for non-f32 linears, weights that are not parameters, or a machine
without a C compiler: the template computes the same linear with BLAS.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

import ir

from . import cc
from .ckernel import PRELUDE, CKernel, compiled, entry
from .kernels import register_kernel

BLAS_ROWS = 8  # tokens per call from which BLAS's GEMM (reading W once for all of them, blocked) is faster
PAR_MIN = 1 << 15  # OUT x D from which the outputs are split over threads (below, a thread team costs more)

TEAM = r"""
/* y[n, o0..o1) = (bias +) x[n, :] . w[o, :] for every token n */
static void gemv_rows(const float *x, int64_t N, int64_t D, const float *w, int64_t OUT, const float *bias,
                      float *y, int64_t o0, int64_t o1) {
    int64_t o = o0;
#if defined(__AVX2__)
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = w + o * D, *w1 = w0 + D, *w2 = w1 + D, *w3 = w2 + D;
        for (int64_t n = 0; n < N; n++) {
            const float *xn = x + n * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t i = 0;
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
        const float *wo = w + o * D;
        for (int64_t n = 0; n < N; n++) {
            const float *xn = x + n * D;
            float s = 0.0f;
            for (int64_t i = 0; i < D; i++) s += xn[i] * wo[i];
            y[n * OUT + o] = bias ? s + bias[o] : s;
        }
    }
}

/* y[N, OUT] = x[N, D] @ w[OUT, D]^T (+ bias [OUT], or NULL): blocks of 16 outputs (threads never share a
   cache line of y) shared by the team */
static void gemv_f32(int par, const float *x, int64_t N, int64_t D, const float *w, int64_t OUT, const float *bias,
                     float *y) {
    SHARE((OUT + 15) / 16);
    for (int64_t b = lo; b < hi; b++)
        gemv_rows(x, N, D, w, OUT, bias, y, b * 16, b * 16 + 16 < OUT ? b * 16 + 16 : OUT);
}
"""

SOURCE = PRELUDE + TEAM + entry(
    "dense_linear", "const float *x, int64_t N, int64_t D, const float *w, int64_t OUT, const float *bias, float *y",
    "gemv_f32(1, x, N, D, w, OUT, bias, y)", f"OUT * D >= {PAR_MIN}")


class DenseLinear(CKernel):
    """The kernel for one layer shape; call with (x, w[, bias]) as the `linear` op."""

    what = "dense_linear"

    def __init__(self, D: int, out: int) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        super().__init__(SOURCE, "dense_linear", [p, i64, i64, p, i64, p, p])
        self.D, self.out = D, out

    def __call__(self, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        N = math.prod(x.shape[:-1])
        if N >= BLAS_ROWS or N == 0:
            y = np.matmul(x, w.T)
            return y if bias is None else np.add(y, bias, out=y)

        def prepare() -> list:
            if not (w.flags.c_contiguous and w.dtype == np.float32):
                raise ValueError(f"dense_linear kernel: the weight must be C-contiguous f32, got {w.dtype} {w.strides}")
            return [w, None if bias is None else np.ascontiguousarray(bias, np.float32)]
        _, (wp, bp) = self.held((w, bias), prepare)
        X = np.ascontiguousarray(x.reshape(N, self.D), dtype=np.float32)
        y, yp = self.buffer((N, self.out))
        self.call(cc.address(X), N, self.D, wp, self.out, bp, yp)
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
    return compiled(node, lambda: DenseLinear(D, out), reference=False)
