"""The `lut_linear` kernel: generated C specialised to one layer's shape (T-MAC lookup tables).

Per token: build the 16-entry tables of every 4 activations (and, with table=i8, quantize them
per block of tgroup activations, exactly as ir/ops/quant/lut.py specifies); then, threaded over
tiles of 64 output rows, each packed byte holds two rows' 4-bit indices: AVX2 looks up 32 rows
with one `pshufb`, sums a block's lookups in int16 and scales once per block; for trit-planes
(B+ and B- with coefficients +a and -a) it sums B+'s lookups minus B-'s and scales the pair once
(half the scaling steps). Portable C does the same one row at a time. The kernel reproduces the
reference's tables bit for bit; only the order of the final float sums differs.

The C exists once, as a team function (ckernel.py) specialised by macros to one layer's shape and
weights (`Spec`): `lut_<shape>_run(par, x, N, bits, coef, offs, bias, y, scratch)`, every name prefixed,
the macros undefined at its end, so one C file holds many. Every thread of a team calls it: the team
builds the tables (one block of one token at a time) into `scratch`, then, after a barrier, shares the
row tiles. The native step calls it inside its team (native/lut.py); the per-op library wraps it in
`lut_linear`, an entry that opens a team of its own from PAR_MIN steps of work.

`lut_linear_kernel(node, graph)` returns a callable (x, bits, coef, offs[, bias]) -> y; with no C
compiler it warns and returns the NumPy reference, which computes the same function.
"""
from __future__ import annotations

import ctypes
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

import ir
from ir.ops.quant.lut import QMAX, TILE, n_tables, pairs, tiles

from . import cc
from .ckernel import PRELUDE, CKernel, compiled, entry, reference_of
from .kernels import register_kernel

TABLE_KIND = {"f32": 0, "i8": 1, "i16": 2}
PAR_MIN = 2048  # tile x table-pair x plane x token steps below which a call runs on one thread

TEAM = r"""
/* ---- lut_linear PFX: %(desc)s ---- */
#define P %(P)d
#define OUT %(OUT)d
#define COLS %(COLS)d
#define J %(J)d
#define K %(K)d  /* table pairs: tables 2K, the last one zero when J is odd */
#define NT %(NT)d
#define PER %(PER)d
#define NB %(NB)d
#define GROUP %(GROUP)d
#define NG %(NG)d
#define TGROUP %(TGROUP)d
#define TABLE %(TABLE)d  /* 0: f32 tables, 1: int8, 2: int16 (looked up as low and high bytes) */
#define QMAX %(QMAX)d
#define TBYTES %(TBYTES)d  /* bytes of quantized tables per pair */
#define HAS_OFFS %(HAS_OFFS)d  /* 0: all offsets are zero (trit-planes) */
#define COEF_F16 %(COEF_F16)d  /* 1: coefficients held as f16 (exact for these weights): half the bytes to stream */
#define PAIRED %(PAIRED)d  /* 1: coef[2q + 1] = -coef[2q] (trit-planes, B+ and B-): AVX2 sums a pair's lookups as
                             one integer difference and scales it once (int16 still holds it: see can_pair) */
#if COEF_F16
typedef uint16_t PFX_coef_t;
#else
typedef float PFX_coef_t;
#endif
#define OUTP (NT * 64)
/* threads pay off once a layer's weights come from DRAM: SmolLM2's decode step (every layer cold, 2k-14k
   steps each) ran 31.5 -> 24 ms per token on 2 cores when they went parallel; tinier calls stay on one */
#define PARALLEL(N) ((int64_t)NT * K * P * (N) >= %(PAR_MIN)d)

/* tables j0..j1-1 of one token: T[m] = ((b0 x0 + b1 x1) + b2 x2) + b3 x3 over the set bits, left to
   right (as the reference) */
static void PFX_build_tables(const float *x, float *T, int j0, int j1) {
    for (int j = j0; j < j1; j++) {
        float xc[4];
        for (int c = 0; c < 4; c++) xc[c] = 4 * j + c < COLS ? x[4 * j + c] : 0.0f;
        float *t = T + 16 * j;
        t[0] = 0.0f;
        for (int m = 1; m < 16; m++) {
            int high = 31 - __builtin_clz((unsigned)m), rest = m ^ (1 << high);
            t[m] = rest ? t[rest] + xc[high] : xc[high];
        }
    }
}

#if TABLE
/* block b of one token: s = max|T| / QMAX, q = rint(T / s), clipped to +-QMAX (a subnormal s can
   round past it; clipping first is the same for an integer QMAX). int8: the pair's two tables, 16
   bytes each. int16: low bytes of both, then high bytes of both. */
static void PFX_quantize_block(const float *T, uint8_t *q, float *s, int b) {
    int j0 = b * PER, j1 = j0 + PER < J ? j0 + PER : J;
    float amax = 0.0f;
    for (int i = 16 * j0; i < 16 * j1; i++) {  /* NaN-propagating, like numpy's max */
        float a = fabsf(T[i]);
        amax = a > amax || a != a ? a : amax;
    }
    float sc = amax > 0.0f ? amax / (float)QMAX : 1.0f;
    if (!(amax <= FLT_MAX)) {  /* a NaN or inf activation: NaN scale, codes 0 (as the reference) */
        s[b] = NAN;
        for (int j = j0; j < j1; j++)
            for (int m = 0; m < 16; m++) {
                uint8_t *pq = q + (size_t)TBYTES * (j >> 1) + 16 * (j & 1) + m;
                pq[0] = 0;
#if TABLE == 2
                pq[32] = 0;
#endif
            }
        return;
    }
    s[b] = sc;
    for (int j = j0; j < j1; j++) {
        int c[16];
#if defined(__AVX2__)
        for (int m = 0; m < 16; m += 8) {  /* IEEE division and round-half-even: the same as the scalar path */
            __m256 v = _mm256_div_ps(_mm256_loadu_ps(T + 16 * j + m), _mm256_set1_ps(sc));
            v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-(float)QMAX)), _mm256_set1_ps((float)QMAX));
            v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm256_storeu_si256((__m256i *)(c + m), _mm256_cvtps_epi32(v));
        }
#else
        for (int m = 0; m < 16; m++) {
            float v = T[16 * j + m] / sc;
            v = v > QMAX ? QMAX : v < -QMAX ? -QMAX : v;
            c[m] = v == v ? (int)nearbyintf(v) : 0;  /* NaN: any code (the offset term carries the NaN) */
        }
#endif
        uint8_t *pq = q + (size_t)TBYTES * (j >> 1) + 16 * (j & 1);
        for (int m = 0; m < 16; m++) {
#if TABLE == 1
            pq[m] = (uint8_t)(int8_t)c[m];
#else
            pq[m] = (uint8_t)(c[m] & 0xFF);
            pq[32 + m] = (uint8_t)(int8_t)(c[m] >> 8);
#endif
        }
    }
}
#endif

#if defined(__AVX2__) && TABLE
/* four int16 accumulators (rows 0-7|16-23, 8-15|24-31, 32-39|48-55, 40-47|56-63; int16 tables: low bytes
   in a, high bytes in h) -> acc += (a + 256 h) * sc * c. The int32 sum is exact, and so is its float (below
   2^24: at most 2 x 128 lookups of 32767 per block) */
static inline void PFX_flush(const __m256i a[4], const __m256i h[4], float sc, const PFX_coef_t *c, float *acc) {
    static const int first[4][2] = {{0, 16}, {8, 24}, {32, 48}, {40, 56}};
    __m256 vs = _mm256_set1_ps(sc);
    for (int i = 0; i < 4; i++) {
        __m128i lo[2] = {_mm256_castsi256_si128(a[i]), _mm256_extracti128_si256(a[i], 1)};
#if TABLE == 2
        __m128i hi[2] = {_mm256_castsi256_si128(h[i]), _mm256_extracti128_si256(h[i], 1)};
#endif
        for (int e = 0; e < 2; e++) {
            int r = first[i][e];
            __m256i sum = _mm256_cvtepi16_epi32(lo[e]);
#if TABLE == 2
            sum = _mm256_add_epi32(sum, _mm256_slli_epi32(_mm256_cvtepi16_epi32(hi[e]), 8));
#endif
            __m256 v = _mm256_cvtepi32_ps(sum);
#if COEF_F16
            __m256 cr = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + r)));
#else
            __m256 cr = _mm256_loadu_ps(c + r);
#endif
            _mm256_storeu_ps(acc + r, _mm256_add_ps(_mm256_loadu_ps(acc + r), _mm256_mul_ps(_mm256_mul_ps(v, vs), cr)));
        }
    }
    (void)h;
}

/* a[4] (h[4]) += or -= the lookups of one table pair for 64 rows of one plane (w: the pair's 64 bytes) */
static inline void PFX_lookup(const uint8_t *w, __m256i ta, __m256i tb, __m256i ha, __m256i hb, __m256i a[4],
                          __m256i h[4], int minus) {
    const __m256i m0f = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
    __m256i w0 = _mm256_loadu_si256((const __m256i *)w);         /* rows 0..31 */
    __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32));  /* rows 32..63 */
    __m256i i0 = _mm256_and_si256(w0, m0f), j0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), m0f);
    __m256i i1 = _mm256_and_si256(w1, m0f), j1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), m0f);
    __m256i x0 = _mm256_shuffle_epi8(ta, i0), y0 = _mm256_shuffle_epi8(tb, j0);
    __m256i x1 = _mm256_shuffle_epi8(ta, i1), y1 = _mm256_shuffle_epi8(tb, j1);
    /* interleave a row's two lookups, add each pair into int16 (maddubs: unsigned x signed) */
#if TABLE == 1
    __m256i s[4] = {_mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x0, y0)),
                    _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x0, y0)),
                    _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x1, y1)),
                    _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x1, y1))};
#else
    /* low bytes are unsigned: they take maddubs' unsigned side */
    __m256i s[4] = {_mm256_maddubs_epi16(_mm256_unpacklo_epi8(x0, y0), ones),
                    _mm256_maddubs_epi16(_mm256_unpackhi_epi8(x0, y0), ones),
                    _mm256_maddubs_epi16(_mm256_unpacklo_epi8(x1, y1), ones),
                    _mm256_maddubs_epi16(_mm256_unpackhi_epi8(x1, y1), ones)};
    x0 = _mm256_shuffle_epi8(ha, i0); y0 = _mm256_shuffle_epi8(hb, j0);
    x1 = _mm256_shuffle_epi8(ha, i1); y1 = _mm256_shuffle_epi8(hb, j1);
    __m256i t[4] = {_mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x0, y0)),
                    _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x0, y0)),
                    _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(x1, y1)),
                    _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(x1, y1))};
#endif
    for (int i = 0; i < 4; i++) {
        a[i] = minus ? _mm256_sub_epi16(a[i], s[i]) : _mm256_add_epi16(a[i], s[i]);
#if TABLE == 2
        h[i] = minus ? _mm256_sub_epi16(h[i], t[i]) : _mm256_add_epi16(h[i], t[i]);
#endif
    }
    (void)ha; (void)hb; (void)h;
}
#endif

/* acc[64] += sum over planes and blocks of one tile, for one token. Tables come in pairs: byte b
   of a pair holds row b's nibbles for tables 2k (low) and 2k + 1 (high). */
static void PFX_tile(int t, const uint8_t *bits, const PFX_coef_t *coef, const void *tab, const float *s, float *acc) {
#if defined(__AVX2__) && TABLE
    const uint8_t *q = (const uint8_t *)tab;
    for (int p = 0; p < P; p += 1 + PAIRED) {
        const uint8_t *bp = bits + ((size_t)p * NT + t) * K * 64;
#if PAIRED
        const uint8_t *bm = bits + ((size_t)(p + 1) * NT + t) * K * 64;  /* B-: coefficient -coef[p] */
#endif
        for (int b = 0; b < NB; b++) {
            int k0 = b * PER / 2, k1 = (b + 1) * PER / 2 < K ? (b + 1) * PER / 2 : K;
            const PFX_coef_t *c = coef + ((size_t)p * NG + (b * TGROUP) / GROUP) * OUTP + (size_t)t * 64;
            __m256i a[4], h[4];
            for (int i = 0; i < 4; i++) a[i] = h[i] = _mm256_setzero_si256();
            for (int k = k0; k < k1; k++) {
                const uint8_t *qk = q + (size_t)TBYTES * k;
                __m256i ta = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qk));
                __m256i tb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qk + 16)));
#if TABLE == 2
                __m256i ha = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qk + 32)));
                __m256i hb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qk + 48)));
#else
                __m256i ha = ta, hb = tb;
#endif
                PFX_lookup(bp + 64 * k, ta, tb, ha, hb, a, h, 0);
#if PAIRED
                PFX_lookup(bm + 64 * k, ta, tb, ha, hb, a, h, 1);
#endif
            }
            PFX_flush(a, h, s[b], c, acc);
        }
    }
#else
    for (int p = 0; p < P; p++) {
        const uint8_t *bp = bits + ((size_t)p * NT + t) * K * 64;
        for (int b = 0; b < NB; b++) {
            int k0 = b * PER / 2, k1 = (b + 1) * PER / 2 < K ? (b + 1) * PER / 2 : K;
            const PFX_coef_t *c = coef + ((size_t)p * NG + (b * TGROUP) / GROUP) * OUTP + (size_t)t * 64;
#if TABLE
            const uint8_t *q = (const uint8_t *)tab;
            float sc = s[b];
            int32_t a[64] = {0};
            for (int k = k0; k < k1; k++) {
                const uint8_t *qk = q + (size_t)TBYTES * k, *w = bp + 64 * k;
                for (int r = 0; r < 64; r++) {
#if TABLE == 1
                    a[r] += (int8_t)qk[w[r] & 15] + (int8_t)qk[16 + (w[r] >> 4)];
#else
                    a[r] += qk[w[r] & 15] + qk[16 + (w[r] >> 4)]
                          + 256 * ((int8_t)qk[32 + (w[r] & 15)] + (int8_t)qk[48 + (w[r] >> 4)]);
#endif
                }
            }
            for (int r = 0; r < 64; r++) acc[r] += ((float)a[r] * sc) * c[r];
#else
            const float *tf = (const float *)tab;
            float a[64] = {0};
            for (int k = k0; k < k1; k++) {
                const float *ta = tf + 32 * k, *tb = tf + 32 * k + 16;
                const uint8_t *w = bp + 64 * k;
                for (int r = 0; r < 64; r++) a[r] += ta[w[r] & 15] + tb[w[r] >> 4];
            }
            for (int r = 0; r < 64; r++) acc[r] += a[r] * c[r];
            (void)s;
#endif
        }
    }
#endif
}

/* y[N, OUT] = lut_linear(x[N, COLS]); coef [P, NG, OUTP], offs [NG, OUTP], bias [OUTP] or NULL. A team function:
   every thread of the team calls it (par = 0: thread 0 does it all); scratch: N * %(SCRATCH)d bytes (tables, block
   scales, group sums, quantized tables). The team builds the tables, one block of one token at a time, then
   (after a barrier) shares the row tiles. */
static void PFX_run(int par, const float *x, int64_t N, const uint8_t *bits, const void *coefv, const float *offs,
                    const float *bias, float *y, void *scratch) {
    const PFX_coef_t *coef = (const PFX_coef_t *)coefv;
    const int p = par && PARALLEL(N);
    float *T = (float *)scratch, *s = T + (size_t)32 * K * N, *xs = s + (size_t)NB * N;
#if TABLE
    uint8_t *q = (uint8_t *)(xs + (size_t)NG * N);
#else
    float *q = T;
#endif
    int64_t lo, hi;
    share(N * NB, p, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {  /* tables, one block of one token at a time */
        int64_t n = i / NB;
        int b = (int)(i %% NB), j1 = (b + 1) * PER < J ? (b + 1) * PER : J;
        PFX_build_tables(x + n * COLS, T + 32 * K * n, b * PER, j1);
#if TABLE
        PFX_quantize_block(T + 32 * K * n, q + (size_t)TBYTES * K * n, s + NB * n, b);
#endif
        if (b == NB - 1 && (J & 1)) {  /* the odd last pair's second table is zero (the scratch is not) */
            memset(T + 32 * K * n + 16 * J, 0, 16 * sizeof(float));
#if TABLE
            uint8_t *pq = q + (size_t)TBYTES * K * n + (size_t)TBYTES * (J >> 1) + 16;
            memset(pq, 0, 16);
#if TABLE == 2
            memset(pq + 32, 0, 16);
#endif
#endif
        }
    }
    share(N, p, &lo, &hi);
    for (int64_t n = lo; n < hi; n++) {
        const float *xn = x + n * COLS;
        for (int g = 0; g < NG; g++) {  /* group sums of x for the offsets, in order */
            float sum = 0.0f;
            for (int i = g * GROUP; i < (g + 1) * GROUP && i < COLS; i++) sum += xn[i];
            xs[NG * n + g] = sum;
        }
    }
    if (p) {
        #pragma omp barrier
    }
    share(NT, p, &lo, &hi);
    for (int t = (int)lo; t < (int)hi; t++) {
        for (int64_t n = 0; n < N; n++) {
            float acc[64] = {0};
            PFX_tile(t, bits, coef, q + (size_t)(TABLE ? TBYTES : 32) * K * n, s + NB * n, acc);
#if HAS_OFFS
            for (int g = 0; g < NG; g++) {  /* row-contiguous: vectorised */
                const float *og = offs + (size_t)g * OUTP + (size_t)t * 64;
                float xg = xs[NG * n + g];
                for (int r = 0; r < 64; r++) acc[r] += og[r] * xg;
            }
#else
            for (int g = 0; g < NG; g++)  /* zero offsets add 0 * sum(x): NaN when x has a NaN or inf, as the reference */
                if (!isfinite(xs[NG * n + g]))
                    for (int r = 0; r < 64; r++) acc[r] += 0.0f * xs[NG * n + g];
            (void)offs;
#endif
            for (int r = 0; r < 64 && t * 64 + r < OUT; r++)
                y[n * OUT + t * 64 + r] = bias ? acc[r] + bias[t * 64 + r] : acc[r];
        }
    }
}
#undef P
#undef OUT
#undef COLS
#undef J
#undef K
#undef NT
#undef PER
#undef NB
#undef GROUP
#undef NG
#undef TGROUP
#undef TABLE
#undef QMAX
#undef TBYTES
#undef HAS_OFFS
#undef COEF_F16
#undef PAIRED
#undef OUTP
#undef PARALLEL
"""


@dataclass(frozen=True)
class Spec:
    """One specialisation of the kernel: the layer's shape and attrs, and what its weights allow."""

    P: int
    out: int
    cols: int
    group: int
    tgroup: int
    table: str
    has_offs: bool = True  # False: every offset is zero (trit-planes), that work is skipped
    coef_f16: bool = False  # coefficients held as f16 (exact in f16; AVX2 + F16C and quantized tables only)
    paired: bool = False  # coef[2q + 1] = -coef[2q]: plane pairs summed as one integer difference

    @property
    def name(self) -> str:
        """The C prefix of its functions: unique per specialisation, so many paste into one file."""
        return (f"lut_{self.P}x{self.out}x{self.cols}_g{self.group}_t{self.tgroup}_{self.table}"
                + "_z" * (not self.has_offs) + "_h" * self.coef_f16 + "_pair" * self.paired)

    @property
    def macros(self) -> dict[str, int]:
        J, per = n_tables(self.cols), self.tgroup // 4
        return dict(P=self.P, OUT=self.out, COLS=self.cols, J=J, K=pairs(self.cols), NT=tiles(self.out), PER=per,
                    NB=-(-J // per), GROUP=self.group, NG=-(-self.cols // self.group), TGROUP=self.tgroup,
                    TABLE=TABLE_KIND[self.table], QMAX=QMAX.get(self.table, 0),
                    TBYTES={"i8": 32, "i16": 64}.get(self.table, 0), HAS_OFFS=int(self.has_offs),
                    COEF_F16=int(self.coef_f16), PAIRED=int(self.paired), PAR_MIN=PAR_MIN)

    @property
    def scratch_per_token(self) -> int:
        """Scratch bytes per token: f32 tables (32 K), block scales (NB), group sums (NG), quantized tables."""
        m = self.macros
        return 4 * (32 * m["K"] + m["NB"] + m["NG"]) + m["TBYTES"] * m["K"]

    def team(self) -> str:
        """The C of `<name>_run(par, x, N, bits, coef, offs, bias, y, scratch)`, a team function (ckernel.py)."""
        m = self.macros
        desc = ", ".join(f"{k}={v}" for k, v in m.items())
        return (TEAM % {**m, "SCRATCH": self.scratch_per_token, "desc": desc}).replace("PFX", self.name)

    def source(self) -> str:
        """The per-op library: the team function and `lut_linear`, an entry that opens its own team."""
        m = self.macros
        return PRELUDE + self.team() + entry(
            "lut_linear", "const float *x, int64_t N, const uint8_t *bits, const void *coef, const float *offs, "
            "const float *bias, float *y", f"{self.name}_run(1, x, N, bits, coef, offs, bias, y, scratch)",
            f"(int64_t){m['NT'] * m['K'] * m['P']} * N >= {PAR_MIN}", scratch=f"N * {self.scratch_per_token}")

    def weights(self, coef: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """coef and offs as the kernel reads them: whole tiles of rows (zeros past out), coef as f16 or f32.
        Raises ValueError for weights the specialisation does not hold."""
        if not self.has_offs and np.any(offs):
            raise ValueError("lut_linear kernel was specialised to zero offsets, but got nonzero ones")
        if self.coef_f16 and not f16_exact(coef):
            raise ValueError("lut_linear kernel was specialised to f16 coefficients, but these are not exact in f16")
        if self.paired and not is_paired(coef):
            raise ValueError("lut_linear kernel was specialised to paired planes (coef[2q + 1] = -coef[2q]), "
                             "but these coefficients are not")
        rows = tiles(self.out) * TILE
        return _pad_rows(coef, rows, np.float16 if self.coef_f16 else np.float32), _pad_rows(offs, rows)


def make_spec(P: int, out: int, cols: int, group: int, tgroup: int, table: str, has_offs: bool = True,
              coef_f16: bool = False, paired: bool = False) -> Spec:
    """A Spec, with f16 coefficients only where the kernel can read them (F16C with AVX2, quantized tables);
    ValueError for planes that cannot be paired."""
    if paired and not can_pair(P, table, tgroup):
        raise ValueError(f"lut_linear kernel: planes cannot be paired for P={P}, table={table}, tgroup={tgroup}")
    return Spec(P, out, cols, group, tgroup, table, has_offs, coef_f16 and table != "f32" and "avx2" in cc.features(),
                paired)


def spec_for(node: ir.Node, graph: ir.Graph) -> Spec | None:
    """The specialisation for one `lut_linear` node, from its attrs and weights (None: bits, coef or offs are
    not parameters)."""
    a = node.attrs
    if any(o[0] != "@" for o in node.operands[1:4]):
        return None
    P = graph.params[node.operands[1][1:]].shape[0]
    out = graph.params[node.operands[2][1:]].shape[2]
    offs = graph.weights.get(node.operands[3][1:])
    has_offs = offs is None or bool(np.any(offs))  # trit-planes have none: skip that work
    coef = graph.weights.get(node.operands[2][1:])
    coef_f16 = coef is not None and f16_exact(coef)  # f16 scales times powers of two: stream half the bytes
    paired = coef is not None and can_pair(P, a["table"], a["tgroup"]) and is_paired(coef)  # trit-planes
    return make_spec(P, out, a["cols"], a["group"], a["tgroup"], a["table"], has_offs, coef_f16, paired)


def source(P: int, out: int, cols: int, group: int, tgroup: int, table: str, has_offs: bool = True,
           coef_f16: bool = False, paired: bool = False) -> str:
    """The C source of one specialised per-op library."""
    return Spec(P, out, cols, group, tgroup, table, has_offs, coef_f16, paired).source()


def _pad_rows(a: np.ndarray, rows: int, dtype: type = np.float32) -> np.ndarray:
    """[..., out] -> contiguous [..., rows] with zeros past out (the kernel reads whole tiles)."""
    out = np.zeros((*a.shape[:-1], rows), dtype)
    out[..., : a.shape[-1]] = a
    return out


def can_pair(P: int, table: str, tgroup: int) -> bool:
    """Whether a kernel may sum plane pairs as one integer difference: int16 holds a block's difference
    of two int8-table planes up to tgroup 512 (2 x 127 x 128 lookups), of int16 ones always (pack_lut
    caps their tgroup at 512)."""
    return P % 2 == 0 and table != "f32" and (table == "i16" or tgroup <= 512)


def is_paired(coef: np.ndarray) -> bool:
    """coef[2q + 1] = -coef[2q] for every q: the planes are trit-planes' B+ and B- (planes_from_trits)."""
    return coef.shape[0] % 2 == 0 and bool(np.array_equal(coef[1::2], -coef[0::2]))


def f16_exact(a: np.ndarray) -> bool:
    """Every value is finite and the same in f16 (so a kernel may hold it as f16)."""
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    return bool(np.isfinite(h).all() and np.array_equal(h.astype(a.dtype), a))


class LutLinear(CKernel):
    """A compiled kernel for one layer shape; call with (x, bits, coef, offs[, bias])."""

    what = "lut_linear"

    def __init__(self, P: int, out: int, cols: int, group: int, tgroup: int, table: str, has_offs: bool = True,
                 coef_f16: bool = False, paired: bool = False):
        self.spec = make_spec(P, out, cols, group, tgroup, table, has_offs, coef_f16, paired)
        ptr = ctypes.c_void_p
        super().__init__(self.spec.source(), "lut_linear", [ptr, ctypes.c_int64, ptr, ptr, ptr, ptr, ptr])
        self.out, self.cols, self.has_offs = out, cols, has_offs
        self.coef_f16, self.paired = self.spec.coef_f16, paired

    def __call__(self, x: np.ndarray, bits: np.ndarray, coef: np.ndarray, offs: np.ndarray,
                 bias: np.ndarray | None = None) -> np.ndarray:
        def prepare() -> list:  # once per set of weights: tiles are read whole
            return [np.ascontiguousarray(bits), *self.spec.weights(coef, offs),
                    None if bias is None else np.ascontiguousarray(bias, np.float32)]
        _, (b, c, o, bb) = self.held((bits, coef, offs, bias), prepare)
        X = np.ascontiguousarray(x.reshape(-1, self.cols), dtype=np.float32)
        y = np.empty((X.shape[0], self.out), np.float32)
        self.call(cc.address(X), X.shape[0], b, c, o, bb, cc.address(y))
        return y.reshape(*x.shape[:-1], self.out)


@register_kernel("lut_linear")
def lut_linear_kernel(node: ir.Node, graph: ir.Graph) -> Callable[..., np.ndarray]:
    """A kernel for one `lut_linear` node: compiled C, or the NumPy reference when there is no compiler
    (or its weights are not parameters)."""
    spec = spec_for(node, graph)
    if spec is None:
        return reference_of(node)
    return compiled(node, lambda: LutLinear(*dataclasses.astuple(spec)), reference=True)
