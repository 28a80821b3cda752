"""Constant folding with each op's NumPy reference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir

from .base import Pass, register_pass

_SOURCES = ("full", "arange")  # ops with no operands: constants already, left as they are
_EVAL_LIMIT = 1 << 22  # larger values are never materialised: a compile pass must not eat the RAM


def _static(n: ir.Node) -> bool:
    """Type and dim attributes are free of symbols, so the value is the same on every call."""
    specs = ir.OPS[n.op].attrs
    for k, v in n.attrs.items():
        kind = specs[k].kind if k in specs else ""
        if (kind == "dim" and isinstance(v, str)) or (kind == "dims" and any(isinstance(d, str) for d in v)):
            return False
    return n.type.is_static and int(n.type.numel()) <= _EVAL_LIMIT


def _splat(v: np.ndarray) -> bool:
    """All elements are bit-identical (so -0.0 and 0.0 differ, and NaN equals the same NaN)."""
    flat = np.ascontiguousarray(v).reshape(-1)
    bits = flat.view(f"u{flat.itemsize}")
    return bool((bits == bits[0]).all()) if flat.size else True


def _scalar(v: np.ndarray, dt: ir.DType) -> bool | int | float:
    x = v.reshape(-1)[0] if v.size else 0
    return bool(x) if dt.kind == "bool" else float(x) if dt.is_float else int(x)


@register_pass
@dataclass(frozen=True)
class ConstantFold(Pass):
    """Evaluate nodes whose operands are all constants with the op's NumPy reference.

    Constants are `full` nodes, `arange` with static bounds and the results of folded nodes; never
    parameters, whose data may change later (quantization). A splat result becomes a `full` node of
    the same name; any other result with at most `max_elements` elements becomes a new parameter
    `@const.<n>` with its data in `g.weights`. Nodes with symbolic dims are left alone.
    """

    name = "constant_fold"
    max_elements: int = 65536

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        values: dict[str, np.ndarray] = {}  # ref -> value of every constant
        folded: set[str] = set()  # nodes to replace by a `full` node or a parameter
        for n in g.nodes:
            if not _static(n) or not all(o in values for o in n.operands):
                continue
            try:
                with np.errstate(all="ignore"):  # IEEE semantics, as in ir.run
                    v = np.asarray(ir.OPS[n.op].reference([values[o] for o in n.operands], n.attrs))
            except Exception:  # it fails at run time too: leave the node for that error to surface
                continue
            values[n.ref] = v = v.astype(n.type.dtype.np, copy=False)
            if n.op not in _SOURCES and (_splat(v) or v.size <= self.max_elements):
                folded.add(n.ref)
        # Materialise only the folded values something else still uses: no dead @const params.
        needed = set(g.outputs).union(*(n.operands for n in g.nodes if n.ref not in folded))
        renamed: dict[str, str] = {}
        kept: list[ir.Node] = []
        for n in g.nodes:
            if n.ref not in folded:
                kept.append(n)
            elif n.ref in needed and _splat(v := values[n.ref]):
                attrs = {"value": _scalar(v, n.type.dtype), "dtype": n.type.dtype, "shape": list(n.type.shape)}
                kept.append(ir.Node(n.name, "full", (), ir.OPS["full"].normalize_attrs(attrs), n.type, n.loc))
            elif n.ref in needed:
                name = g.fresh_param("const")
                g.params[name], g.weights[name] = n.type, np.array(v, order="C")  # own, contiguous data
                renamed[n.ref] = "@" + name
        for n in kept:
            n.operands = tuple(renamed.get(o, o) for o in n.operands)
        g.nodes = kept
        g.outputs = [renamed.get(o, o) for o in g.outputs]
        return g

