"""The f32 `rms_norm` kernel over the last axis: one C call in place of the template's five NumPy calls.

At batch 1 the NumPy template's five array calls (square, sum, sqrt, two multiplies) cost about 20 us
for SmolLM2's 576 values, most of it call overhead, twice per layer and step; this kernel makes one
pass to sum the squares (8 AVX2 lanes) and one to scale, y = (x * r) * w with r = 1 / sqrt(mean + eps),
in the reference's order for the scaling (only the sum of squares adds in another order). NaN and inf
propagate as in the reference (an inf row: mean inf, r 0, inf * 0 = NaN).

`TEAM` is the C (a team function, ckernel.py: rows shared by the team; the native step's `rms_norm`
calls it too). The factory declines (the template runs) for other dtypes, norms over more than the last
axis, a weight that is not a parameter, a symbolic or zero D, or no C compiler.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

import ir

from . import cc
from .ckernel import PRELUDE, CKernel, compiled, entry
from .kernels import register_kernel

PAR_MIN = 1 << 15  # N x D from which the per-op entry shares the rows over a team

TEAM = r"""
/* y[n, :] = x[n, :] * (1 / sqrt(mean(x[n, :]^2) + eps)) (* w, or NULL) for every row n, rows shared by the team */
static void rms_norm_f32(int par, const float *x, int64_t N, int64_t D, const float *w, float eps, float *y) {
    SHARE(N);
    for (int64_t n = lo; n < hi; n++) {
        const float *xn = x + n * D;
        float *yn = y + n * D;
        float ss = 0.0f;
        int64_t i = 0;
#if defined(__AVX2__)
        __m256 a = _mm256_setzero_ps();
        for (; i + 8 <= D; i += 8) {
            __m256 v = _mm256_loadu_ps(xn + i);
            a = _mm256_add_ps(a, _mm256_mul_ps(v, v));
        }
        ss = hsum(a);
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

SOURCE = PRELUDE + TEAM + entry("rms_norm", "const float *x, int64_t N, int64_t D, const float *w, float eps, float *y",
                                "rms_norm_f32(1, x, N, D, w, eps, y)", f"N * D >= {PAR_MIN}")


class RmsNorm(CKernel):
    """The kernel for one normalised length; call with (x[, w]) as the `rms_norm` op."""

    what = "rms_norm"

    def __init__(self, D: int, eps: float) -> None:
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        super().__init__(SOURCE, "rms_norm", [p, i64, i64, p, ctypes.c_float, p])
        self.D, self.eps = D, eps

    def __call__(self, x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        N = math.prod(x.shape[:-1])
        wp = None
        if w is not None:
            wp = self.held((w,), lambda: [np.ascontiguousarray(w, np.float32)])[1][0]
        X = np.ascontiguousarray(x.reshape(N, self.D), dtype=np.float32)
        y, yp = self.buffer((N, self.D))
        self.call(cc.address(X), N, self.D, wp, self.eps, yp)
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
    return compiled(node, lambda: RmsNorm(D, float(np.float32(node.attrs["eps"]))), reference=False)
