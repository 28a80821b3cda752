"""Dead code elimination."""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class Dce(Pass):
    """Remove nodes no output (transitively) uses; drop parameters no longer used, and their weights.

    Graph inputs stay: they are the graph's signature. Every op is pure, so liveness is reachability.
    """

    name = "dce"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        live = set(g.outputs)
        kept = []
        for n in reversed(g.nodes):  # nodes are in topological order: users come after producers
            if n.ref in live:
                kept.append(n)
                live.update(n.operands)
        g.nodes = kept[::-1]
        dead = {k for k in g.params if "@" + k not in live}
        g.params = {k: t for k, t in g.params.items() if k not in dead}
        g.weights = {k: w for k, w in g.weights.items() if k not in dead}
        return g
