"""Buffer reuse: liveness over the node list, aliasing, and a pool keyed by (dtype, shape).

Every value has a set of *roots*: the buffers it may share memory with.
  - a fresh result (a template that allocates, or writes into a pooled buffer) is its own root;
  - a view (reshape, permute, expand, slice, ...) has its operand's roots;
  - an extern kernel's result has its operands' roots plus EXTERN (a kernel may return a cached
    array), graph inputs have INPUT and weights WEIGHT: those three are never pooled.
A root's buffer is free once every value with that root is past its last use, unless some graph
output has that root (an output is never overwritten, nor is anything it may alias). A freed
buffer goes to the pool under its value's (dtype, shape expression); a later node of exactly that
type may take it and write its result there with `out=`. Symbolic shapes are compared as text, so
two keys are equal only when the shapes are equal for every binding.

Only C-contiguous buffers are pooled (tracked per value from the templates' `layout`), so BLAS
writes into them directly; a wrong guess there costs speed, never correctness, since `out=` writes
wherever the buffer's strides say.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ir

INPUT, WEIGHT, EXTERN = "input", "weight", "extern"  # roots that are never pooled (refs start with % or @)

Key = tuple[str, tuple]


@dataclass
class Plan:
    roots: dict[str, frozenset[str]]  # value ref -> roots
    last_use: dict[str, int]  # value ref -> index of the node that uses it last (outputs: len(nodes))
    frees: dict[int, list[str]]  # node index -> owner refs whose buffers are free after it
    dies: dict[int, list[str]]  # node index -> refs last used there (views and externs: drop the name)
    pinned: frozenset[str]  # roots of graph outputs


def plan(g: ir.Graph, kinds: list[str]) -> Plan:
    """kinds[i]: "fresh", "view" (may alias operand 0) or "extern" for node i."""
    roots: dict[str, frozenset[str]] = {"%" + n: frozenset({INPUT}) for n, _ in g.inputs}
    roots.update({"@" + p: frozenset({WEIGHT}) for p in g.params})
    for n, kind in zip(g.nodes, kinds):
        if kind == "fresh":
            roots[n.ref] = frozenset({n.ref})
        elif kind == "view":
            roots[n.ref] = roots[n.operands[0]]
        else:
            roots[n.ref] = frozenset({EXTERN}).union(*(roots[o] for o in n.operands))
    end = len(g.nodes)
    last_use = {n.ref: i for i, n in enumerate(g.nodes)}  # unused results die where they are made
    for i, n in enumerate(g.nodes):
        for o in n.operands:
            last_use[o] = i
    for o in g.outputs:
        last_use[o] = end
    pinned = frozenset().union(*(roots[o] for o in g.outputs))
    death: dict[str, int] = {}  # root -> last use of any value that may alias it
    for ref, rs in roots.items():
        for r in rs:
            if ref in last_use:
                death[r] = max(death.get(r, -1), last_use[ref])
    frees: dict[int, list[str]] = {}
    dies: dict[int, list[str]] = {}
    for n in g.nodes:
        if roots[n.ref] == {n.ref}:
            if n.ref not in pinned:
                frees.setdefault(death[n.ref], []).append(n.ref)
        elif last_use[n.ref] < end:
            dies.setdefault(last_use[n.ref], []).append(n.ref)
    return Plan(roots, last_use, frees, dies, pinned)


@dataclass
class Pool:
    """Free buffers by (dtype, shape); the most recently freed first (it is likeliest in cache)."""

    free: dict[Key, list[str]] = field(default_factory=dict)

    def put(self, key: Key, name: str) -> None:
        """A free buffer, or one offered to a node that did not write into it."""
        self.free.setdefault(key, []).append(name)

    def take(self, key: Key) -> str | None:
        names = self.free.get(key)
        return names.pop() if names else None


def key(t: ir.TensorType) -> Key | None:
    """Pool key of a result type, or None when it is not worth pooling (0-d: NumPy returns scalars)."""
    return (t.dtype.name, t.shape) if t.rank > 0 else None
