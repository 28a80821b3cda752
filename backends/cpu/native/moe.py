"""Native lowerings of a mixture-of-experts block: the router (`softmax`, `argtopk`, `gather`) and `moe`.

`moe_f32` is a team function in four phases, barriers between them: each slot's [gate; up] rows of its
expert (dense_kernel's `gemv_rows`, 16 rows a block, the blocks of every slot shared by the team), then
act(gate) * up, then each slot's down rows, then the weighted sum over the slots in order. A token reads
only its k experts' weights (the pointer tables `win`/`wout` hold every expert; the index picks). Its sums
run in the GEMV's order (the `linear` kernel's tolerance, not the reference's bits).

`argtopk_f32` is ir/ops/moe.py's transcription of libstdc++'s nth_element / partial_sort / sort in C, so
the order of ties is torch's here too. `softmax` (last axis, f32) and `gather` are lowered here unless
ops.py lowers them.
"""
from __future__ import annotations

import sympy

import ir

from .. import dense_kernel
from .layout import numel
from .lowering import C_OPS, CLowering, Ctx, register_c_op
from .ops import par

ACT = {"silu": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}

MOE = r"""
static inline float moe_act(float v, int act) {
    switch (act) {
    case 0: return v / (1.0f + expf(-v));
    case 1: return v < 0.0f ? 0.0f : v;
    case 2: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    default: {
        const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        return 0.5f * v * (2.0f - 2.0f / (expf(2.0f * u) + 1.0f));
    }
    }
}

/* y[n] = sum over slots j (in order) of w[n, j] * wout[e] (act(gate) * up), [gate; up] = win[e] x[n],
   e = idx[n, j]; scratch: N K (GI + I + H) floats. Every thread of the team calls it. */
static void moe_f32(int par, int *err, const float *x, int64_t N, int64_t H, const int64_t *idx, const float *w,
                    int64_t K, const float *const *win, const float *const *wout, int64_t E, int64_t I, int gated,
                    int act, float *scratch, float *y) {
    const int64_t GI = gated ? 2 * I : I, S = N * K;
    float *hg = scratch, *h = hg + S * GI, *part = h + S * I;
    const int64_t gb = (GI + 15) / 16, ob = (H + 15) / 16;
    {
        SHARE(S * gb);
        for (int64_t b = lo; b < hi; b++) {
            const int64_t s = b / gb, r0 = (b % gb) * 16, r1 = r0 + 16 < GI ? r0 + 16 : GI, e = idx[s];
            if (e < 0 || e >= E) { *err = ERR_INDEX; continue; }
            gemv_rows(x + (s / K) * H, 1, H, win[e], GI, NULL, hg + s * GI, r0, r1);
        }
    }
    _Pragma("omp barrier")
    {
        SHARE(S * I);
        for (int64_t i = lo; i < hi; i++) {
            const int64_t s = i / I, c = i % I;
            const float a = moe_act(hg[s * GI + c], act);
            h[i] = gated ? a * hg[s * GI + I + c] : a;
        }
    }
    _Pragma("omp barrier")
    {
        SHARE(S * ob);
        for (int64_t b = lo; b < hi; b++) {
            const int64_t s = b / ob, r0 = (b % ob) * 16, r1 = r0 + 16 < H ? r0 + 16 : H, e = idx[s];
            if (e < 0 || e >= E) continue;
            gemv_rows(h + s * I, 1, I, wout[e], H, NULL, part + s * H, r0, r1);
        }
    }
    _Pragma("omp barrier")
    {
        SHARE(N * H);
        for (int64_t i = lo; i < hi; i++) {
            const int64_t n = i / H, c = i % H;
            float acc = 0.0f;
            for (int64_t j = 0; j < K; j++) acc += part[(n * K + j) * H + c] * w[n * K + j];
            y[i] = acc;
        }
    }
}
"""

ARGTOPK = r"""
/* torch.topk's CPU order (ir/ops/moe.py): libstdc++'s algorithms over indices, compared by value */
static inline int tk_less(const double *v, int largest, int64_t a, int64_t b) {
    const double x = v[a], y = v[b];
    return largest ? ((isnan(x) && !isnan(y)) || x > y) : ((!isnan(x) && isnan(y)) || x < y);
}
static void tk_insertion(int64_t *q, int64_t first, int64_t last, const double *v, int L) {
    for (int64_t i = first + 1; i < last; i++) {
        const int64_t val = q[i];
        if (tk_less(v, L, val, q[first])) {
            memmove(q + first + 1, q + first, (size_t)(i - first) * sizeof(int64_t));
            q[first] = val;
        } else {
            int64_t j = i;
            while (tk_less(v, L, val, q[j - 1])) { q[j] = q[j - 1]; j--; }
            q[j] = val;
        }
    }
}
static inline void tk_swap(int64_t *q, int64_t a, int64_t b) { const int64_t t = q[a]; q[a] = q[b]; q[b] = t; }
static int64_t tk_pivot(int64_t *q, int64_t first, int64_t last, const double *v, int L) {
    const int64_t a = first + 1, b = first + (last - first) / 2, c = last - 1;
    int64_t m;
    if (tk_less(v, L, q[a], q[b])) m = tk_less(v, L, q[b], q[c]) ? b : (tk_less(v, L, q[a], q[c]) ? c : a);
    else if (tk_less(v, L, q[a], q[c])) m = a;
    else if (tk_less(v, L, q[b], q[c])) m = c;
    else m = b;
    tk_swap(q, first, m);
    int64_t lo = first + 1, hi = last;
    const int64_t pivot = q[first];
    for (;;) {
        while (tk_less(v, L, q[lo], pivot)) lo++;
        hi--;
        while (tk_less(v, L, pivot, q[hi])) hi--;
        if (!(lo < hi)) return lo;
        tk_swap(q, lo, hi);
        lo++;
    }
}
static void tk_adjust(int64_t *q, int64_t first, int64_t hole, int64_t n, int64_t value, const double *v, int L) {
    const int64_t top = hole;
    int64_t child = hole;
    while (child < (n - 1) / 2) {
        child = 2 * (child + 1);
        if (tk_less(v, L, q[first + child], q[first + child - 1])) child--;
        q[first + hole] = q[first + child];
        hole = child;
    }
    if ((n & 1) == 0 && child == (n - 2) / 2) {
        child = 2 * (child + 1);
        q[first + hole] = q[first + child - 1];
        hole = child - 1;
    }
    int64_t parent = (hole - 1) / 2;
    while (hole > top && tk_less(v, L, q[first + parent], value)) {
        q[first + hole] = q[first + parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    q[first + hole] = value;
}
static void tk_pop(int64_t *q, int64_t first, int64_t last, int64_t result, const double *v, int L) {
    const int64_t value = q[result];
    q[result] = q[first];
    tk_adjust(q, first, 0, last - first, value, v, L);
}
static void tk_heap_select(int64_t *q, int64_t first, int64_t middle, int64_t last, const double *v, int L) {
    const int64_t n = middle - first;
    if (n >= 2)
        for (int64_t p = (n - 2) / 2; p >= 0; p--) tk_adjust(q, first, p, n, q[first + p], v, L);
    for (int64_t i = middle; i < last; i++)
        if (tk_less(v, L, q[i], q[first])) tk_pop(q, first, middle, i, v, L);
}
static void tk_partial_sort(int64_t *q, int64_t first, int64_t middle, int64_t last, const double *v, int L) {
    tk_heap_select(q, first, middle, last, v, L);
    while (middle - first > 1) { middle--; tk_pop(q, first, middle, middle, v, L); }
}
static int tk_lg(int64_t n) { int r = -1; while (n) { n >>= 1; r++; } return r; }
static void tk_introsort(int64_t *q, int64_t first, int64_t last, int depth, const double *v, int L) {
    while (last - first > 16) {
        if (depth == 0) { tk_partial_sort(q, first, last, last, v, L); return; }
        depth--;
        const int64_t cut = tk_pivot(q, first, last, v, L);
        tk_introsort(q, cut, last, depth, v, L);
        last = cut;
    }
}
static void tk_nth(int64_t *q, int64_t first, int64_t nth, int64_t last, const double *v, int L) {
    if (first == last || nth == last) return;
    int depth = tk_lg(last - first) * 2;
    while (last - first > 3) {
        if (depth == 0) { tk_heap_select(q, first, nth + 1, last, v, L); tk_swap(q, first, nth); return; }
        depth--;
        const int64_t cut = tk_pivot(q, first, last, v, L);
        if (cut <= nth) first = cut; else last = cut;
    }
    tk_insertion(q, first, last, v, L);
}

/* x [outer, n, inner] -> y [outer, k, inner]: the indices torch.topk(row, k, largest, sorted) gives for each
   row along the middle axis; scratch: rows x n (double + int64) */
static void argtopk_f32(int par, const float *x, int64_t rows, int64_t n, int64_t inner, int64_t k, int largest,
                        int sorted, char *scratch, int64_t *y) {
    SHARE(rows);
    for (int64_t r = lo; r < hi; r++) {
        const int64_t o = r / inner, c = r % inner;
        double *v = (double *)(scratch + r * n * 16);
        int64_t *q = (int64_t *)(v + n);
        for (int64_t i = 0; i < n; i++) { v[i] = x[(o * n + i) * inner + c]; q[i] = i; }
        if (k == 0) continue;
        if (k * 64 <= n) tk_partial_sort(q, 0, k, n, v, largest);
        else {
            tk_nth(q, 0, k - 1, n, v, largest);
            if (sorted && k - 1 > 0) { tk_introsort(q, 0, k - 1, tk_lg(k - 1) * 2, v, largest); tk_insertion(q, 0, k - 1, v, largest); }
        }
        for (int64_t i = 0; i < k; i++) y[(o * k + i) * inner + c] = q[i];
    }
}
"""

SOFTMAX = r"""
/* softmax over the last axis (the reference's: max, exp(x - max), / sum; a NaN max makes the row NaN) */
static void softmax_f32(int par, const float *x, int64_t rows, int64_t n, float *y) {
    SHARE(rows);
    for (int64_t r = lo; r < hi; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n, m = -INFINITY, s = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            if (isnan(xr[i])) m = xr[i];
            else if (!isnan(m) && xr[i] > m) m = xr[i];
        }
        for (int64_t i = 0; i < n; i++) { yr[i] = expf(xr[i] - m); s += yr[i]; }
        for (int64_t i = 0; i < n; i++) yr[i] = yr[i] / s;
    }
}
"""


@register_c_op("moe")
def _moe(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if node.type.dtype.name != "f32" or ctx.types[1].dtype.name != "i64":
        return None
    x, _, _ = ctx.contiguous(0), ctx.contiguous(1), ctx.contiguous(2)
    E = (len(node.operands) - 3) // 2
    for j in range(3, len(node.operands)):
        ctx.contiguous(j)
    N, H, K = numel(x.shape[:-1]), x.shape[-1], ctx.layout(1).shape[-1]
    I = ctx.layout(3 + E).shape[1]
    gated = bool(node.attrs["gated"])
    GI = 2 * I if gated else I
    win = ", ".join(f"x{3 + e}" for e in range(E))
    wout = ", ".join(f"x{3 + E + e}" for e in range(E))
    body = (f"const float *win[{E}] = {{{win}}};\nconst float *wout[{E}] = {{{wout}}};\n"
            f"moe_f32(par, err, x0, {ctx.c(N)}, {ctx.c(H)}, x1, x2, {ctx.c(K)}, win, wout, {E}, {ctx.c(I)}, "
            f"{int(gated)}, {ACT[node.attrs['act']]}, (float *)scratch, y);")
    return CLowering(body, team=(dense_kernel.TEAM, MOE), all_threads=True,
                     scratch=sympy.expand(4 * N * K * (GI + I + H)), work=sympy.expand(N * K * (GI + I) * H))


@register_c_op("argtopk")
def _argtopk(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    t = ctx.types[0]
    if t.dtype.name != "f32":
        return None
    x = ctx.contiguous(0)
    ax = node.attrs["dim"] % t.rank
    n, k, inner = x.shape[ax], node.attrs["k"], numel(x.shape[ax + 1:])
    rows = sympy.expand(numel(x.shape[:ax]) * inner)
    body = (f"argtopk_f32(par, x0, {ctx.c(rows)}, {ctx.c(n)}, {ctx.c(inner)}, {k}, {int(node.attrs['largest'])}, "
            f"{int(node.attrs['sorted'])}, (char *)scratch, y);")
    return CLowering(body, team=(ARGTOPK,), scratch=sympy.expand(16 * rows * n), work=sympy.expand(rows * n * 8))


if "softmax" not in C_OPS:
    @register_c_op("softmax")
    def _softmax(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
        t = ctx.types[0]
        if t.dtype.name != "f32" or node.attrs["dim"] % t.rank != t.rank - 1:
            return None
        x = ctx.contiguous(0)
        return CLowering(f"softmax_f32(par, x0, {ctx.c(numel(x.shape[:-1]))}, {ctx.c(x.shape[-1])}, y);",
                         team=(SOFTMAX,), work=sympy.expand(8 * numel(x.shape)))


if "gather" not in C_OPS:
    @register_c_op("gather")
    def _gather(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
        """The last axis of contiguous x and index (the router's top-k values)."""
        xt, it = ctx.types
        if ctx.ctype() is None or it.dtype.name not in ("i64", "i32") or node.attrs["dim"] % xt.rank != xt.rank - 1:
            return None
        x, i = ctx.contiguous(0), ctx.contiguous(1)
        if any(not (sympy.simplify(a - b) == 0) for a, b in zip(x.shape[:-1], i.shape[:-1])):
            return None  # torch crops x off the axis: not this lowering's case
        n, k = x.shape[-1], i.shape[-1]
        body = (f"SHARE({ctx.c(numel(i.shape))});\nfor (int64_t r = lo; r < hi; r++) {{\n"
                f"    const int64_t t = wrap((int64_t)x1[r], {ctx.c(n)});\n"
                f"    if (t < 0) {{ *err = ERR_INDEX; continue; }}\n"
                f"    y[r] = x0[(r / {par(ctx, k)}) * {par(ctx, n)} + t];\n}}")
        return CLowering(body)
