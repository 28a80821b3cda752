"""Common subexpression elimination."""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class Cse(Pass):
    """Merge nodes with equal structure (op, operands, attributes, type): the first one stays.

    Nodes are visited in order and their operands renamed to the survivors first, so chains of
    duplicates collapse in one run. Parameters are never merged: equal types may hold different data.
    """

    name = "cse"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        first: dict[tuple, str] = {}  # Node.key() -> ref of the node that stays
        renamed: dict[str, str] = {}  # ref of a removed node -> ref of its survivor
        kept = []
        for n in g.nodes:
            n.operands = tuple(renamed.get(o, o) for o in n.operands)
            k = n.key()
            if k in first:
                renamed[n.ref] = first[k]
            else:
                first[k] = n.ref
                kept.append(n)
        g.nodes = kept
        g.outputs = [renamed.get(o, o) for o in g.outputs]
        return g
