"""Fusion: the RMSNorm that Hugging Face models spell out in six ops becomes one `rms_norm`.

    %p = pow(%x, %two)                       (or mul(%x, %x))
    %m = mean(%p) {dims = [-1], keepdim = true}
    %a = add(%m, %eps)                       (%two, %eps: scalar `full` constants)
    %r = rsqrt(%a)                     ->    %y = rms_norm(%x, @w) {eps = ..., axes = 1}
    %n = mul(%x, %r)
    %y = mul(@w, %n)

`rms_norm`'s reference computes x * (1 / sqrt(mean(x * x) + eps)) * w in the same order, so the
result is bit-identical; a backend runs one kernel instead of six (at batch 1, each op's call
overhead is most of its cost). Only float32 chains whose intermediate values have no other use
are fused.
"""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


def _scalar(prod: dict[str, ir.Node], ref: str) -> float | None:
    n = prod.get(ref)
    return float(n.attrs["value"]) if n is not None and n.op == "full" and n.type.rank == 0 else None


def _match(n: ir.Node, prod: dict[str, ir.Node], users: dict[str, list[ir.Node]], outputs: set[str]):
    """(x, weight, eps, nodes to remove) when `n` is the final `mul` of an RMSNorm, else None."""
    if n.op != "mul" or n.type.dtype.name != "f32":
        return None

    def only(ref: str, op: str) -> ir.Node | None:  # the producer of ref, if it is `op` and used only once
        m = prod.get(ref)
        return m if m is not None and m.op == op and len(users.get(ref, [])) == 1 and ref not in outputs else None

    for w, nref in (n.operands, n.operands[::-1]):
        norm = only(nref, "mul")
        if w[0] != "@" or norm is None:
            continue
        for x, rref in (norm.operands, norm.operands[::-1]):
            r = only(rref, "rsqrt")
            a = r and only(r.operands[0], "add")
            if a is None:
                continue
            for mref, eref in (a.operands, a.operands[::-1]):
                m, eps = only(mref, "mean"), _scalar(prod, eref)
                if m is None or eps is None or not m.attrs["keepdim"]:
                    continue
                t = m.type.rank - 1 if m.type.rank else 0
                if [d % max(m.type.rank, 1) for d in m.attrs["dims"]] != [t]:
                    continue
                p = only(m.operands[0], "pow") or only(m.operands[0], "mul")
                if p is not None and ((p.op == "pow" and p.operands[0] == x and _scalar(prod, p.operands[1]) == 2.0)
                                      or p.operands == (x, x)):
                    return x, w, eps, [p, m, a, r, norm]
    return None


@register_pass
@dataclass(frozen=True)
class FuseRmsNorm(Pass):
    """Rewrite spelled-out RMSNorms (pow, mean, add eps, rsqrt, mul, mul by a weight) as `rms_norm`."""

    name = "fuse_rms_norm"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        prod, users, outputs = {n.ref: n for n in g.nodes}, g.users(), set(g.outputs)
        types = g.types()
        gone: set[int] = set()
        for i, n in enumerate(g.nodes):
            hit = _match(n, prod, users, outputs)
            if hit is None:
                continue
            x, w, eps, dead = hit
            if types[w] != ir.TensorType(n.type.dtype, (n.type.shape[-1],)) or types[x] != n.type:
                continue
            attrs = ir.OPS["rms_norm"].normalize_attrs({"eps": eps, "axes": 1})
            g.nodes[i] = ir.Node(n.name, "rms_norm", (x, w), attrs, n.type, n.loc)
            gone |= {id(d) for d in dead}
        g.nodes = [n for n in g.nodes if id(n) not in gone]
        return g
