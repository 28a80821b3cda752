"""The f32 `sdpa` kernel: one C function for every shape (head dims, heads and lengths are arguments).

Decoding attends one query per head to the cache: the NumPy template's dozen array calls (two batched
matmuls, the masked softmax in place) are mostly call overhead at a decode step's sizes. This kernel
walks each (batch, head, query) row once: scores q.k_j * scale, the causal and given masks, softmax as
the reference spells it (max, exp(s - max), sum, divide; a row whose keys are all masked gives 0),
then the weighted sum of v rows. Grouped-query heads read their kv head in place (head h -> kv head
h // (H / KH)). The mask is read through broadcast strides, so any mask the op takes
works without a copy. OpenMP threads split the rows once there is enough work.

The factory declines (the template runs) for other dtypes, or when there is no C compiler.
"""
from __future__ import annotations

import ctypes

import numpy as np

import ir

from . import cc
from .kernels import register_kernel

PAR_MIN = 1 << 16  # rows x keys x head dim from which the rows are split over threads

SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define PAR_MIN %(PAR_MIN)d
#define STACK_KEYS 2048

static inline float dot(const float *a, const float *b, int64_t n) {
    float d = 0.0f;
    int64_t i = 0;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    d = _mm_cvtss_f32(s);
#endif
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

/* o[b, h, l, :] = softmax(q[b, h, l, :] . k[b, h / rep, j, :] * scale (+ mask)) @ v[b, h / rep, :, :].
   q, k, v, o contiguous; mask NULL or read at b * ms[0] + h * ms[1] + l * ms[2] + j * ms[3] (elements),
   kind 1: bool (keep where nonzero), 2: f32 (added). Returns 0, or 1 when out of memory. */
int sdpa(const float *q, const float *k, const float *v, const void *mask, const int64_t *dims, float scale,
         float *o) {
    /* dims: B, H, KH, L, S, E, EV, mask kind, causal, then the mask's 4 strides */
    const int64_t B = dims[0], H = dims[1], KH = dims[2], L = dims[3], S = dims[4], E = dims[5], EV = dims[6];
    const int kind = (int)dims[7], causal = (int)dims[8];
    const int64_t *ms = dims + 9;
    const int64_t rep = H / KH, rows = B * H * L;
    int failed = 0;
    #pragma omp parallel for schedule(static) if (rows * S * (E + EV) >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t b = r / (H * L), h = (r / L) %% H, l = r %% L, kh = h / rep;
        const float *qr = q + r * E, *kb = k + (b * KH + kh) * S * E, *vb = v + (b * KH + kh) * S * EV;
        float *orow = o + r * EV;
        float buf[STACK_KEYS];  /* the scores of one row: on the stack up to STACK_KEYS keys */
        float *s = S <= STACK_KEYS ? buf : malloc(sizeof(float) * S);
        if (!s) { failed = 1; continue; }
        float mx = -INFINITY;
        for (int64_t j = 0; j < S; j++) {
            float d = dot(qr, kb + j * E, E) * scale;
            if (causal && j > l) d = -INFINITY;
            if (kind == 1) {
                if (!((const uint8_t *)mask)[b * ms[0] + h * ms[1] + l * ms[2] + j * ms[3]]) d = -INFINITY;
            } else if (kind == 2) {
                d += ((const float *)mask)[b * ms[0] + h * ms[1] + l * ms[2] + j * ms[3]];
            }
            s[j] = d;
            if (mx == mx && (d > mx || d != d)) mx = d;  /* a NaN stays the max, as np.max */
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < S; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
        for (int64_t e = 0; e < EV; e++) orow[e] = 0.0f;
        for (int64_t j = 0; j < S; j++) {
            float p = mx == -INFINITY ? 0.0f : s[j] / sum;  /* every key masked: p = 0 (0, as torch; NaN v stays NaN) */
            const float *vj = vb + j * EV;
            for (int64_t e = 0; e < EV; e++) orow[e] += p * vj[e];
        }
        if (s != buf) free(s);
    }
    return failed;
}
"""


class Sdpa:
    """The compiled kernel of one `sdpa` node (scale and causal from its attrs); call with (q, k, v[, mask])."""

    def __init__(self, scale: float, causal: bool) -> None:
        self.scale, self.causal = scale, causal
        self.source = SOURCE % {"PAR_MIN": PAR_MIN}  # for --emit
        self.fn = cc.build(self.source, "sdpa").sdpa
        self.openmp = "openmp" in cc.features()  # decoding holds BLAS to one thread around it (generate.py)
        p = ctypes.c_void_p
        self.fn.argtypes = [p, p, p, p, p, ctypes.c_float, p]
        self.fn.restype = ctypes.c_int

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        B, H, L, E = q.shape
        KH, S, Ev = k.shape[1], k.shape[2], v.shape[3]
        q, k, v = (np.ascontiguousarray(a, np.float32) for a in (q, k, v))
        o = np.empty((B, H, L, Ev), np.float32)
        if not o.size:
            return o
        dims = [B, H, max(KH, 1), L, S, E, Ev, 0, int(self.causal), 0, 0, 0, 0]
        mp = None
        if mask is not None:  # read through its strides, 0 along broadcast dims (np.broadcast_to costs ~10 us)
            if mask.dtype != np.bool_:
                mask = mask.astype(np.float32, copy=False)
            dims[7] = 1 if mask.dtype == np.bool_ else 2
            lead = 4 - mask.ndim
            for i, (n, st) in enumerate(zip(mask.shape, mask.strides)):
                dims[9 + lead + i] = 0 if n == 1 else st // mask.itemsize
            mp = cc.address(mask)
        d = np.array(dims, np.int64)
        if self.fn(cc.address(q), cc.address(k), cc.address(v), mp, cc.address(d), self.scale, cc.address(o)):
            raise MemoryError(f"sdpa kernel: out of memory for {S} keys")
        return o


@register_kernel("sdpa")
def sdpa_kernel(node: ir.Node, graph: ir.Graph) -> Sdpa | None:
    """The C kernel for f32 attention; None (the template runs it) for other dtypes, or when this machine
    has no C compiler."""
    if node.type.dtype.name != "f32":
        return None
    try:
        return Sdpa(float(np.float32(node.attrs["scale"])), bool(node.attrs["causal"]))
    except cc.NoCompilerError:
        return None
