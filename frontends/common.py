"""What every torch frontend shares: dtype mapping, symbolic dims, and an IR builder that infers
each node's type from its op and checks it against what torch says the value is."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
from torch.utils import _pytree as pytree

import ir
from ir.dtypes import DTYPES, DType
from ir.errors import UnsupportedOpError
from ir.shapes import Dim, TensorType, canon

_TORCH_TO_IR = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool",
}
IR_TO_TORCH = {v: k for k, v in _TORCH_TO_IR.items()}


def ir_dtype(dt: torch.dtype) -> DType:
    try:
        return DTYPES[_TORCH_TO_IR[dt]]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {dt} has no Tritium dtype") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Zero-copy where possible; bf16 goes through its bit pattern (numpy has no bfloat16)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(DTYPES["bf16"].np)
    return t.contiguous().numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == DTYPES["bf16"].np:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


_SAFE = re.compile(r"[^A-Za-z0-9_.]")


def value_name(name: str) -> str:
    """A readable SSA name from a torch name (the printer quotes anything unusual anyway)."""
    return _SAFE.sub("_", name) or "v"


@dataclass
class Imported:
    """A traced model: its IR and how to map Python call arguments and results onto it."""

    graph: ir.Graph
    in_spec: pytree.TreeSpec | None  # of (args, kwargs)
    input_leaves: list[int]  # flat positions of (args, kwargs) leaves that are graph inputs
    out_spec: pytree.TreeSpec | None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)  # added on every call (use_cache=False)

    def graph_inputs(self, args: tuple, kwargs: dict) -> list[np.ndarray] | None:
        """The graph's input arrays for a Python call, or None when the call's structure differs
        from the trace (other argument names, or a tensor where a constant was traced)."""
        leaves, tree = pytree.tree_flatten((tuple(args), {**kwargs, **self.extra_kwargs}))
        if self.in_spec is not None and tree != self.in_spec:
            return None
        tensors = set(self.input_leaves)
        if any(i not in tensors and isinstance(leaf, torch.Tensor) for i, leaf in enumerate(leaves)):
            return None
        if any(not isinstance(leaves[i], torch.Tensor) for i in self.input_leaves):  # a str where a tensor was traced
            return None
        return [to_numpy(leaves[i]) for i in self.input_leaves]


class Builder:
    """Appends nodes to a graph, inferring types; `expect` cross-checks against torch's type."""

    def __init__(self, g: ir.Graph):
        self.g = g
        self._consts: dict[tuple, str] = {}
        self._names: set[str] = {n for n, _ in g.inputs}
        self.loc: str | None = None
        self.symbols: dict[sympy.Symbol, sympy.Symbol] = {}
        self._types: dict[str, TensorType] = {}

    def type_of(self, ref: str) -> TensorType:
        if ref.startswith("@"):
            return self.g.params[ref[1:]]
        for n, t in self.g.inputs:
            if "%" + n == ref:
                return t
        return self._types[ref]

    def fresh(self, base: str) -> str:
        base = value_name(base)
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def emit(self, op: str, operands: list[str], attrs: dict[str, Any] | None = None, name: str = "v",
             expect: TensorType | None = None) -> str:
        opdef = ir.OPS[op]
        try:
            attrs = opdef.normalize_attrs(attrs or {})
            t = opdef.infer([self.type_of(o) for o in operands], attrs)
        except (ValueError, TypeError) as e:
            raise UnsupportedOpError(f"cannot build {op} for {name} at {self.loc or '?'}: {e}") from None
        if expect is not None and t != expect:
            raise UnsupportedOpError(f"internal: {op} for {name} gives {t} but torch says {expect} (at {self.loc or '?'})")
        node = ir.Node(self.fresh(name), op, tuple(operands), attrs, t, self.loc)
        self.g.nodes.append(node)
        self._types[node.ref] = t
        return node.ref

    def const(self, value: bool | int | float, dt: DType) -> str:
        """A scalar constant (one `full` node per value and dtype)."""
        key = (repr(value), dt.name)
        if key not in self._consts:
            if dt == DTYPES["bool"]:
                value = bool(value)
            elif not dt.is_float:
                value = int(value)
            else:
                value = float(value)
            self._consts[key] = self.emit("full", [], {"value": value, "dtype": dt, "shape": []}, name="c")
        return self._consts[key]

    def cast(self, ref: str, dt: DType) -> str:
        return ref if self.type_of(ref).dtype == dt else self.emit("cast", [ref], {"dtype": dt}, name=ref[1:] + "_" + dt.name)

    # -- symbolic dims -------------------------------------------------------------------------
    def dim(self, v: Any) -> Dim:
        """An int or torch SymInt -> an IR dim, with torch's symbols renamed s0, s1, ... by first use."""
        if isinstance(v, bool):
            raise UnsupportedOpError(f"expected a size, got {v!r}")
        if isinstance(v, int):
            return v
        if isinstance(v, torch.SymInt):
            e = v.node.expr
            if not isinstance(e, sympy.Expr) or e.has(sympy.Function) or any(not isinstance(a, (sympy.Symbol, sympy.Integer, sympy.Add, sympy.Mul, sympy.Pow)) for a in sympy.preorder_traversal(e)):
                raise UnsupportedOpError(f"symbolic size {e} (at {self.loc or '?'}) is not a polynomial; "
                                         "trace with a static shape for this input")
            for s in sorted(e.free_symbols, key=str):
                if s not in self.symbols:
                    self.symbols[s] = sympy.Symbol(f"s{len(self.symbols)}", integer=True, positive=True)
            return canon(e.xreplace(self.symbols))
        raise UnsupportedOpError(f"expected a size, got {type(v).__name__} {v!r}")

    def ttype(self, val: Any) -> TensorType:
        if not isinstance(val, torch.Tensor):
            raise UnsupportedOpError(f"expected a tensor value, got {type(val).__name__}")
        return TensorType(ir_dtype(val.dtype), tuple(self.dim(d) for d in val.shape))
