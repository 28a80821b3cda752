"""Graph invariants: SSA order, known ops, attribute schemas, and types equal to each op's rule.

Errors name the node (`%linear_3 = linear(...)`) and say what differs.
"""
from __future__ import annotations

from .errors import VerifyError
from .graph import Graph, Node, _attr_key
from .printer import fmt_name
from .shapes import symbols


def _fail(msg: str, node: Node | None = None) -> VerifyError:
    where = f"{fmt_name('%', node.name)} = {node.op}(...): " if node else ""  # quoted as in the text
    e = VerifyError(where + msg)
    e.node = node.name if node else None  # type: ignore[attr-defined]
    return e


def verify(g: Graph) -> Graph:
    """Raise VerifyError on the first broken invariant; return the graph unchanged otherwise."""
    from .ops import OPS

    types = {}
    bound: set[str] = set()
    for name, t in g.inputs:
        if "%" + name in types:
            raise _fail(f"input %{name} is defined twice")
        types["%" + name] = t
        bound |= {d for d in t.shape if isinstance(d, str) and d.isidentifier()}
    for name, t in g.params.items():
        types["@" + name] = t
        if not t.is_static:
            raise _fail(f"parameter @{name} has a symbolic shape {t}; weights are static")
        if name in g.weights:
            w = g.weights[name]
            if tuple(w.shape) != t.shape or w.dtype != t.dtype.np:
                raise _fail(f"weights of @{name} are {w.dtype}{list(w.shape)}, but it is declared {t}")
    for name, t in g.inputs:
        free = set().union(*(symbols(d) for d in t.shape)) - bound
        if free:
            raise _fail(f"input %{name}: {t} uses symbol(s) {sorted(free)} that no input dim binds alone")
    for n in g.nodes:
        if n.op not in OPS:
            raise _fail(f"unknown op {n.op!r}", n)
        op = OPS[n.op]
        if n.ref in types:
            raise _fail(f"%{n.name} is defined twice (SSA: one definition per value)", n)
        for o in n.operands:
            if o not in types:
                raise _fail(f"operand {o} is not defined before this node", n)
        if not op.arity_ok(len(n.operands)):
            raise _fail(f"takes operands {op.signature()}, got {len(n.operands)}", n)
        try:
            norm = op.normalize_attrs(n.attrs)
        except ValueError as e:
            raise _fail(str(e), n) from None
        if list(norm) != list(n.attrs) or _attr_key(norm) != _attr_key(n.attrs):  # else the text differs
            raise _fail(f"attributes {n.attrs} are not normalised (expected {norm}; use OPS[op].normalize_attrs)", n)
        ins = [types[o] for o in n.operands]
        try:
            inferred = op.infer(ins, norm)
        except (ValueError, TypeError, KeyError, IndexError) as e:  # e.g. a rank-0 operand
            raise _fail(f"{e} (operands: {', '.join(f'{o}: {t}' for o, t in zip(n.operands, ins))})", n) from None
        if inferred != n.type:
            raise _fail(f"declared type {n.type} but the op gives {inferred}", n)
        free = set().union(set(), *(symbols(d) for d in n.type.shape)) - bound
        if free:
            raise _fail(f"type {n.type} uses unbound symbol(s) {sorted(free)}", n)
        types[n.ref] = n.type
    if not g.outputs:
        raise _fail("graph has no outputs")
    for o in g.outputs:
        if o not in types:
            raise _fail(f"output {o} is not defined")
    return g
