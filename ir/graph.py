"""The graph IR: a flat list of single-result SSA nodes, like torch.fx but typed.

Values are referred to by text: `%name` for graph inputs and node results, `@name` for
parameters (weights), which live beside the text in `Graph.weights`. Node order is a
topological order; the verifier checks it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx
import numpy as np

from .shapes import TensorType


@dataclass(eq=False)
class Node:
    name: str  # the result's SSA name, without '%'
    op: str
    operands: tuple[str, ...]  # "%value" or "@param"
    attrs: dict[str, Any]
    type: TensorType
    loc: str | None = None  # where it came from (module path, source line); not part of equality

    @property
    def ref(self) -> str:
        return "%" + self.name

    def key(self) -> tuple:
        """Structural identity (used by equality and CSE): everything but the name and loc."""
        return (self.op, self.operands, _attr_key(self.attrs), self.type)

    def __str__(self) -> str:
        from .printer import print_node

        return print_node(self)


def _attr_key(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _attr_key(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float):
        return ("float", repr(v))  # nan == nan and 0.0 != -0.0, as in the text
    return (type(v).__name__, v)


@dataclass(eq=False)
class Graph:
    name: str = "main"
    inputs: list[tuple[str, TensorType]] = field(default_factory=list)  # names without '%'
    params: dict[str, TensorType] = field(default_factory=dict)  # names without '@'
    nodes: list[Node] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # refs
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # param data, not in the text

    # -- structure ---------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        """Structural equality of the text form (weights are compared by `same_weights`)."""
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.name == other.name
            and self.inputs == other.inputs
            and self.params == other.params
            and self.outputs == other.outputs
            and [(n.name, n.key()) for n in self.nodes] == [(n.name, n.key()) for n in other.nodes]
        )

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def copy(self) -> "Graph":
        """A copy whose lists and dicts can be changed freely; weight arrays are shared (read-only)."""
        return Graph(
            self.name,
            list(self.inputs),
            dict(self.params),
            [Node(n.name, n.op, n.operands, dict(n.attrs), n.type, n.loc) for n in self.nodes],
            list(self.outputs),
            dict(self.weights),
        )

    def types(self) -> dict[str, TensorType]:
        """Type of every value, by ref (`%x`, `@w`)."""
        t = {"%" + n: ty for n, ty in self.inputs}
        t.update({"@" + n: ty for n, ty in self.params.items()})
        t.update({n.ref: n.type for n in self.nodes})
        return t

    def users(self) -> dict[str, list[Node]]:
        u: dict[str, list[Node]] = {}
        for n in self.nodes:
            for o in n.operands:
                u.setdefault(o, []).append(n)
        return u

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name.lstrip("%"):
                return n
        raise KeyError(name)

    def fresh_name(self, base: str) -> str:
        taken = {n.name for n in self.nodes} | {n for n, _ in self.inputs}
        if base not in taken:
            return base
        i = 1
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    def fresh_param(self, base: str) -> str:
        """`base.0`, `base.1`, ...: the first name no parameter has."""
        i = 0
        while f"{base}.{i}" in self.params or f"{base}.{i}" in self.weights:
            i += 1
        return f"{base}.{i}"

    def replace_uses(self, old: str, new: str) -> None:
        """Point every use of value `old` (a ref) at `new`, outputs included."""
        for n in self.nodes:
            if old in n.operands:
                n.operands = tuple(new if o == old else o for o in n.operands)
        self.outputs = [new if o == old else o for o in self.outputs]

    def to_networkx(self) -> nx.DiGraph:
        """Dataflow graph over refs (inputs, params and nodes); edges go producer -> user."""
        g = nx.DiGraph()
        for name, ty in self.inputs:
            g.add_node("%" + name, kind="input", type=str(ty))
        for name, ty in self.params.items():
            g.add_node("@" + name, kind="param", type=str(ty))
        for n in self.nodes:
            g.add_node(n.ref, kind="node", op=n.op, type=str(n.type))
            for o in n.operands:
                g.add_edge(o, n.ref)
        return g

    def topo_sort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is free (stable)."""
        order = {n.ref: i for i, n in enumerate(self.nodes)}
        g = self.to_networkx()
        ranked = nx.lexicographical_topological_sort(g, key=lambda r: order.get(r, -1))
        by_ref = {n.ref: n for n in self.nodes}
        self.nodes = [by_ref[r] for r in ranked if r in by_ref]

    def to_dot(self) -> str:
        name = self.name.replace("\\", "\\\\").replace('"', '\\"')  # any graph name stays one DOT string
        lines = [f'digraph "{name}" {{']
        g = self.to_networkx()
        ids = {r: f"v{i}" for i, r in enumerate(g.nodes)}
        for r, d in g.nodes(data=True):
            label = f"{r}\\n{d.get('op', d['kind'])}: {d['type']}".replace('"', "'")
            lines.append(f'  {ids[r]} [label="{label}"];')
        lines += [f"  {ids[a]} -> {ids[b]};" for a, b in g.edges]
        return "\n".join(lines + ["}"])

    def same_weights(self, other: "Graph") -> bool:
        return self.weights.keys() == other.weights.keys() and all(
            np.array_equal(self.weights[k], other.weights[k], equal_nan=True) for k in self.weights
        )

    def param_bytes(self) -> int:
        return sum(t.nbytes() for t in self.params.values())

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.params)} params, {len(self.nodes)} nodes>"


def count_ops(g: Graph) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in g.nodes:
        out[n.op] = out.get(n.op, 0) + 1
    return dict(sorted(out.items()))


