"""Block floating point with outlier rearrangement: W ≈ mant · 2^exp, one exponent per block of columns.

Rearrangement is a compile-time permutation of the channels of an activation, folded into the
weights so that it costs nothing at inference. `channel_spaces` finds, by dataflow, the sets of
tensors whose last axis must be permuted together; `permute_channels` folds a permutation into
a space (exact up to the order of float sums); `outlier_order` chooses it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, linear_input_moments, padded_groups, quantize_linears, select_linears
from .base import Pass, PassContext, register_pass

E_MIN, E_MAX = -128, 127  # the i8 exponent range


# -- the quantizer ------------------------------------------------------------------------------
def block_exponents(amax: np.ndarray, qmax: int) -> np.ndarray:
    """The smallest e in [-128, 127] with amax <= qmax · 2^e, per block (-128 for an all-zero block)."""
    safe = np.where(amax > 0, amax, 1.0)
    e = np.clip(np.ceil(np.log2(safe / qmax)), E_MIN - 2, E_MAX + 2).astype(np.int32)
    e = np.where(amax > np.ldexp(float(qmax), e), e + 1, e)  # log2 may round across a power of two
    e = np.where(amax <= np.ldexp(float(qmax), e - 1), e - 1, e)
    return np.clip(np.where(amax > 0, e, E_MIN), E_MIN, E_MAX)


def bfp(W: np.ndarray, block: int, mbits: int) -> Quantized:
    """Mantissas rint(W / 2^e) in [-(2^(mbits-1) - 1), 2^(mbits-1) - 1] (symmetric), e from
    `block_exponents`: exact in f64, so |W - mant · 2^e| <= 2^(e-1) for every weight."""
    qmax = 2 ** (mbits - 1) - 1
    Wb, _ = padded_groups(W.astype(np.float64), block)
    amax = np.abs(Wb).max(-1)
    if amax.max(initial=0.0) > np.ldexp(float(qmax), E_MAX):
        raise ir.PassError(f"bfp: a weight of magnitude {amax.max():.3g} needs an exponent above {E_MAX}; use more mbits")
    e = block_exponents(amax, qmax)
    m = np.rint(np.ldexp(Wb, -e[..., None])).reshape(W.shape[0], -1)[:, : W.shape[1]]
    dt = DTYPES[f"i{mbits}"] if f"i{mbits}" in DTYPES else DTYPES["i8"]
    return Quantized("dequant_bfp", {"mant": (m.astype(np.int8), dt), "exp": (e.astype(np.int8), DTYPES["i8"])},
                     {"block": block})


# -- channel spaces -----------------------------------------------------------------------------
Slot = tuple[int, int]  # (operand index, -1 for the result; an axis of that tensor)


@dataclass(frozen=True)
class ChannelSpace:
    """Tensors (`%value` or `@param`, axis) whose `axis` carries the same `size` channels in the same
    order: permuting all of them together leaves every value outside the space unchanged."""

    size: int
    members: frozenset[tuple[str, int]]

    def readers(self, g: ir.Graph) -> list[str]:
        """Weights (names) of the linear layers that read the space: their columns are its channels."""
        return [n.operands[1][1:] for n in g.nodes if n.op == "linear" and (n.operands[1], 1) in self.members]


def _last(t: ir.TensorType) -> int:
    return t.rank - 1


# Which slots of a node carry one channel axis, given the slot `hit` known to carry it; None: the
# node mixes or reshapes channels, so the space cannot be permuted.
Rule = Callable[[ir.Node, dict[str, ir.TensorType], Slot, int], "set[Slot] | None"]


def _pick(*groups: set[Slot]) -> Callable[[Slot], set[Slot] | None]:
    return lambda hit: next((gr for gr in groups if hit in gr), None)


def _linear(n, ts, hit, C):  # y = x W^T + b: x's channels are W's columns, y's are W's rows and b's
    bias = {(2, 0)} if len(n.operands) == 3 else set()
    return _pick({(0, _last(ts[n.operands[0]])), (1, 1)}, {(-1, _last(n.type)), (1, 0)} | bias)(hit)


def _embedding(n, ts, hit, C):  # a row of the table per token: its columns are the result's channels
    return _pick({(0, 1), (-1, _last(n.type))})(hit)


def _unary(n, ts, hit, C):  # elementwise
    return _pick({(0, _last(ts[n.operands[0]])), (-1, _last(n.type))})(hit)


def _binary(n, ts, hit, C):  # elementwise; an operand of last dim 1 (or a scalar) broadcasts over the channels
    return _pick({(k, _last(ts[o])) for k, o in enumerate(n.operands) if ts[o].rank and ts[o].shape[-1] == C}
                 | {(-1, _last(n.type))})(hit)


def _norm(n, ts, hit, C):  # layer_norm / rms_norm over the last axis: statistics ignore the order
    if n.attrs["axes"] != 1:
        return None
    return _pick({(0, _last(ts[n.operands[0]])), (-1, _last(n.type))} | {(k, 0) for k in range(1, len(n.operands))})(hit)


def _reduce(n, ts, hit, C):  # a sum, mean or max over the channels does not see their order
    t = ts[n.operands[0]]
    if _last(t) in ir.OPS[n.op].axes(t, n.attrs):  # type: ignore[attr-defined]
        return _pick({(0, _last(t))})(hit)
    return _pick({(0, _last(t)), (-1, _last(n.type))})(hit)


UNARY = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf", "sigmoid", "silu",
         "relu", "gelu", "cast")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
CHANNEL_RULES: dict[str, Rule] = {
    "linear": _linear,
    "embedding": _embedding,
    **{op: _unary for op in UNARY},
    **{op: _binary for op in BINARY},
    **{op: _reduce for op in ("sum", "mean", "amax", "amin")},
    "layer_norm": _norm,
    "rms_norm": _norm,
}


def channel_space(g: ir.Graph, start: str, types: dict[str, ir.TensorType] | None = None,
                  users: dict[str, list[ir.Node]] | None = None, seen: set | None = None) -> ChannelSpace | None:
    """The channel space of the last axis of value `start`, or None when it cannot be permuted:
    it reaches a graph input or output, a parameter without weights, or an op outside
    `CHANNEL_RULES` (a reshape of attention heads, say). Items visited are added to `seen`."""
    types = types if types is not None else g.types()
    users = users if users is not None else g.users()
    producer = {n.ref: n for n in g.nodes}
    C = types[start].shape[-1] if types[start].rank else None
    if not isinstance(C, int) or C < 2:
        return None
    members = {(start, _last(types[start]))}
    work = list(members)
    while work:
        ref, axis = item = work.pop()
        if seen is not None:
            seen.add(item)
        if types[ref].shape[axis] != C or ref in g.outputs or (ref[0] == "@" and ref[1:] not in g.weights):
            return None
        if ref[0] == "%" and ref not in producer:
            return None  # a graph input
        touching = [(producer[ref], (-1, axis))] if ref[0] == "%" else []
        touching += [(n, (k, axis)) for n in users.get(ref, []) for k, o in enumerate(n.operands) if o == ref]
        for n, hit in touching:
            rule = CHANNEL_RULES.get(n.op)
            slots = rule(n, types, hit, C) if rule else None
            if slots is None:
                return None
            for k, ax in slots:
                new = (n.ref if k < 0 else n.operands[k], ax)
                if new not in members:
                    members.add(new)
                    work.append(new)
    return ChannelSpace(C, frozenset(members))


def channel_spaces(g: ir.Graph, weights: set[str] | None = None) -> list[ChannelSpace]:
    """The permutable channel spaces of the inputs of linear layers (of those with weights in
    `weights`, when given), each once, in graph order."""
    types, users = g.types(), g.users()
    out: list[ChannelSpace] = []
    seen: set[tuple[str, int]] = set()
    for n in g.nodes:
        if n.op != "linear" or (weights is not None and n.operands[1][1:] not in weights):
            continue
        x = n.operands[0]
        if (x, _last(types[x])) in seen:
            continue
        sp = channel_space(g, x, types, users, seen)
        if sp is not None:
            out.append(sp)
    return out


def permute_channels(g: ir.Graph, perms: list[tuple[ChannelSpace, np.ndarray]]) -> ir.Graph:
    """A copy of `g` whose channels in each space are reordered by its permutation (new channel j
    is old channel perm[j]): every parameter axis of the space is permuted, the text is unchanged,
    and the graph computes what `g` computes (up to the order of float sums over channels)."""
    g = g.copy()
    for space, perm in perms:
        assert sorted(perm) == list(range(space.size)), "not a permutation of the space's channels"
        for ref, axis in sorted(space.members):
            if ref[0] == "@":
                g.weights[ref[1:]] = np.ascontiguousarray(np.take(g.weights[ref[1:]], perm, axis=axis))
    return g


def outlier_order(g: ir.Graph, space: ChannelSpace, weights: set[str],
                  moments: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Channels by decreasing outlier score, so that outliers share blocks. A channel's score sums,
    over the space's readers in `weights`, its column absmax max_o |W[o, j]| (with `moments`:
    E[x_j^2] · ||W[:, j]||), each reader's scores divided by their mean so that layers weigh alike."""
    score = np.zeros(space.size)
    for w in space.readers(g):
        if w not in weights:
            continue
        A = np.abs(g.weights[w].astype(np.float64))
        col = A.max(0) if moments is None else moments[w] * np.linalg.norm(A, axis=0)
        score += col / col.mean() if col.mean() > 0 else 0.0
    return np.argsort(-score, kind="stable")


def rearrange(g: ir.Graph, weights: set[str], moments: dict[str, np.ndarray] | None = None) -> ir.Graph:
    """Fold `outlier_order` into every channel space read by a linear whose weight is in `weights`."""
    spaces = channel_spaces(g, weights)
    return permute_channels(g, [(sp, outlier_order(g, sp, weights, moments)) for sp in spaces])


# -- the pass -----------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class Bfp(Pass):
    """Block floating point: W[o, i] = mant[o, i] · 2^exp[o, i // block], i8 exponents, `mbits`-bit
    mantissas, after an optional outlier rearrangement of input channels.

    Each block's exponent is the smallest for which its absmax fits the symmetric mantissa range
    ±(2^(mbits-1) - 1); mantissas round to nearest. Error contract: |W - Ŵ| <= 2^(exp-1), half a
    mantissa step, for every weight. Bits per weight: mbits + 8 / block.

    `rearrange`: before quantizing, the input channels of every linear are permuted so that
    outlier channels (by column absmax, or E[x_j^2] · ||W[:, j]|| when the pipeline has calibration
    data) share blocks instead of inflating the exponents of many. The permutation is folded into
    the weights wherever the activation's channels flow (see `channel_spaces`): on a Llama that is
    the whole residual stream, one permutation for all layers (embedding columns, o_proj and
    down_proj rows, every RMSNorm weight, the final norm, the lm_head columns; a tied embedding is
    one parameter and stays consistent), and each MLP's intermediate (gate_proj and up_proj rows,
    down_proj columns). The attention output (o_proj's input) comes from a reshape of the heads and
    keeps its order. Without quantization the rearranged graph computes the same outputs up to the
    order of float sums.
    """

    name = "bfp"
    block: int = 32
    mbits: int = 8
    rearrange: bool = True
    layers: str = "*"
    head: bool = False

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        if not 2 <= self.mbits <= 8:
            raise ir.PassError(f"bfp: mbits must be 2..8, got {self.mbits}")
        if self.block < 1:
            raise ir.PassError(f"bfp: block must be >= 1, got {self.block}")
        if self.rearrange:
            weights = {w for _, w in select_linears(g, self.layers, self.head)}
            moments = (linear_input_moments(g, ctx.calibration, weights, ctx.progress)
                       if ctx.calibration and weights else None)
            g = rearrange(g, weights, moments)

        def quantize(name: str, W: np.ndarray) -> Quantized:
            if not np.isfinite(W).all():
                raise ir.PassError(f"bfp: @{name} has non-finite weights")
            return bfp(W, self.block, self.mbits)

        return quantize_linears(g, quantize, desc=f"bfp{self.mbits}", layers=self.layers, head=self.head,
                                progress=ctx.progress)
