"""Which nodes the Triton backend computes inside their users' kernels instead of materializing.

A node is inlined when it has an expression (exprs.py), is not a graph output, every user reads
it through `value()` (not a `reshape`, which views a buffer), and either
  - it is cheap (a constant, a view, a cast, a weight decoder): inlined everywhere, even into
    matmul / attention operands and into several users, since it reads one value per element; or
  - it has one user that is not a matmul or attention (those would recompute it per tile).
Everything else gets its own kernel and buffer.

Epilogues: a `linear` or `matmul` whose only user starts a chain of elementwise ops of its own shape
(each inlined, the last one materialized: `silu(gate) * up`, `x + o_proj(h)`) is computed by that last
node's kernel: the matmul template applies the chain to its accumulator tile before storing, so the
matmul's result never goes to memory. The plan is a pure function of the graph; the generated
module's comments name each kernel's node and its epilogue, so the decisions show in `.source`.
"""
from __future__ import annotations

import ir

from dataclasses import dataclass

from .exprs import CHEAP, ELEMENTWISE, EMITTERS

HEAVY = frozenset({"linear", "matmul", "sdpa", "int8_linear", "moe"})  # they read each operand element many times
VIEWS = frozenset({"reshape"})


MATMULS = frozenset({"linear", "matmul"})


@dataclass
class Plan:
    inline: dict[str, ir.Node]  # ref -> node, computed inside its users' kernels
    epilogue: dict[str, ir.Node]  # the ref of a chain's last node -> the matmul it absorbs

    @property
    def absorbed(self) -> set[str]:
        return {m.ref for m in self.epilogue.values()}


def fusion_plan(g: ir.Graph) -> Plan:
    users = g.users()
    inline = _inline(g, users)
    outputs = set(g.outputs)
    epilogue: dict[str, ir.Node] = {}
    for n in g.nodes:
        if n.op not in MATMULS or n.ref in outputs:
            continue
        cur = n
        while len(users.get(cur.ref, [])) == 1:
            u = users[cur.ref][0]
            if u.op not in ELEMENTWISE or u.type.shape != n.type.shape:
                break
            if u.ref not in inline:
                epilogue[u.ref] = n
                break
            cur = u
    return Plan(inline, epilogue)


def _inline(g: ir.Graph, users: dict[str, list[ir.Node]]) -> dict[str, ir.Node]:
    """ref -> node, for every node to inline."""
    outputs = set(g.outputs)
    inline: dict[str, ir.Node] = {}
    for n in g.nodes:
        us = users.get(n.ref, [])
        if n.op not in EMITTERS or n.ref in outputs or not us or any(u.op in VIEWS for u in us):
            continue
        if n.op in CHEAP or (len(us) == 1 and us[0].op not in HEAVY):
            inline[n.ref] = n
    return inline
