"""Layout: fold channel permutations (`take` of a weight index along the last axis) into the weights.

    %h = rms_norm(%x, @norm.w)                   %h = rms_norm(%x, @norm.w)      (@norm.w, @x's producers'
    %hp = take(%h, @perm) {axis = -1}    ->      %y = linear(%h, @fc.w)           weights permuted by perm)
    %y = linear(%hp, @fc.w)

A permutation of an activation's channels is free when every tensor that carries those channels
can be stored in the permuted order instead. `channel_space` finds that set by dataflow: the
tensors (values and weight axes) whose last axis must be permuted together so that nothing
outside them changes; it stops at graph inputs and outputs, at ops that mix or reshape channels
(an attention-head reshape), and at other `take`s. Permuting a space by p turns every value in it
into value[..., p], so a `take(v, idx)` of a value v in the space becomes `take(v, p⁻¹[idx])`,
and disappears when that is the identity. The pass picks p as the index of a take that permutes
the whole space, so the space's takes vanish; it repeats until no take can be removed.

Decisions (which permutation) belong to the passes that insert the takes (bfp's outlier
rearrangement); this pass only moves them into storage. Takes left in place (their space reaches a
graph input or output, or their index is not a weight) are reported on stderr. Error contract:
the folded graph computes the same values up to the order of float sums over the channels.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

import ir

from .base import Pass, register_pass

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


def _take(n, ts, hit, C):  # along the hit axis: a boundary (its index absorbs the order); else elementwise
    if hit[0] == 1:
        return None
    ax = hit[1]
    if n.attrs["axis"] % ts[n.operands[0]].rank == ax:
        return {hit}
    return {(0, ax), (-1, ax)}


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
    "take": _take,
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
    is old channel perm[j]): every parameter axis of the space is permuted and the text is unchanged.
    Each value of the space is then permuted too, so the graph computes what `g` computes (up to the
    order of float sums over channels) when no take reads a space: `fold` rewrites those."""
    g = g.copy()
    for space, perm in perms:
        _permute_weights(g, space, perm)
    return g


def _permute_weights(g: ir.Graph, space: ChannelSpace, perm: np.ndarray) -> None:
    assert sorted(perm) == list(range(space.size)), "not a permutation of the space's channels"
    for ref, axis in sorted(space.members):
        if ref[0] == "@":
            g.weights[ref[1:]] = np.ascontiguousarray(np.take(g.weights[ref[1:]], perm, axis=axis))


# -- the pass -----------------------------------------------------------------------------------
def _channel_take(n: ir.Node, types: dict[str, ir.TensorType], g: ir.Graph) -> np.ndarray | None:
    """The index of a take along the (static) last axis of a value or a weight by a 1-D weight, else None."""
    if n.op != "take" or n.operands[1][0] != "@" or n.operands[1][1:] not in g.weights:
        return None
    x = types[n.operands[0]]
    if n.attrs["axis"] % x.rank != _last(x) or not isinstance(x.shape[-1], int):
        return None
    return np.asarray(g.weights[n.operands[1][1:]]).astype(np.int64) % x.shape[-1]


def _along_last(m: ir.Node, types: dict[str, ir.TensorType]) -> bool:
    return m.op == "take" and m.attrs["axis"] % types[m.operands[0]].rank == _last(types[m.operands[0]])


def _is_perm(idx: np.ndarray, C: int) -> bool:
    return idx.shape == (C,) and bool((np.sort(idx) == np.arange(C)).all())


def fold(g: ir.Graph) -> tuple[ir.Graph, list[str]]:
    """`g` with every foldable take folded into the weights, and the takes that stay (by node name)."""
    g = g.copy()
    changed = True
    while changed:  # each round removes at least one take
        changed = False
        types, users = g.types(), g.users()
        for n in g.nodes:
            idx = _channel_take(n, types, g)
            if idx is None or not _is_perm(idx, types[n.operands[0]].shape[-1]):
                continue
            space = channel_space(g, n.operands[0], types, users)
            if space is None:
                continue
            takes = [m for m in g.nodes if _along_last(m, types) and (m.operands[0], _last(types[m.operands[0]])) in space.members]
            if any(_channel_take(m, types, g) is None for m in takes):
                continue  # a take by a computed index would read the permuted value
            _fold_space(g, space, idx, takes, types)
            changed = True
            break  # the graph changed: recompute types, users and spaces
    types = g.types()
    return g, [n.name for n in g.nodes if n.op == "take" and _along_last(n, types)]


def _fold_space(g: ir.Graph, space: ChannelSpace, p: np.ndarray, takes: list[ir.Node],
                types: dict[str, ir.TensorType]) -> None:
    """Permute `space` by p; each take of it by idx becomes a take by p⁻¹[idx], or goes if that is the identity."""
    inv, old = np.argsort(p), {m.operands[1][1:] for m in takes}
    indices = [_channel_take(m, types, g) for m in takes]
    _permute_weights(g, space, p)
    for m, idx in zip(takes, indices):
        q = inv[idx]
        if q.shape == (space.size,) and (q == np.arange(space.size)).all():
            g.replace_uses(m.ref, m.operands[0])
            g.nodes.remove(m)
        else:
            name = g.fresh_param(m.operands[1][1:] + ".folded")
            g.params[name] = ir.TensorType(ir.dtype("i64"), q.shape)
            g.weights[name] = q
            m.operands = (m.operands[0], "@" + name)
    used = {o for n in g.nodes for o in n.operands}
    for name in old - {u[1:] for u in used}:
        del g.params[name]
        g.weights.pop(name, None)


@register_pass
@dataclass(frozen=True)
class FoldPermutations(Pass):
    """Fold channel permutations (`take` along the last axis by a weight index) into the weights of
    every tensor that carries those channels; see the module docstring. Takes that cannot be folded
    stay, and are reported."""

    name = "fold_permutations"

    def run(self, g: ir.Graph) -> ir.Graph:
        g, stay = fold(g)
        if stay:
            print(f"fold_permutations: {len(stay)} take(s) left in place (their channels reach a graph input "
                  f"or output, or an op that mixes channels): {', '.join('%' + s for s in stay[:5])}"
                  f"{' ...' if len(stay) > 5 else ''}", file=sys.stderr)
        return g
