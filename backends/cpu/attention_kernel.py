"""The f32 `sdpa` kernel: one C function for every shape (head dims, heads, lengths and strides are arguments).

Decoding attends one query per head to the cache: the NumPy template's dozen array calls (two batched
matmuls, the masked softmax in place) are mostly call overhead at a decode step's sizes. This kernel
walks each (batch, head, query) row once: scores q.k_j * scale, the causal and given masks, softmax as
the reference spells it (max, exp(s - max), sum, divide; a row whose keys are all masked gives 0),
then the weighted sum of v rows. Grouped-query heads read their kv head in place (head h -> kv head
h // (H / KH)); k and v are read through their batch, head and position strides (the native step reads
the cache's first L positions in place), the mask through broadcast strides, so any mask the op takes
works without a copy. The team shares the query rows (`TEAM`, a team function: ckernel.py).

The factory declines (the template runs) for other dtypes, or when there is no C compiler.
"""
from __future__ import annotations

import ctypes

import numpy as np

import ir

from . import cc
from .ckernel import PRELUDE, CKernel, compiled, entry
from .kernels import register_kernel

PAR_MIN = 1 << 16  # rows x keys x head dim from which the per-op entry shares the rows over a team

TEAM = r"""
#define STACK_KEYS 2048

static inline float sdpa_dot(const float *a, const float *b, int64_t n) {
    float d = 0.0f;
    int64_t i = 0;
#if defined(__AVX2__)
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    d = hsum(acc);
#endif
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

/* o[b, h, l, :] = softmax(q[b, h, l, :] . k[b, h / rep, j, :] * scale (+ mask)) @ v[b, h / rep, :, :].
   q, o contiguous; k, v rows contiguous, read at b * ks[0] + kh * ks[1] + j * ks[2];
   the mask (kind 1: bool, keep where nonzero; 2: f32, added; 0: none) at b * ms[0] + h * ms[1] + l * ms[2] + j * ms[3].
   dims: B, H, KH, L, S, E, EV. Query rows are shared by the team; *err = ERR_MEMORY when out of memory. */
static void sdpa_f32(int par, int *err, const float *q, const float *k, const int64_t *ks, const float *v,
                     const int64_t *vs, const void *mask, int kind, const int64_t *ms, const int64_t *dims,
                     float scale, int causal, float *o) {
    const int64_t B = dims[0], H = dims[1], KH = dims[2] > 0 ? dims[2] : 1, L = dims[3], S = dims[4], E = dims[5],
                  EV = dims[6];
    const int64_t rep = H / KH;
    SHARE(B * H * L);
    (void)B;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t b = r / (H * L), h = (r / L) % H, l = r % L, kh = h / rep;
        const float *qr = q + r * E, *kb = k + b * ks[0] + kh * ks[1], *vb = v + b * vs[0] + kh * vs[1];
        float *orow = o + r * EV;
        float buf[STACK_KEYS];  /* the scores of one row: on the stack up to STACK_KEYS keys */
        float *s = S <= STACK_KEYS ? buf : malloc(sizeof(float) * S);
        if (!s) { *err = ERR_MEMORY; continue; }
        float mx = -INFINITY;
        for (int64_t j = 0; j < S; j++) {
            float d = sdpa_dot(qr, kb + j * ks[2], E) * scale;
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
            float p = mx == -INFINITY ? 0.0f : s[j] / sum;  /* every key masked: p = 0 (as torch; NaN v stays NaN) */
            const float *vj = vb + j * vs[2];
            for (int64_t e = 0; e < EV; e++) orow[e] += p * vj[e];
        }
        if (s != buf) free(s);
    }
}
"""

# d: B, H, KH, L, S, E, EV, mask kind, causal, k's 3 strides, v's 3, the mask's 4
SOURCE = PRELUDE + TEAM + entry(
    "sdpa", "const float *q, const float *k, const float *v, const void *mask, const int64_t *d, float scale, float *o",
    "sdpa_f32(1, &err, q, k, d + 9, v, d + 12, mask, (int)d[7], d + 15, d, scale, (int)d[8], o)",
    f"d[0] * d[1] * d[3] * d[4] * (d[5] + d[6]) >= {PAR_MIN}")


class Sdpa(CKernel):
    """The kernel of one `sdpa` node (scale and causal from its attrs); call with (q, k, v[, mask])."""

    what = "sdpa"

    def __init__(self, scale: float, causal: bool) -> None:
        p = ctypes.c_void_p
        super().__init__(SOURCE, "sdpa", [p, p, p, p, p, ctypes.c_float, p])
        self.scale, self.causal = scale, causal

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        B, H, L, E = q.shape
        KH, S, Ev = k.shape[1], k.shape[2], v.shape[3]
        q, k, v = (np.ascontiguousarray(a, np.float32) for a in (q, k, v))
        o = np.empty((B, H, L, Ev), np.float32)
        if not o.size:
            return o
        d = [B, H, max(KH, 1), L, S, E, Ev, 0, int(self.causal), KH * S * E, S * E, E, KH * S * Ev, S * Ev, Ev, 0, 0, 0, 0]
        mp = None
        if mask is not None:  # read through its strides, 0 along broadcast dims (np.broadcast_to costs ~10 us)
            if mask.dtype != np.bool_:
                mask = mask.astype(np.float32, copy=False)
            d[7] = 1 if mask.dtype == np.bool_ else 2
            lead = 4 - mask.ndim
            for i, (n, st) in enumerate(zip(mask.shape, mask.strides)):
                d[15 + lead + i] = 0 if n == 1 else st // mask.itemsize
            mp = cc.address(mask)
        dims = np.array(d, np.int64)
        self.call(cc.address(q), cc.address(k), cc.address(v), mp, cc.address(dims), self.scale, cc.address(o))
        return o


@register_kernel("sdpa")
def sdpa_kernel(node: ir.Node, graph: ir.Graph) -> Sdpa | None:
    """The C kernel for f32 attention; None (the template runs it) for other dtypes, or when this machine
    has no C compiler."""
    if node.type.dtype.name != "f32":
        return None
    return compiled(node, lambda: Sdpa(float(np.float32(node.attrs["scale"])), bool(node.attrs["causal"])), reference=False)
