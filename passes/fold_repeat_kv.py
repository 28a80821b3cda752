"""Grouped-query attention: `sdpa` reads the kv heads themselves, not Hugging Face's repeated copies.

    %u = reshape(%k) {shape = [b, kv, 1, s, d]}
    %e = expand(%u) {shape = [b, kv, rep, s, d]}
    %r = reshape(%e) {shape = [b, kv * rep, s, d]}     ->    %a = sdpa(%q, %k, ...)
    %a = sdpa(%q, %r, ...)

`repeat_kv` makes query head h read kv head h // rep, which is what `sdpa` does by itself when k and v
have fewer heads than q (see its doc), so the result is the same and no copy of the cache is made. The
reshape of an expand copies (rep times the cache, per layer and step in decoding); the backends' grouped
attention reads each kv head in place. The repeat ops are left for `dce` when nothing else reads them.
"""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


def _unrepeated(ref: str, prod: dict[str, ir.Node], types: dict[str, ir.TensorType]) -> str | None:
    """The [b, kv, s, d] value that `ref` repeats along heads as repeat_kv does, or None."""
    r = prod.get(ref)
    e = prod.get(r.operands[0]) if r is not None and r.op == "reshape" else None
    u = prod.get(e.operands[0]) if e is not None and e.op == "expand" else None
    if u is None or u.op != "reshape":
        return None
    x = u.operands[0]
    xs, us, es, rs = types[x].shape, types[u.ref].shape, types[e.ref].shape, types[ref].shape
    if len(xs) != 4 or len(rs) != 4 or types[x].dtype != types[ref].dtype:
        return None
    b, kv, s, d = xs
    rep = es[2] if len(es) == 5 else None
    if not isinstance(rep, int) or not isinstance(kv, int) or rep < 1:
        return None
    if us != (b, kv, 1, s, d) or es != (b, kv, rep, s, d) or rs != (b, kv * rep, s, d):
        return None
    return x


@register_pass
@dataclass(frozen=True)
class FoldRepeatKv(Pass):
    """Let `sdpa` read k and v before Hugging Face's repeat_kv (reshape, expand, reshape) copies their heads."""

    name = "fold_repeat_kv"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        prod, types = {n.ref: n for n in g.nodes}, g.types()
        for i, n in enumerate(g.nodes):
            if n.op != "sdpa":
                continue
            k, v = (_unrepeated(o, prod, types) for o in n.operands[1:3])
            if k is None or v is None or types[k].shape[1] != types[v].shape[1]:
                continue  # both or neither: sdpa needs k and v with the same heads
            g.nodes[i] = ir.Node(n.name, n.op, (n.operands[0], k, v, *n.operands[3:]), n.attrs, n.type, n.loc)
        return g
