"""An example Tritium plugin: one pass, registered when Tritium imports this module."""
from __future__ import annotations

from dataclasses import dataclass

import ir
from passes import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class FoldDoubleNeg(Pass):
    """Rewrite neg(neg(x)) to x; the negs left dead are for `dce` to remove."""

    name = "fold-double-neg"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()  # a pass never mutates its input
        producer = {n.ref: n for n in g.nodes}
        for n in g.nodes:  # in order, so neg(neg(neg(neg(x)))) folds all the way to x
            inner = producer.get(n.operands[0]) if n.op == "neg" else None
            if inner is not None and inner.op == "neg":
                g.replace_uses(n.ref, inner.operands[0])
        return g
