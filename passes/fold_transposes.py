"""Layout: fold transposes into weight storage, so every weight layer is a `linear` over a [out, in] weight.

    %t = permute(@w, [1, 0])          ->  @w stored transposed, %t's uses read @w
    %m = matmul(%x, @w)   (w: [in, out]) ->  %m = linear(%x, @w)   (@w stored as [out, in])
    %y = add(%m, @b)      (m = linear without bias, b: [out])  ->  %y = linear(%x, @w, @b)
    %z = permute(permute(%x, p), q)   ->  permute(%x, p∘q), or %x when that is the identity

GPT-2's Conv1D layers arrive from torch.export as `addmm(b, x, W)` with W stored [in, out], which
the frontend writes as matmul + add. After this pass they are `linear`s like every other model's,
so the quantization passes (which rewrite linear layers) and the backends' linear kernels see them.

Local rewrites, applied in graph order until none applies (see RULES). Weights are rewritten in
storage only when every use of the parameter is rewritten the same way, so a shared parameter is
never stored twice. Error contract: the same values up to the order of float sums (a matmul and a
linear over the transposed weight may sum in another order); bias folding only for f32 and f64,
where linear adds the bias in the same precision as the separate add.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import ir

from .base import Pass, register_pass


class _Ctx:
    """What the rules read: types, users, producers; rebuilt after each rewrite (graphs are small)."""

    def __init__(self, g: ir.Graph):
        self.g, self.types, self.users = g, g.types(), g.users()
        self.producer = {n.ref: n for n in g.nodes}

    def weight(self, ref: str) -> bool:
        return ref[0] == "@" and ref[1:] in self.g.weights

    def only_user(self, ref: str, n: ir.Node) -> bool:
        return ref not in self.g.outputs and [id(u) for u in self.users.get(ref, [])] == [id(n)]


def _store(g: ir.Graph, name: str, a: np.ndarray) -> None:
    g.weights[name] = np.ascontiguousarray(a)
    g.params[name] = ir.TensorType(g.params[name].dtype, a.shape)


def _weight_permute(c: _Ctx, n: ir.Node) -> bool:
    """permute(@w, p) that is @w's only use: store @w permuted."""
    if n.op != "permute" or not c.weight(w := n.operands[0]) or not c.only_user(w, n):
        return False
    _store(c.g, w[1:], np.transpose(c.g.weights[w[1:]], n.attrs["perm"]))
    c.g.replace_uses(n.ref, w)
    c.g.nodes.remove(n)
    return True


def _matmul_by_weight(c: _Ctx, n: ir.Node) -> bool:
    """matmul(x, @w) with w 2-D [in, out] and every use of @w such a matmul: linear over w stored [out, in]."""
    if n.op != "matmul" or not c.weight(w := n.operands[1]) or c.types[w].rank != 2 or c.types[n.operands[0]].rank < 1:
        return False
    uses = c.users[w]
    if w in c.g.outputs or any(u.op != "matmul" or u.operands != (u.operands[0], w) or u.operands[0] == w for u in uses):
        return False
    _store(c.g, w[1:], c.g.weights[w[1:]].T)
    for u in uses:
        u.op = "linear"
    return True


def _bias_add(c: _Ctx, n: ir.Node) -> bool:
    """add(linear(x, w), @b) with b [out] and the linear used only there: linear(x, w, @b)."""
    if n.op != "add" or len(n.operands) != 2:
        return False
    for lin, b in (n.operands, n.operands[::-1]):
        m = c.producer.get(lin)
        if (m is None or m.op != "linear" or len(m.operands) != 2 or not c.only_user(lin, n) or b[0] != "@"
                or m.type.dtype.name not in ("f32", "f64") or c.types[b] != ir.TensorType(m.type.dtype, (m.type.shape[-1],))
                or n.type != m.type):
            continue
        c.g.nodes[c.g.nodes.index(n)] = ir.Node(n.name, "linear", m.operands + (b,), {}, n.type, m.loc or n.loc)
        c.g.nodes.remove(m)
        return True
    return False


def _permute_pair(c: _Ctx, n: ir.Node) -> bool:
    """permute(permute(x, p), q) = permute(x, p[q]); the identity permutation goes."""
    if n.op != "permute":
        return False
    if list(n.attrs["perm"]) == list(range(len(n.attrs["perm"]))):
        c.g.replace_uses(n.ref, n.operands[0])
        c.g.nodes.remove(n)
        return True
    inner = c.producer.get(n.operands[0])
    if inner is None or inner.op != "permute":
        return False
    p, q = inner.attrs["perm"], n.attrs["perm"]
    if c.only_user(inner.ref, n):
        c.g.nodes.remove(inner)
    n.operands, n.attrs = inner.operands, {"perm": [p[i] for i in q]}
    return True


# (rule, why) in the order they are tried on each node
RULES: list[tuple[Callable[[_Ctx, ir.Node], bool], str]] = [
    (_weight_permute, "a transposed weight is stored transposed"),
    (_matmul_by_weight, "x @ W with W [in, out] is linear over W stored [out, in]"),
    (_bias_add, "a bias added after a linear is the linear's bias"),
    (_permute_pair, "two permutes compose; the identity goes"),
]


def fold_transposes(g: ir.Graph) -> ir.Graph:
    """A copy of `g` with RULES applied until none applies."""
    g = g.copy()
    changed = True
    while changed:
        changed = False
        c = _Ctx(g)
        for n in list(g.nodes):
            if any(rule(c, n) for rule, _ in RULES):
                changed = True
                break  # rebuild the context: users and producers changed
    return g


@register_pass
@dataclass(frozen=True)
class FoldTransposes(Pass):
    """Fold transposes into weight storage: matmuls by a weight become linears over the weight
    stored [out, in], a following bias add joins them, permutes of weights are stored permuted,
    and permute pairs compose. See the module docstring for the rules and the error contract."""

    name = "fold_transposes"

    def run(self, g: ir.Graph) -> ir.Graph:
        return fold_transposes(g)
