"""The `sparse_input_linear` kernel: generated C specialised to one layer's shape (D inputs, OUT outputs).

Per token: score = |x| * scale, select the kept inputs with exactly `sparsify`'s rule (top-k: a radix
select of the keep-th largest score, then every score above it and the first ties by index; NaN
ranks with +inf; threshold: every score not <= threshold), then y = bias + sum over the kept i of
x_i * wt[i, :]. wt is [D, OUT], so each kept input streams one contiguous row and the dropped rows
are never read: at batch 1, where a GEMV is bound by weight bytes, 50% sparsity halves the time.
AVX2 sums 4 rows at a time with FMA over 8 outputs, whole rows (up to 16 KiB) per pass: the hardware
prefetches a long run best (software prefetching of the next kept rows measured slower). Once a layer
is large, OpenMP threads split the kept rows and add their partial sums in thread order.

With many tokens the kept sets cover nearly every row, and BLAS's GEMM beats row streaming: from
BLAS_ROWS tokens on, the kernel only masks x (same selection) and NumPy's matmul does the rest.

A dropped input whose weight row holds an inf or NaN still adds 0 * row (NaN), as the reference's
dense product does. With no C compiler the factory warns and returns the NumPy reference.
"""
from __future__ import annotations

import ctypes
import math
from typing import Callable

import numpy as np

import ir

from . import cc
from .ckernel import PRELUDE, CKernel, compiled, reference_of
from .kernels import register_kernel

# Tokens per call from which masking x and calling BLAS beats streaming the kept rows once per token.
# Measured (bench/gemv_sparse.py --batches, 4096x4096 at 50%, 2 threads, 2-core EPYC): streaming 2.5 ms
# at 2 tokens, 4.6 at 4, 6.4 at 7, 10.2 at 8; masked x + BLAS 6.0, 7.1, 7.6, 6.8 (OpenBLAS's GEMM at a few rows
# is slow: dense takes 7-8 ms from 2 rows on).
BLAS_ROWS = 8
# Kept rows x outputs from which a token's sum runs on every thread: measured on SmolLM2's layer shapes with
# their weights in DRAM, 2 threads won from 576x576 at 50% (166k: 67 vs 82 us) on; at 576x192 (55k) a tie.
PAR_MIN = 1 << 16

SOURCE = r"""
/* specialised: %(desc)s */
#define D %(D)d
#define OUT %(OUT)d
#define PAR_MIN %(PAR_MIN)d
#define CH 4096  /* outputs summed at a time: whole rows up to 16 KiB, the accumulator in L1 */

/* a score as an unsigned key in rank order: NaN with +inf (the reference ranks NaN highest), -0 with +0 */
static inline uint32_t rank_key(float s) {
    if (s != s) s = INFINITY;
    if (s == 0.0f) s = 0.0f;
    uint32_t u;
    memcpy(&u, &s, sizeof u);
    return u >> 31 ? ~u : u | 0x80000000u;
}

/* The inputs of one token that count: idx[0..m) ascending, val = x_i (kept) or 0 (dropped, but its weight
   row is not finite: 0 * inf is NaN in the reference). keep < 0: threshold mode. Returns m. */
static int select_row(const float *x, const float *scale, int64_t keep, float thr, const uint8_t *bad,
                      int32_t *idx, float *val, uint32_t *key) {
    int m = 0;
    if (keep < 0 || keep >= D) {
        for (int i = 0; i < D; i++) {
            int k = keep >= D || !(fabsf(x[i]) * scale[i] <= thr);
            if (k || (bad && bad[i])) { idx[m] = i; val[m++] = k ? x[i] : 0.0f; }
        }
        return m;
    }
    for (int i = 0; i < D; i++) key[i] = rank_key(fabsf(x[i]) * scale[i]);
    /* radix select, 8 bits at a time: t = the keep-th largest key; `need` = how many keys equal to t are kept */
    uint32_t t = 0, mask = 0;
    int64_t need = keep;
    for (int shift = 24; shift >= 0 && need > 0; shift -= 8) {
        int64_t hist[256] = {0};
        for (int i = 0; i < D; i++)
            if ((key[i] & mask) == t) hist[(key[i] >> shift) & 255]++;
        int d = 255;
        while (hist[d] < need) need -= hist[d--];
        t |= (uint32_t)d << shift;
        mask |= 255u << shift;
    }
    for (int i = 0; i < D; i++) {  /* keys above t, then ties to the lower index */
        int k = keep > 0 && (key[i] > t || (key[i] == t && need-- > 0));
        if (k || (bad && bad[i])) { idx[m] = i; val[m++] = k ? x[i] : 0.0f; }
    }
    return m;
}

/* y[c0..c1) = (bias +) sum over j of val[j] * wt[idx[j], c0..c1), c1 - c0 <= CH: each row read front to
   back, 4 rows per pass over the accumulator */
static void sum_rows(const float *wt, const int32_t *idx, const float *val, int m, int c0, int c1,
                     const float *bias, float *y) {
    float acc[CH];
    for (int c = c0; c < c1; c++) acc[c - c0] = 0.0f;
    int j = 0;
#if defined(__AVX2__)
    for (; j + 4 <= m; j += 4) {
        const float *w0 = wt + (size_t)idx[j] * OUT, *w1 = wt + (size_t)idx[j + 1] * OUT;
        const float *w2 = wt + (size_t)idx[j + 2] * OUT, *w3 = wt + (size_t)idx[j + 3] * OUT;
        __m256 v0 = _mm256_set1_ps(val[j]), v1 = _mm256_set1_ps(val[j + 1]);
        __m256 v2 = _mm256_set1_ps(val[j + 2]), v3 = _mm256_set1_ps(val[j + 3]);
        int c = c0;
        for (; c + 8 <= c1; c += 8) {
            __m256 a = _mm256_loadu_ps(acc + c - c0);
            a = _mm256_fmadd_ps(v0, _mm256_loadu_ps(w0 + c), a);
            a = _mm256_fmadd_ps(v1, _mm256_loadu_ps(w1 + c), a);
            a = _mm256_fmadd_ps(v2, _mm256_loadu_ps(w2 + c), a);
            a = _mm256_fmadd_ps(v3, _mm256_loadu_ps(w3 + c), a);
            _mm256_storeu_ps(acc + c - c0, a);
        }
        for (; c < c1; c++)
            acc[c - c0] = (((acc[c - c0] + val[j] * w0[c]) + val[j + 1] * w1[c]) + val[j + 2] * w2[c]) + val[j + 3] * w3[c];
    }
#endif
    for (; j < m; j++) {
        const float *w = wt + (size_t)idx[j] * OUT;
        float v = val[j];
        for (int c = c0; c < c1; c++) acc[c - c0] += v * w[c];
    }
    for (int c = c0; c < c1; c++) y[c] = bias ? acc[c - c0] + bias[c] : acc[c - c0];
}

static void sum_all(const float *wt, const int32_t *idx, const float *val, int m, const float *bias, float *y) {
    for (int c = 0; c < OUT; c += CH) sum_rows(wt, idx, val, m, c, c + CH < OUT ? c + CH : OUT, bias, y);
}

/* y[N, OUT] = sparse_input_linear(x[N, D]); bias [OUT] or NULL; bad [D] (weight row i not finite) or NULL.
   0 on success. */
int sparse_input_linear(const float *x, int64_t N, const float *scale, int64_t keep, float thr, const float *wt,
                        const float *bias, const uint8_t *bad, float *y) {
    int threads = 1;
#if defined(_OPENMP)
    threads = omp_get_max_threads();
#endif
    int32_t *idx = malloc(sizeof(int32_t) * D + 1);  /* + 1: not NULL when D or OUT is 0 */
    float *val = malloc(sizeof(float) * D + 1);
    uint32_t *key = malloc(sizeof(uint32_t) * D + 1);
    float *part = malloc(sizeof(float) * OUT * (size_t)threads + 1);
    if (!idx || !val || !key || !part) { free(idx); free(val); free(key); free(part); return 1; }
    for (int64_t n = 0; n < N; n++) {
        int m = select_row(x + n * D, scale, keep, thr, bad, idx, val, key);
        float *yn = y + n * OUT;
        if ((int64_t)m * OUT < PAR_MIN || threads == 1) {
            sum_all(wt, idx, val, m, bias, yn);
            continue;
        }
        /* threads split the kept rows, not the outputs: each streams whole rows (the hardware prefetches a
           long run best), then the partial sums add up in thread order */
        #pragma omp parallel
        {
            int t = 0, nt = 1;
#if defined(_OPENMP)
            t = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            int j0 = (int)((int64_t)m * t / nt), j1 = (int)((int64_t)m * (t + 1) / nt);
            sum_all(wt, idx + j0, val + j0, j1 - j0, NULL, part + (size_t)t * OUT);
            #pragma omp barrier
            int per = ((OUT + nt - 1) / nt + 15) / 16 * 16;
            for (int c = t * per; c < (t + 1) * per && c < OUT; c++) {
                float a = part[c];
                for (int u = 1; u < nt; u++) a += part[(size_t)u * OUT + c];
                yn[c] = bias ? a + bias[c] : a;
            }
        }
    }
    free(idx); free(val); free(key); free(part);
    return 0;
}

/* xm[N, D] = sparsify(x): the kept entries of x, zeros elsewhere (for BLAS). 0 on success. */
int sparse_input_mask(const float *x, int64_t N, const float *scale, int64_t keep, float thr, float *xm) {
    int fail = 0;
    #pragma omp parallel reduction(|:fail) if (N * D >= PAR_MIN)
    {
        int32_t *idx = malloc(sizeof(int32_t) * D + 1);
        float *val = malloc(sizeof(float) * D + 1);
        uint32_t *key = malloc(sizeof(uint32_t) * D + 1);
        if (!idx || !val || !key) fail = 1;
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            if (fail) continue;
            int m = select_row(x + n * D, scale, keep, thr, NULL, idx, val, key);
            float *r = xm + n * D;
            memset(r, 0, sizeof(float) * D);
            for (int j = 0; j < m; j++) r[idx[j]] = val[j];
        }
        free(idx); free(val); free(key);
    }
    return fail;
}
"""


def source(D: int, out: int) -> str:
    """The C source of one specialised kernel."""
    spec = dict(D=D, OUT=out, PAR_MIN=PAR_MIN)
    return PRELUDE + SOURCE % {**spec, "desc": ", ".join(f"{k}={v}" for k, v in spec.items())}


class SparseInputLinear(CKernel):
    """A compiled kernel for one layer shape and selection; call with (x, scale, wt[, bias])."""

    what = "sparse_input_linear"

    def __init__(self, D: int, out: int, keep: int, threshold: float) -> None:
        ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        super().__init__(source(D, out), "sparse_input_linear", [ptr, i64, ptr, i64, f32, ptr, ptr, ptr, ptr])
        self.D, self.out, self.keep = D, out, keep
        with np.errstate(over="ignore"):  # the reference compares f32 scores with the threshold in f32
            self.threshold = float(np.float32(threshold))
        self.mask = self.lib.sparse_input_mask
        self.mask.argtypes = [ptr, i64, ptr, i64, f32, ptr]
        self.mask.restype = ctypes.c_int

    def _weights(self, scale: np.ndarray, wt: np.ndarray, bias: np.ndarray | None) -> tuple:
        """f32 copies of the weights and which rows of wt are not finite (None: all are)."""
        def prepare() -> list:
            held = [None if a is None else np.ascontiguousarray(a, np.float32) for a in (scale, wt, bias)]
            bad = ~np.isfinite(held[1]).all(axis=1)
            return held + [bad.astype(np.uint8) if bad.any() else None]
        return self.held((scale, wt, bias), prepare)

    def __call__(self, x: np.ndarray, scale: np.ndarray, wt: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        held, (s, w, b, bad) = self._weights(scale, wt, bias)
        N = math.prod(x.shape[:-1])
        X = np.ascontiguousarray(x.reshape(N, self.D), dtype=np.float32)
        if N >= BLAS_ROWS:
            xm = np.empty_like(X)
            if self.mask(cc.address(X), N, s, self.keep, self.threshold, cc.address(xm)):
                raise MemoryError(f"sparse_input_linear kernel: out of memory for {N} tokens")
            y = np.matmul(xm, held[1])
            if held[2] is not None:
                np.add(y, held[2], out=y)
            return y.reshape(*x.shape[:-1], self.out)
        y, yp = self.buffer((N, self.out))
        self.call(cc.address(X), N, s, self.keep, self.threshold, w, b, bad, yp)
        return y.reshape(*x.shape[:-1], self.out)


@register_kernel("sparse_input_linear")
def sparse_input_linear_kernel(node: ir.Node, graph: ir.Graph) -> Callable[..., np.ndarray]:
    """A kernel for one f32 `sparse_input_linear` node: compiled C, or the NumPy reference when there is no
    compiler (or the node is not f32)."""
    a = node.attrs
    wt = node.operands[2]
    D, out = (graph.params[wt[1:]] if wt[0] == "@" else graph.types()[wt]).shape
    if node.type.dtype.name != "f32":
        return reference_of(node)
    return compiled(node, lambda: SparseInputLinear(D, out, a["keep"], a["threshold"]), reference=True)
