"""Mixture-of-experts routing: `argtopk` (the router's choice) and `moe` (the selected experts' FFNs).

A Hugging Face MoE block imports as plain ops for the router, then one `moe` node:

    %logits = linear(%x, @mlp.gate.weight)                      # [T, E]
    %probs  = softmax(%logits) {dim = -1}
    %idx    = argtopk(%probs) {k = 2, dim = -1}                 # i64 [T, 2]: torch.topk's indices
    %top    = gather(%probs, %idx) {dim = -1}                   # torch.topk's values
    %w      = div(%top, sum(%top))                              # Mixtral renormalises; others differ
    %y      = moe(%x, %idx, %w, @experts.0.gate_up_proj, ..., @experts.0.down_proj, ...) {act = "silu"}

Each expert's weights are ordinary 2-D operands [out, in], so weight passes see them as they see a
linear's, and a backend computes only the experts a token selected.
"""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import DTYPES, bool_
from ..shapes import TensorType, normalize_axis
from .base import Attr, TOPK, Cost, OpDef, float_only, need, reads, register_op


# -- torch.topk's order, ties included ---------------------------------------------------------------
# torch's CPU topk (aten/src/ATen/native/TopKImpl.h) fills a queue of (value, index) pairs and runs
# std::partial_sort when k * 64 <= n, else std::nth_element and, when sorted, std::sort of the first
# k - 1; the comparator ranks NaN above everything. Equal values come out in whatever order those
# libstdc++ algorithms leave them, so the order of ties is theirs: the functions below are libstdc++'s
# (bits/stl_algo.h, bits/stl_heap.h) transcribed, moving indices and comparing their values.
_THRESHOLD = 16  # libstdc++'s _S_threshold


def _lg(n: int) -> int:
    return n.bit_length() - 1


def _insertion_sort(q: list[int], first: int, last: int, less) -> None:
    for i in range(first + 1, last):
        v = q[i]
        if less(v, q[first]):
            q[first + 1:i + 1] = q[first:i]
            q[first] = v
        else:
            j = i
            while less(v, q[j - 1]):
                q[j] = q[j - 1]
                j -= 1
            q[j] = v


def _move_median_to_first(q: list[int], result: int, a: int, b: int, c: int, less) -> None:
    if less(q[a], q[b]):
        m = b if less(q[b], q[c]) else (c if less(q[a], q[c]) else a)
    elif less(q[a], q[c]):
        m = a
    elif less(q[b], q[c]):
        m = c
    else:
        m = b
    q[result], q[m] = q[m], q[result]


def _partition_pivot(q: list[int], first: int, last: int, less) -> int:
    _move_median_to_first(q, first, first + 1, first + (last - first) // 2, last - 1, less)
    lo, hi, pivot = first + 1, last, q[first]
    while True:
        while less(q[lo], pivot):
            lo += 1
        hi -= 1
        while less(pivot, q[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        q[lo], q[hi] = q[hi], q[lo]
        lo += 1


def _adjust_heap(q: list[int], first: int, hole: int, n: int, value: int, less) -> None:
    top, child = hole, hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if less(q[first + child], q[first + child - 1]):
            child -= 1
        q[first + hole] = q[first + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        q[first + hole] = q[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # __push_heap
    while hole > top and less(q[first + parent], value):
        q[first + hole] = q[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    q[first + hole] = value


def _pop_heap(q: list[int], first: int, last: int, result: int, less) -> None:
    value = q[result]
    q[result] = q[first]
    _adjust_heap(q, first, 0, last - first, value, less)


def _heap_select(q: list[int], first: int, middle: int, last: int, less) -> None:
    n = middle - first
    if n >= 2:  # __make_heap
        for parent in range((n - 2) // 2, -1, -1):
            _adjust_heap(q, first, parent, n, q[first + parent], less)
    for i in range(middle, last):
        if less(q[i], q[first]):
            _pop_heap(q, first, middle, i, less)


def _partial_sort(q: list[int], first: int, middle: int, last: int, less) -> None:
    _heap_select(q, first, middle, last, less)
    while middle - first > 1:  # __sort_heap
        middle -= 1
        _pop_heap(q, first, middle, middle, less)


def _introsort_loop(q: list[int], first: int, last: int, depth: int, less) -> None:
    while last - first > _THRESHOLD:
        if depth == 0:
            _partial_sort(q, first, last, last, less)
            return
        depth -= 1
        cut = _partition_pivot(q, first, last, less)
        _introsort_loop(q, cut, last, depth, less)
        last = cut


def _sort(q: list[int], first: int, last: int, less) -> None:
    if first != last:
        _introsort_loop(q, first, last, _lg(last - first) * 2, less)
        _insertion_sort(q, first, last, less)  # __final_insertion_sort: the same result


def _nth_element(q: list[int], first: int, nth: int, last: int, less) -> None:
    if first == last or nth == last:
        return
    depth = _lg(last - first) * 2
    while last - first > 3:
        if depth == 0:
            _heap_select(q, first, nth + 1, last, less)
            q[first], q[nth] = q[nth], q[first]
            return
        depth -= 1
        cut = _partition_pivot(q, first, last, less)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(q, first, last, less)


def torch_topk_row(row: list[float], k: int, largest: bool = True, sorted_: bool = True) -> list[int]:
    """The indices torch.topk gives on the CPU for one row (the order of ties included)."""
    n = len(row)
    if k == 0:
        return []
    nan = [math.isnan(v) for v in row]
    if largest:
        def less(a: int, b: int) -> bool:
            return (nan[a] and not nan[b]) or row[a] > row[b]
    else:
        def less(a: int, b: int) -> bool:
            return (not nan[a] and nan[b]) or row[a] < row[b]
    q = list(range(n))
    if k * 64 <= n:
        _partial_sort(q, 0, k, n, less)
    else:
        _nth_element(q, 0, k - 1, n, less)
        if sorted_:
            _sort(q, 0, k - 1, less)
    return q[:k]


def torch_topk(x: np.ndarray, k: int, largest: bool = True, sorted_: bool = True) -> np.ndarray:
    """i64 [..., k]: torch.topk(x, k, -1, largest, sorted).indices on the CPU. Rows whose values are
    distinct have one answer (sorted) and take a vectorised path; rows with ties run libstdc++'s steps."""
    lead, n = x.shape[:-1], x.shape[-1]
    xf = x.reshape(math.prod(lead), n).astype(np.float64)  # exact for every dtype topk takes (ints within 2**53)
    out = np.empty((xf.shape[0], k), np.int64)
    if xf.shape[0] == 0 or k == 0:
        return out.reshape(lead + (k,))
    isnan = np.isnan(xf)
    srt = np.sort(np.where(isnan, np.inf, xf), axis=-1)
    ties = (srt[:, 1:] == srt[:, :-1]).any(-1) if n > 1 else np.zeros(len(xf), bool)
    ties |= isnan.sum(-1) > 1  # NaNs tie with each other (and +inf sorts with them here)
    fast = ~ties if sorted_ or k * 64 <= n else np.zeros(len(xf), bool)
    if fast.any():
        key = -xf[fast] if largest else xf[fast]
        nan_rank = ~isnan[fast] if largest else isnan[fast]  # NaN counts as the largest value
        out[fast] = np.lexsort((key, nan_rank), axis=-1)[:, :k]
    for r in np.flatnonzero(~fast):
        out[r] = torch_topk_row(xf[r].tolist(), k, largest, sorted_)
    return out.reshape(lead + (k,))


@register_op
class Argtopk(OpDef):
    name = "argtopk"
    operands = ("x",)
    attrs = {"k": Attr("int", bounds=TOPK), "dim": Attr("int", -1), "largest": Attr("bool", True), "sorted": Attr("bool", True)}
    doc = ("i64 indices of the k largest (smallest) entries along dim: torch.topk(x, k, dim, largest, sorted)"
           ".indices, NaN ranking above everything, ties in the order torch's CPU kernel gives them (libstdc++'s "
           "nth_element/partial_sort/sort); the values are gather(x, argtopk(x))")

    def infer(self, ins, attrs):
        t = ins[0]
        need(t.dtype != bool_ and not t.dtype.packed, f"argtopk needs a numeric operand, got {t}")
        need(t.rank >= 1, f"argtopk needs at least one axis, got {t}")
        ax = normalize_axis(attrs["dim"], t.rank)
        k, n = attrs["k"], t.shape[ax]
        need(k >= 0 and (not isinstance(n, int) or k <= n), f"argtopk: k = {k} is outside [0, {n}] for {t}")
        return TensorType(DTYPES["i64"], tuple(k if i == ax else d for i, d in enumerate(t.shape)))

    def reference(self, ins, attrs):
        x = ins[0]
        ax = attrs["dim"] % x.ndim
        if attrs["k"] > x.shape[ax]:
            raise ValueError(f"argtopk: k = {attrs['k']} is larger than dim {ax} of {list(x.shape)}")
        out = torch_topk(np.moveaxis(x, ax, -1), attrs["k"], attrs["largest"], attrs["sorted"])
        return np.ascontiguousarray(np.moveaxis(out, -1, ax))


# -- the experts --------------------------------------------------------------------------------------
ACTS = ("silu", "gelu", "gelu_tanh", "relu")


def activation(h: np.ndarray, act: str) -> np.ndarray:
    """The expert's activation on f32 values, as the elementwise ops define it."""
    from . import OPS

    if act in ("gelu", "gelu_tanh"):
        return OPS["gelu"].reference([h], {"approximate": "tanh" if act == "gelu_tanh" else "none"})
    return OPS[act].reference([h], {})


def expert_ffn(x: np.ndarray, w_in: np.ndarray, w_out: np.ndarray, act: str, gated: bool) -> np.ndarray:
    """One expert on rows x [n, H] in f32: down(act(gate) * up), gate and up the halves of w_in x (gated),
    else down(act(w_in x))."""
    h = np.matmul(x, w_in.T.astype(np.float32, copy=False))
    if gated:
        i = h.shape[-1] // 2
        h = activation(h[:, :i], act) * h[:, i:]
    else:
        h = activation(h, act)
    return np.matmul(h, w_out.T.astype(np.float32, copy=False))


@register_op
class Moe(OpDef):
    name = "moe"
    operands = ("x", "index", "weight", "experts*")
    attrs = {"act": Attr("str", "silu"), "gated": Attr("bool", True)}
    doc = ("mixture of experts: y[t] = sum over slots j (in order) of weight[t, j] * FFN_e(x[t]), e = index[t, j]; "
           "experts = E input weights w_in[e] ([2I, H] gate;up when gated, else [I, H]) then E output weights "
           "w_out[e] [H, I]; FFN_e(x) = w_out[e] (act(gate) * up), gate/up the halves of w_in[e] x (gated), or "
           "w_out[e] act(w_in[e] x); computed in f32; only the selected experts are computed (Hugging Face's "
           "expert loop: Mixtral, Qwen-MoE, OLMoE)")

    def infer(self, ins, attrs):
        x, idx, w, ex = ins[0], ins[1], ins[2], ins[3:]
        float_only(x, "moe")
        need(attrs["act"] in ACTS, f"moe: act must be one of {', '.join(ACTS)}, got {attrs['act']!r}")
        need(x.rank >= 1, f"moe needs x [..., H], got {x}")
        need(idx.dtype.kind in ("int", "uint") and not idx.dtype.packed, f"moe: index must be an integer tensor, got {idx}")
        need(idx.rank == x.rank and idx.shape[:-1] == x.shape[:-1],
             f"moe: index {idx} must be [..., k] over the tokens of x {x}")
        need(w.dtype == x.dtype and w.shape == idx.shape, f"moe: weight {w} must be {x.dtype} of the index's shape {idx}")
        need(len(ex) >= 2 and len(ex) % 2 == 0, f"moe needs E input then E output weights, got {len(ex)} expert operands")
        E, H = len(ex) // 2, x.shape[-1]
        for e in range(E):
            a, b = ex[e], ex[E + e]
            need(a.dtype == x.dtype and b.dtype == x.dtype and a.rank == 2 and b.rank == 2,
                 f"moe: expert {e}'s weights {a}, {b} must be 2-D {x.dtype}")
            i = b.shape[1]
            gi = 2 * i if attrs["gated"] and isinstance(i, int) else i
            need(a.shape == (gi, H) and b.shape[0] == H,
                 f"moe: expert {e}'s weights {a}, {b} do not fit x {x} ({'gated: ' if attrs['gated'] else ''}needs "
                 f"w_in [{gi}, {H}] and w_out [{H}, {i}])")
        return x

    def reference(self, ins, attrs):
        x, idx, w, ex = ins[0], ins[1], ins[2], ins[3:]
        E, H = len(ex) // 2, x.shape[-1]
        T = math.prod(x.shape[:-1])
        xs = x.reshape(T, H).astype(np.float32)
        ii = idx.reshape(T, idx.shape[-1]).astype(np.int64)
        ws = w.reshape(ii.shape).astype(np.float32)
        if ii.size and (ii.min() < 0 or ii.max() >= E):
            raise ValueError(f"moe: expert index outside [0, {E})")
        parts = np.zeros(ii.shape + (H,), np.float32)  # each slot's expert output, weighted
        for e in np.unique(ii):
            t, j = np.nonzero(ii == e)
            parts[t, j] = expert_ffn(xs[t], ex[e], ex[E + e], attrs["act"], attrs["gated"]) * ws[t, j, None]
        y = np.zeros(xs.shape, np.float32)
        for j in range(ii.shape[1]):  # slots summed in order
            y += parts[:, j]
        return y.reshape(x.shape).astype(x.dtype, copy=False)

    def cost(self, ins, out, attrs):
        """T tokens, k slots: each slot's expert FFN (2 * H * I' for w_in, I' = 2I gated, then the
        activation and gating, 2 * I * H for w_out) and its weighted sum (2 * H). Which experts the router
        picks is known only at run time: each expert weight is priced at min(E, T * k) / E of its bytes
        (exact when every expert is picked, the average otherwise)."""
        x, idx, ex = ins[0], ins[1], ins[3:]
        E, H = len(ex) // 2, x.shape[-1]
        T, k = (x.numel() // H if H else 0), idx.shape[-1]
        i = ex[E].shape[1]
        per_slot = 2 * H * ex[0].shape[0] + (2 * i if attrs["gated"] else i) + 2 * i * H + 2 * H
        share = min(E, T * k) / E
        return Cost(flops=T * k * per_slot, reads=(*reads(ins[:3]), *(int(t.nbytes() * share) for t in ex)),
                    writes=out.nbytes())
