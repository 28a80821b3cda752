"""The `gguf_linear` kernels: integer dot products over GGUF weight blocks, one C source per block type.

The numerics are the op's (ir/ops/quant/gguf_linear.py): the activations are quantized per 32 values to
int8 with an f32 scale d and the scaled code sum s (into the caller's scratch); each 32-value chunk of a
weight row is decoded to bytes and multiplied with AVX2 `maddubs` (unsigned codes times int8 activations;
signed codes take the sign trick, |w| times sign(w) x) and `madd` (pairs to int32, times the integer
sub-scale: 1, a k-quant's 6-bit scale, q6_k's int8 scale per 16), then scaled once in f32:
acc += f32(D * d) * I, plus the min term Mc * s. Integer parts are exact; only the f32 order of the sum
over chunks differs from the reference. Portable C does the same one value at a time.

Register blocking: a tile of weight rows times tokens decodes each weight chunk once for its tokens and
loads each activation chunk once for its rows (one token: 4 rows; prompts: 2 rows x 4 tokens, which reuse
each decoded chunk 4 times: 1.8-2.5x less time per token than one token at a time). A tile first computes
its scales as vectors, 8 chunks at a time (f32(D d) into a small buffer, the min terms into the
accumulators; q4_1/q5_1 read 8 blocks' d and m by permutes of the blocks' loads, k-quants unpack their
6-bit scales 4 bytes per 32-bit word), then runs the integer dots with nothing else live, so gcc keeps
every accumulator in a register. Threads take contiguous runs of row tiles and prefetch their rows 2
tiles ahead (the hardware prefetcher alone reached a third of the bandwidth on single tokens). Every
output sums the same terms in the same order whatever its tile and thread: results depend neither on the
thread count nor on how many tokens a call has.

C API, for every type t in TYPES (c_source(t) holds it; several types paste into one file):

    void gguf_linear_<t>(const float *x, int64_t M, const uint8_t *w, int64_t N, int64_t K,
                         const float *bias, float *y, void *scratch);
        y[M, N] = gguf_linear(x[M, K], w[N, row_bytes], bias[N] or NULL). A *team function*: call it from
        every thread of a running OpenMP team (or from outside any parallel region, one thread); it
        splits the activations with an orphaned `omp for`, then gives each thread a contiguous run of
        row tiles (by omp_get_thread_num), and returns after a barrier: y complete, the scratch free.
        K must be a multiple of the type's block (32; 256 for k-quants).
    void gguf_linear_<t>_x2(...the same...);
        acts = q8x2: the codes of x and of its residual (see the op), 2M code rows in the scratch.
    void gguf_dequant_row_<t>(const uint8_t *row, int64_t K, float *y);
        one row decoded, bit for bit dequant_gguf (for embeddings: decode the rows gathered).
    void gguf_linear_<t>_entry(...same arguments..., int two);    (source(t): the per-op library)
        opens its own `omp parallel` (large calls only) around the team function.

scratch: `scratch_bytes(t, M, K)` = M K + 8 M K / 32 bytes (twice that for q8x2), 4-byte aligned (64 is best): the int8 codes
[M, K], then d [M, K / 32] and s [M, K / 32] as f32. The same for every type.
"""
from __future__ import annotations

import ctypes
import warnings
from typing import Callable

import numpy as np

import ir
from ir.ops.quant.gguf import BLOCKS
from ir.ops.quant.gguf_linear import CHUNK, MINS

from . import cc
from .kernels import register_kernel

TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k")
PAR_MIN = 1 << 16  # M x N x K from which the per-op entry opens a thread team (below, the team costs more)


def scratch_bytes(qtype: str, M: int, K: int, acts: str = "q8") -> int:
    """Bytes of scratch a gguf_linear_<qtype> call needs for M tokens of K values: the int8 codes (M K)
    and two f32 per 32 values (d, s), twice for acts = q8x2; the same for every type."""
    if qtype not in TYPES:
        raise ValueError(f"gguf_kernel: no kernel for type {qtype!r}; types: {', '.join(TYPES)}")
    rows = 2 * M if acts == "q8x2" else M
    return rows * K + 8 * rows * (K // CHUNK)


COMMON = r"""
#ifndef TRITIUM_GGUF_COMMON
#define TRITIUM_GGUF_COMMON
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <float.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* f16 (little-endian bytes) -> f32, exact */
static inline float tgg_f16(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff, bits;
    if (e == 0x1f) bits = sign | 0x7f800000u | (m << 13);
    else if (e) bits = sign | ((e + 112) << 23) | (m << 13);
    else if (!m) bits = sign;
    else {  /* subnormal: normalise */
        e = 113;
        while (!(m & 0x400)) { m <<= 1; e--; }
        bits = sign | (e << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline uint32_t tgg_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

#if defined(__AVX2__)
static inline float tgg_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 bytes -> 32 nibbles: low nibbles are values 0-15, high nibbles 16-31 (one broadcast load, one shift of the
   upper half, one mask) */
static inline __m256i tgg_nibbles(const uint8_t *p) {
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
}

/* bit i of a u32 -> byte i: 0x10 where set, else 0 (the fifth bit of q5 codes) */
static inline __m256i tgg_bit4(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}
#endif

/* one chunk of 32 activations -> int8 codes q = clip(rint(x / d), +-127), d = max|x| / 127 and
   s = d * sum(q), exactly as ir/ops/quant/gguf_linear.py (a NaN or inf: d = s = NaN, q = 0) */
static inline void tgg_quantize_chunk(const float *x, int8_t *q, float *d, float *s) {
#if defined(__AVX2__)
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), big = _mm256_set1_ps(FLT_MAX);
    __m256 v[4], am = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        __m256 a = _mm256_and_ps(v[i], absm);
        am = _mm256_max_ps(am, a);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  /* NaN or inf */
    }
    if (_mm256_movemask_ps(bad)) { memset(q, 0, 32); *d = NAN; *s = NAN; return; }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float dd = _mm_cvtss_f32(m4) / 127.0f;
    *d = dd;
    if (!(dd > 0.0f)) { memset(q, 0, 32); *s = dd * 0.0f; return; }
    const __m256 vd = _mm256_set1_ps(dd), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i c[4];
    for (int i = 0; i < 4; i++) {  /* IEEE division and round-half-even, as NumPy */
        __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v[i], vd), lo), hi);
        c[i] = _mm256_cvtps_epi32(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    __m256i sum = _mm256_add_epi32(_mm256_add_epi32(c[0], c[1]), _mm256_add_epi32(c[2], c[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    *s = dd * (float)_mm_cvtsi128_si32(s4);
#else
    float amax = 0.0f;
    int bad = 0;
    for (int i = 0; i < 32; i++) {
        float a = fabsf(x[i]);
        bad |= !(a <= FLT_MAX);
        amax = a > amax ? a : amax;
    }
    if (bad) { memset(q, 0, 32); *d = NAN; *s = NAN; return; }
    float dd = amax / 127.0f;
    *d = dd;
    int32_t sum = 0;
    for (int i = 0; i < 32; i++) {
        float t = dd > 0.0f ? x[i] / dd : 0.0f;
        t = t > 127.0f ? 127.0f : t < -127.0f ? -127.0f : t;
        q[i] = (int8_t)nearbyintf(t);
        sum += q[i];
    }
    *s = dd * (float)sum;
#endif
}

/* this thread's share [lo, hi) of n items: contiguous, in thread order (one thread outside a team) */
static inline void tgg_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    const int64_t T = omp_get_num_threads(), i = omp_get_thread_num();
#else
    const int64_t T = 1, i = 0;
#endif
    *lo = n * i / T;
    *hi = n * (i + 1) / T;
}

#define TGG_OWN 16384  /* code values a thread quantizes for itself (20 KiB of stack) rather than share */

static inline void tgg_prefetch(const uint8_t *p, int64_t bytes) {
#if defined(__AVX2__)
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch((const char *)(p + off), _MM_HINT_T0);
#else
    (void)p; (void)bytes;
#endif
}

/* chunks [i0, i1) of x [M, K] -> the codes (then d, then s) at q0: [M, K] codes, or for two (acts = q8x2)
   [2M, K], token m's codes in row 2m and its residual's (x - d q, f32) in row 2m + 1 */
static void tgg_quantize_range(const float *x, int64_t M, int64_t K, int two, void *q0, int64_t i0, int64_t i1) {
    const int64_t nb = K / 32, Mq = two ? 2 * M : M;
    int8_t *q = (int8_t *)q0;
    float *d = (float *)(q + Mq * K), *s = d + Mq * nb;
    for (int64_t i = i0; i < i1; i++) {
        if (!two) { tgg_quantize_chunk(x + 32 * i, q + 32 * i, d + i, s + i); continue; }
        const int64_t m = i / nb, b = i % nb, a = 2 * m * nb + b;
        int8_t *q1 = q + 2 * m * K + 32 * b;
        float r[32];
        tgg_quantize_chunk(x + 32 * i, q1, d + a, s + a);
        for (int j = 0; j < 32; j++) r[j] = x[32 * i + j] - d[a] * (float)q1[j];
        tgg_quantize_chunk(r, q1 + K, d + a + nb, s + a + nb);
    }
}

/* team function: every thread of the team calls it; x [M, K] -> the codes at scratch, each thread quantizing
   its chunks, then a barrier (the omp for's) */
static void tgg_quantize(const float *x, int64_t M, int64_t K, int two, void *scratch) {
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < M * (K / 32); i++) tgg_quantize_range(x, M, K, two, scratch, i, i + 1);
}
#endif /* TRITIUM_GGUF_COMMON */
"""

# One type: PFX_ is replaced by gguf_<t>_ (helpers) and the @...@ markers by the type's snippets.
TYPE = r"""
/* ---- gguf type @TYPE@: @PER@ values in @BYTES@ bytes ---- */
#define PFX_PER @PER@
#define PFX_BYTES @BYTES@
#define PFX_GROUP (@PER@ / 32)  /* 32-value chunks per block */

/* chunk j of block p: the 32 integer codes Q, the sub-scales S (per 16 values), D and Mc: w = D (S Q) + Mc */
static inline void PFX_chunk(const uint8_t *p, int j, int8_t q[32], int16_t S[2], float *D, float *Mc) {
    S[0] = S[1] = 1;
    *Mc = 0.0f;
    (void)j;
@SCALAR@
}

/* one row of K values, bit for bit dequant_gguf: (D * S) * Q (+ Mc) in f32 */
void gguf_dequant_row_@TYPE@(const uint8_t *row, int64_t K, float *y) {
    for (int64_t b = 0; b < K / 32; b++) {
        int8_t q[32];
        int16_t S[2];
        float D, Mc;
        PFX_chunk(row + (b / PFX_GROUP) * PFX_BYTES, (int)(b % PFX_GROUP), q, S, &D, &Mc);
        for (int i = 0; i < 32; i++) {
            float v = (D * (float)S[i / 16]) * (float)q[i];
            y[32 * b + i] = @HAS_MIN@ ? v + Mc : v;
        }
    }
}

#if defined(__AVX2__)
@AVX2_TILES@
#else
/* portable: one row and token at a time, each chunk decoded and dotted in int32 */
static void PFX_tiles(int R, int C, const uint8_t *w, int64_t rb, const int8_t *xq, const float *xd,
                      const float *xs, int64_t K, float *out) {
    const int64_t nb = K / 32;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float acc = 0.0f, macc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int8_t q[32];
                int16_t S[2];
                float D, Mc;
                PFX_chunk(w + r * rb + (b / PFX_GROUP) * PFX_BYTES, (int)(b % PFX_GROUP), q, S, &D, &Mc);
                const int8_t *x = xq + c * K + 32 * b;
                int32_t i0 = 0, i1 = 0;
                for (int i = 0; i < 16; i++) { i0 += q[i] * x[i]; i1 += q[16 + i] * x[16 + i]; }
                acc += (D * xd[c * nb + b]) * (float)(S[0] * i0 + S[1] * i1);
                if (@HAS_MIN@) macc += Mc * xs[c * nb + b];
            }
            out[r * C + c] = acc + macc;
        }
}
#endif

/* y [M, N] = gguf_linear(x [M, K], w [N, K / PER * BYTES]) (+ bias [N]); team function (see gguf_kernel.py).
   Each thread takes a contiguous run of row tiles and prefetches its rows PF tiles ahead (the hardware
   prefetcher alone left single-token calls at a third of the bandwidth), the first ones while the
   activations are quantized. two (acts = q8x2): 2M code rows, token m's two parts in rows 2m and 2m + 1,
   added into y[m] in that order. A barrier at the end: y is complete, and the scratch free, on return. */
static void PFX_linear(const float *x, int64_t M, const uint8_t *w, int64_t N, int64_t K, const float *bias,
                       float *y, void *scratch, int two) {
    const int64_t Mq = two ? 2 * M : M;  /* code rows */
    const int RT = Mq <= 2 ? @RT1@ : @RT@, CT = Mq <= 2 ? (int)Mq : @CT@, PF = @PF@;
    const int64_t rb = K / PFX_PER * PFX_BYTES, nb = K / 32, nt = (N + RT - 1) / RT;
    int64_t t0, t1;
    tgg_range(nt, &t0, &t1);
    const int64_t first = (t1 - t0 < PF ? t1 - t0 : PF) * RT;  /* rows of this thread's first PF tiles */
    tgg_prefetch(w + t0 * RT * rb, (first < N - t0 * RT ? first : N - t0 * RT) * rb);
    /* the codes: a few tokens' (decode) each thread makes for itself on its stack, with no barrier (quantizing
       K values costs less than one); more, the team shares into the scratch (the omp for's barrier) */
    _Alignas(64) uint8_t own[TGG_OWN + 8 * (TGG_OWN / 32)];
    void *codes = scratch;
    if (Mq * K <= TGG_OWN) {
        codes = own;
        tgg_quantize_range(x, M, K, two, own, 0, M * nb);
    } else {
        tgg_quantize(x, M, K, two, scratch);
    }
    const int8_t *xq = (const int8_t *)codes;
    const float *xd = (const float *)(xq + Mq * K), *xs = xd + Mq * nb;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t n0 = t * RT;
        const int R = N - n0 < RT ? (int)(N - n0) : RT;
        if (t + PF < t1) {
            const int64_t a = n0 + PF * RT;
            tgg_prefetch(w + a * rb, (N - a < RT ? N - a : RT) * rb);
        }
        for (int64_t m0 = 0; m0 < Mq;) {
            const int C = Mq - m0 >= CT ? CT : 1;  /* CT code rows a tile; the last few one at a time */
            float out[@OUTN@];
            PFX_tiles(R, C, w + n0 * rb, rb, xq + m0 * K, xd + m0 * nb, xs + m0 * nb, K, out);
            for (int r = 0; r < R; r++)
                for (int c = 0; c < C; c++) {
                    const int64_t m = m0 + c;
                    const float o = out[r * C + c];
                    if (two && (m & 1)) y[(m >> 1) * N + n0 + r] += o;
                    else y[(two ? m >> 1 : m) * N + n0 + r] = bias ? o + bias[n0 + r] : o;
                }
            m0 += C;
        }
    }
    #pragma omp barrier
}

void gguf_linear_@TYPE@(const float *x, int64_t M, const uint8_t *w, int64_t N, int64_t K, const float *bias,
                        float *y, void *scratch) {
    PFX_linear(x, M, w, N, K, bias, y, scratch, 0);
}

void gguf_linear_@TYPE@_x2(const float *x, int64_t M, const uint8_t *w, int64_t N, int64_t K, const float *bias,
                           float *y, void *scratch) {
    PFX_linear(x, M, w, N, K, bias, y, scratch, 1);
}
"""

ENTRY = r"""
void gguf_linear_@TYPE@_entry(const float *x, int64_t M, const uint8_t *w, int64_t N, int64_t K, const float *bias,
                              float *y, void *scratch, int two) {
    #pragma omp parallel if (M * N * K >= @PAR_MIN@)
    gguf_@TYPE@_linear(x, M, w, N, K, bias, y, scratch, two);
}
"""

# Per type: the portable chunk decoder (p: the block, j: the chunk in it), and for the AVX2 tiles the chunk
# decoder (c@r: the block holding row @r's chunk, j: the chunk in it; sets wq@r and ws@r: the codes as maddubs
# takes them and madd's int16 multipliers). Scales come once per 8 chunks (see _avx2_tile).
_Q4_0 = dict(
    scalar="""    *D = tgg_f16(p);
    for (int i = 0; i < 16; i++) { q[i] = (int8_t)((p[2 + i] & 15) - 8); q[16 + i] = (int8_t)((p[2 + i] >> 4) - 8); }""",
    chunk="""                const __m256i wq@r = _mm256_sub_epi8(tgg_nibbles(c@r + 2), _mm256_set1_epi8(8));""")
_Q4_1 = dict(
    scalar="""    *D = tgg_f16(p);
    *Mc = tgg_f16(p + 2);
    for (int i = 0; i < 16; i++) { q[i] = (int8_t)(p[4 + i] & 15); q[16 + i] = (int8_t)(p[4 + i] >> 4); }""",
    chunk="""                const __m256i wq@r = tgg_nibbles(c@r + 4);""")
_Q5_0 = dict(
    scalar="""    *D = tgg_f16(p);
    uint32_t qh = tgg_u32(p + 2);
    for (int i = 0; i < 16; i++) {
        q[i] = (int8_t)(((p[6 + i] & 15) | (((qh >> i) & 1) << 4)) - 16);
        q[16 + i] = (int8_t)(((p[6 + i] >> 4) | (((qh >> (16 + i)) & 1) << 4)) - 16);
    }""",
    chunk="""                const __m256i wq@r = _mm256_sub_epi8(_mm256_or_si256(tgg_nibbles(c@r + 6), tgg_bit4(tgg_u32(c@r + 2))),
                                                     _mm256_set1_epi8(16));""")
_Q5_1 = dict(
    scalar="""    *D = tgg_f16(p);
    *Mc = tgg_f16(p + 2);
    uint32_t qh = tgg_u32(p + 4);
    for (int i = 0; i < 16; i++) {
        q[i] = (int8_t)((p[8 + i] & 15) | (((qh >> i) & 1) << 4));
        q[16 + i] = (int8_t)((p[8 + i] >> 4) | (((qh >> (16 + i)) & 1) << 4));
    }""",
    chunk="""                const __m256i wq@r = _mm256_or_si256(tgg_nibbles(c@r + 8), tgg_bit4(tgg_u32(c@r + 4)));""")
_Q8_0 = dict(
    scalar="""    *D = tgg_f16(p);
    for (int i = 0; i < 32; i++) q[i] = (int8_t)p[2 + i];""",
    chunk="""                const __m256i wq@r = _mm256_loadu_si256((const __m256i *)(c@r + 2));""")
# k-quants with mins: d, dmin, 12 bytes of 6-bit scales and mins, [q5_k: qh 32], qs 128 (chunk j: the low (even
# j) or high (odd j) nibbles of qs[32 (j / 2) : +32]; q5_k's fifth bit: bit j of qh[i])
_KSCALES = """static inline void PFX_scales(const uint8_t *sc, int j, int *s, int *m) {
    if (j < 4) { *s = sc[j] & 63; *m = sc[j + 4] & 63; }
    else { *s = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4); *m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4); }
}
"""
# the super-block's scales: D@r for its 8 chunks, the 6-bit scales S@r, and the min terms McV@r = -(dmin * m)
# the super-block's scales: D for its 8 chunks, the 6-bit scales as 16-bit lanes S16@r, the min terms
# McV@r = -(dmin * m); bytes unpacked 4 at a time in 32-bit words (the low 6 bits of bytes 0-3 / 4-7, or
# the nibbles of bytes 8-11 under the top 2 bits of bytes 0-3 / 4-7), no scalar stores read back as vectors
_KSETUP = """            const __m256 Dv@r = _mm256_set1_ps(tgg_f16(c@r));
            __m128i S16@r;
            __m256 McV@r;
            {
                const uint32_t u0 = tgg_u32(c@r + 4), u1 = tgg_u32(c@r + 8), u2 = tgg_u32(c@r + 12);
                const uint32_t s_lo = u0 & 0x3f3f3f3f, s_hi = (u2 & 0x0f0f0f0f) | ((u0 >> 2) & 0x30303030);
                const uint32_t m_lo = u1 & 0x3f3f3f3f, m_hi = ((u2 >> 4) & 0x0f0f0f0f) | ((u1 >> 2) & 0x30303030);
                S16@r = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)s_hi, (int)s_lo));
                const __m256 mv = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)m_hi, (int)m_lo)));
                McV@r = _mm256_xor_ps(_mm256_mul_ps(_mm256_set1_ps(tgg_f16(c@r + 2)), mv), _mm256_set1_ps(-0.0f));
            }"""
_KNIB = """                const __m256i l@r = _mm256_loadu_si256((const __m256i *)(c@r + @QS@ + 32 * (j >> 1)));
                __m256i wq@r = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(l@r, 4) : l@r, _mm256_set1_epi8(0x0F));"""
_KWS = "            const __m256i ws@r = _mm256_broadcastw_epi16(_mm_srli_si128(S16@r, 2 * @j));"  # @j: the chunk, a literal
_KSCALAR = """    int s, m;
    PFX_scales(p + 4, j, &s, &m);
    *D = tgg_f16(p);
    *Mc = -(tgg_f16(p + 2) * (float)m);
    S[0] = S[1] = (int16_t)s;"""
_Q4_K = dict(
    prelude=_KSCALES, setup=_KSETUP,
    scalar=_KSCALAR + """
    for (int i = 0; i < 32; i++) q[i] = (int8_t)((p[16 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15);""",
    chunk=_KNIB.replace("@QS@", "16"), ws=_KWS)
_Q5_K = dict(
    prelude=_KSCALES, setup=_KSETUP,
    scalar=_KSCALAR + """
    for (int i = 0; i < 32; i++)
        q[i] = (int8_t)(((p[48 + 32 * (j >> 1) + i] >> (4 * (j & 1))) & 15) | (((p[16 + i] >> j) & 1) << 4));""",
    chunk=_KNIB.replace("@QS@", "48") + """
                {
                    const __m256i bit = _mm256_set1_epi8((char)(1 << j));
                    const __m256i h = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(c@r + 16)), bit);
                    wq@r = _mm256_or_si256(wq@r, _mm256_and_si256(_mm256_cmpeq_epi8(h, bit), _mm256_set1_epi8(0x10)));
                }""", ws=_KWS)
# q6_k: ql 128, qh 64, 16 int8 scales (one per 16 values), d; chunk j: half h = j / 4, low nibbles (bit 1 of j
# clear) or high of ql[64 h + 32 (j & 1) + i], two bits of qh[32 h + i] at 2 (j & 3), minus 32
_Q6_K = dict(
    scalar="""    const int h = j >> 2;
    *D = tgg_f16(p + 208);
    S[0] = (int8_t)p[192 + 2 * j];
    S[1] = (int8_t)p[192 + 2 * j + 1];
    for (int i = 0; i < 32; i++) {
        int lo = (p[64 * h + 32 * (j & 1) + i] >> (4 * ((j >> 1) & 1))) & 15;
        int hi = (p[128 + 32 * h + i] >> (2 * (j & 3))) & 3;
        q[i] = (int8_t)((lo | (hi << 4)) - 32);
    }""",
    setup="""            const __m256 Dv@r = _mm256_set1_ps(tgg_f16(c@r + 208));
            const __m256i S16@r = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(c@r + 192)));""",
    chunk="""                __m256i wq@r;
                {
                    const int h = j >> 2;
                    const __m256i l = _mm256_loadu_si256((const __m256i *)(c@r + 64 * h + 32 * (j & 1)));
                    __m256i hb = _mm256_loadu_si256((const __m256i *)(c@r + 128 + 32 * h));
                    hb = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * (j & 3))), _mm256_set1_epi8(3));
                    const __m256i lo = _mm256_and_si256((j >> 1) & 1 ? _mm256_srli_epi16(l, 4) : l, _mm256_set1_epi8(0x0F));
                    wq@r = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hb, 4)), _mm256_set1_epi8(32));
                }""",
    ws="""            const __m256i ws@r = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(S16@r, _mm256_set1_epi32(j)),
                                                     _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                                      2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));""")
# q4_1, q5_1: the f16 d and m of 8 blocks at once: the first dword of each block, from the 8 blocks' 5 (6)
# 32-byte loads by permutes and blends (the gather these replace cost half the kernel's time; a row's last,
# partial group keeps a masked gather: no read past the row)
def _heads(nbytes: int) -> str:
    stride = nbytes // 4  # dwords per block
    parts: dict[int, list[int]] = {}
    for j in range(8):
        parts.setdefault(stride * j // 8, []).append(j)
    L = ["static inline __m256i PFX_heads(const uint8_t *p) {  /* dword 0 of blocks 0..7 */"]
    for k, js in parts.items():
        idx = ", ".join(str(stride * j % 8) if j in js else "0" for j in range(8))
        L += [f"    const __m256i h{k} = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(p + {32 * k})), "
              f"_mm256_setr_epi32({idx}));"]
    acc = "h0"
    for k, js in list(parts.items())[1:]:
        acc = f"_mm256_blend_epi32({acc}, h{k}, {sum(1 << j for j in js)})"
    return "\n".join(L + [f"    return {acc};", "}", ""])


for _t, _n in ((_Q4_1, 20), (_Q5_1, 24)):
    _t["prelude"] = "#if defined(__AVX2__)\n" + _heads(_n) + "#endif\n"
    _t["setup"] = """            const __m256i gw@r = n == 8 ? PFX_heads(w + @r * rb + g * PFX_BYTES)
                : _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)(w + @r * rb + g * PFX_BYTES), idx, lanes, 1);
            const __m256i pk@r = _mm256_permute4x64_epi64(_mm256_packus_epi32(_mm256_and_si256(gw@r, lo16),
                                                                              _mm256_srli_epi32(gw@r, 16)), 0xD8);
            const __m256 Dv@r = _mm256_cvtph_ps(_mm256_castsi256_si128(pk@r));
            const __m256 McV@r = _mm256_cvtph_ps(_mm256_extracti128_si256(pk@r, 1));"""
SPECS = {"q4_0": _Q4_0, "q4_1": _Q4_1, "q5_0": _Q5_0, "q5_1": _Q5_1, "q8_0": _Q8_0,
         "q4_k": _Q4_K, "q5_k": _Q5_K, "q6_k": _Q6_K}
SIGNED = ("q4_0", "q5_0", "q8_0", "q6_k")  # codes with a sign: maddubs takes |w| and sign(w) x
RT1 = 4  # a tile when there are 1 or 2 code rows (one token; a q8x2 token): RT1 weight rows
RT, CT = 2, 4  # a tile for more: RT weight rows x CT code rows (the last Mq % CT: RT x 1)
PF = 2  # tiles ahead whose rows are prefetched


def _avx2_tile(qtype: str, R: int, C: int) -> str:
    """One AVX2 tile function: out[r C + c] = the chunks' sum for weight row w + r rb (r < R) and token c < C.

    Two passes. The scales: the products f32(D d) of every row, token and chunk go to a buffer (read back as
    broadcasts), a k-quant's madd multipliers to another, and the min terms Mc s start the accumulators;
    types with a "setup" do it per group of 8 chunks (8 blocks, or a k-quant's super-block) as vectors, the
    others with one scalar f16 load a block. Then the integer dots: each chunk costs its decode and, per row
    and token, one maddubs, madd, convert and FMA. Accumulators are named variables, and the dot loop holds
    nothing else: gcc spilled them from arrays, and when the scale code shared the loop."""
    spec, signed, per = SPECS[qtype], qtype in SIGNED, BLOCKS[qtype][0]
    has_min, ksub = qtype in MINS, per > 32  # ksub: integer sub-scales (madd multipliers) per chunk
    rows, toks = range(R), range(C)
    L = [f"static void PFX_tile_{R}x{C}(const uint8_t *w, int64_t rb, const int8_t *xq, const float *xd, const float *xs,",
         "                              int64_t K, float *out) {",
         "    const int64_t nb = K / 32, nbp = (nb + 7) & ~(int64_t)7;",
         "    const __m256i ones = _mm256_set1_epi16(1), lo16 = _mm256_set1_epi32(0xFFFF);",
         f"    const __m256i idx = _mm256_setr_epi32(0, {', '.join(str(i * BLOCKS[qtype][1]) for i in range(1, 8))});",
         "    (void)ones; (void)lo16; (void)idx; (void)xs;",
         f"    float dd[{R * C} * nbp] __attribute__((aligned(32)));  /* [r C + c][chunk] */"]
    L += [f"    __m256i wsb[{R} * nb];  /* [r][chunk]: madd's multipliers */"] if ksub else []
    L += [f"    __m256 a{r}{c} = _mm256_setzero_ps();" for r in rows for c in toks]
    if "setup" not in spec:
        L += ["    for (int64_t b = 0; b < nb; b++) {  /* the scales */"]
        L += [f"        const float D{r} = tgg_f16(w + {r} * rb + b * PFX_BYTES);" for r in rows]
        L += [f"        dd[{r * C + c} * nbp + b] = D{r} * xd[{c} * nb + b];" for c in toks for r in rows]
        L += ["    }"]
    else:
        L += ["    for (int64_t g = 0; g < nb; g += 8) {  /* the scales */",
              "        const int n = nb - g < 8 ? (int)(nb - g) : 8;  /* fewer in a row's last group of blocks */",
              "        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));"]
        for r in rows:
            L += [f"        const uint8_t *c{r} = w + {r} * rb + g / 8 * PFX_BYTES;"] if ksub else []
            L += [spec["setup"].replace("@r", str(r))]
            for j in range(8) if ksub else ():  # unrolled: the byte shifts take constants
                L += [f"        {{ const int j = {j};", spec["ws"].replace("@r", str(r)).replace("@j", str(j)),
                      f"            wsb[{r} * nb + g + j] = ws{r}; }}"]
        for c in toks:
            L += [f"        const __m256 dx{c} = _mm256_maskload_ps(xd + {c} * nb + g, lanes);"]
            L += [f"        _mm256_storeu_ps(dd + {r * C + c} * nbp + g, _mm256_mul_ps(Dv{r}, dx{c}));" for r in rows]
            if has_min:
                L += [f"        const __m256 s{c} = _mm256_maskload_ps(xs + {c} * nb + g, lanes);"]
                L += [f"        a{r}{c} = _mm256_fmadd_ps(McV{r}, s{c}, a{r}{c});" for r in rows]
        L += ["    }"]
    def dots(b: str) -> list[str]:  # one chunk: decode it for every row, then every row x token
        D = [f"        const uint8_t *c{r} = w + {r} * rb + " + ("sb" if ksub else "b") + " * PFX_BYTES;" for r in rows]
        for r in rows:
            D += [spec["chunk"].replace("@r", str(r)),
                  f"        const __m256i ws{r} = " + (f"wsb[{r} * nb + {b}];" if ksub else "ones;")]
            D += [f"        const __m256i u{r} = _mm256_sign_epi8(wq{r}, wq{r});"] if signed else []
        for c in toks:
            D += [f"        const __m256i x{c} = _mm256_loadu_si256((const __m256i *)(xq + {c} * K + 32 * ({b})));"]
            for r in rows:
                p = f"_mm256_maddubs_epi16(u{r}, _mm256_sign_epi8(x{c}, wq{r}))" if signed else f"_mm256_maddubs_epi16(wq{r}, x{c})"
                D += [f"        a{r}{c} = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16({p}, ws{r})), "
                      f"_mm256_broadcast_ss(dd + {r * C + c} * nbp + {b}), a{r}{c});"]
        return D
    if ksub:  # a super-block's 8 chunks unrolled: every chunk's bit positions are constants
        L += ["    for (int64_t sb = 0; sb < nb / 8; sb++) {  /* the integer dots */"]
        for j in range(8):
            L += [f"      {{ const int j = {j};"] + dots(f"8 * sb + {j}") + ["      }"]
        L += ["    }"]
    else:
        L += ["    for (int64_t b = 0; b < nb; b++) {  /* the integer dots */"] + dots("b") + ["    }"]
    L += [f"    out[{r * C + c}] = tgg_hsum(a{r}{c});" for r in rows for c in toks]
    return "\n".join(L + ["}", ""])


def _avx2_tiles(qtype: str) -> str:
    """The tile functions (1..RT1 rows x 1 or 2 code rows, 1..RT rows x CT) and their dispatcher PFX_tiles."""
    shapes = sorted({(R, C) for R in range(1, RT1 + 1) for C in (1, 2)} | {(R, CT) for R in range(1, RT + 1)})
    cases = " ".join(f"case {16 * R + C}: PFX_tile_{R}x{C}(w, rb, xq, xd, xs, K, out); break;" for R, C in shapes)
    return "".join(_avx2_tile(qtype, R, C) for R, C in shapes) + (
        "static void PFX_tiles(int R, int C, const uint8_t *w, int64_t rb, const int8_t *xq, const float *xd,\n"
        "                      const float *xs, int64_t K, float *out) {\n"
        f"    switch (16 * R + C) {{ {cases} }}\n}}\n")


def c_source(qtype: str) -> str:
    """The C of one type: the shared helpers, the type's decoders, its dequant_row and its team function
    gguf_linear_<qtype> (see the module doc). Paste several types' sources into one file freely: every name
    carries the type, and include guards keep a helper or type pasted twice to one definition."""
    if qtype not in SPECS:
        raise ValueError(f"gguf_kernel: no kernel for type {qtype!r}; types: {', '.join(TYPES)}")
    spec = SPECS[qtype]
    per, nbytes = BLOCKS[qtype]
    text = TYPE.replace("@AVX2_TILES@", _avx2_tiles(qtype))
    for key, val in (("@SCALAR@", spec["scalar"]), ("@HAS_MIN@", str(int(qtype in MINS))), ("@RT1@", str(RT1)),
                     ("@RT@", str(RT)), ("@CT@", str(CT)), ("@OUTN@", str(max(RT * CT, 2 * RT1))), ("@PF@", str(PF)),
                     ("@PER@", str(per)), ("@BYTES@", str(nbytes)), ("@TYPE@", qtype)):
        text = text.replace(key, val)
    guard = f"TRITIUM_GGUF_{qtype.upper()}"  # pasting a type twice (a tied embedding and head) defines it once
    return (COMMON + f"#ifndef {guard}\n#define {guard}\n" + (spec.get("prelude", "") + text).replace("PFX_", f"gguf_{qtype}_")
            + f"#endif /* {guard} */\n")


def source(qtype: str) -> str:
    """The per-op library: c_source and the exported entry that opens its own thread team."""
    return c_source(qtype) + ENTRY.replace("@TYPE@", qtype).replace("@PAR_MIN@", str(PAR_MIN))


class GgufLinear:
    """The compiled kernel of one block type and activation format (any shape); call with (x, blocks[, bias])
    as the op."""

    def __init__(self, qtype: str, acts: str = "q8") -> None:
        self.qtype, self.acts = qtype, acts
        self.source = source(qtype)  # for --emit
        self.lib = cc.build(self.source, f"gguf_linear_{qtype}")
        self.fn = getattr(self.lib, f"gguf_linear_{qtype}_entry")
        ptr = ctypes.c_void_p
        self.fn.argtypes = [ptr, ctypes.c_int64, ptr, ctypes.c_int64, ctypes.c_int64, ptr, ptr, ptr, ctypes.c_int]
        self.fn.restype = None
        self.openmp = "openmp" in cc.features()  # decoding holds BLAS to one thread around it (generate.py)
        self._w: tuple | None = None  # ((blocks, bias) as given, contiguous copies, their addresses)
        self._scratch: dict[tuple[int, int], tuple[np.ndarray, int]] = {}  # (M, K) -> scratch and its address

    def __call__(self, x: np.ndarray, blocks: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        if self._w is None or self._w[0][0] is not blocks or self._w[0][1] is not bias:
            held = (np.ascontiguousarray(blocks, np.uint8), None if bias is None else np.ascontiguousarray(bias, np.float32))
            self._w = ((blocks, bias), held, [None if a is None else a.ctypes.data for a in held])
        wp, bp = self._w[2]
        K, N = x.shape[-1], blocks.shape[0]
        X = np.ascontiguousarray(x.reshape(-1, K), dtype=np.float32)
        M = X.shape[0]
        if (M, K) not in self._scratch:
            s = np.empty(scratch_bytes(self.qtype, M, K, self.acts) + 64, np.uint8)
            self._scratch[M, K] = (s, -s.ctypes.data % 64 + s.ctypes.data)  # 64-byte aligned
        y = np.empty((M, N), np.float32)
        self.fn(cc.address(X), M, wp, N, K, bp, cc.address(y), self._scratch[M, K][1], int(self.acts == "q8x2"))
        return y.reshape(*x.shape[:-1], N)


@register_kernel("gguf_linear")
def gguf_linear_kernel(node: ir.Node, graph: ir.Graph) -> Callable[..., np.ndarray]:
    """A kernel for one `gguf_linear` node: compiled C, or the NumPy reference when there is no compiler."""
    a = node.attrs
    try:
        return GgufLinear(a["type"], a["acts"])
    except cc.NoCompilerError as e:
        warnings.warn(f"{e}; %{node.name} runs gguf_linear with the NumPy reference, much slower", RuntimeWarning,
                      stacklevel=2)
        op = ir.OPS["gguf_linear"]
        return lambda *ins: op.reference(list(ins), a)
