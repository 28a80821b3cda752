"""How an op is defined: one class per op carries its signature, type rule and NumPy meaning.

    @register_op
    class Add(OpDef):
        name = "add"
        operands = ("a", "b")
        def infer(self, ins, attrs): ...        # operand types + attrs -> result type
        def reference(self, ins, attrs): ...    # NumPy arrays + attrs (dims evaluated) -> array

Operand specs: "x" required, "bias?" optional (trailing), "xs*" variadic (only operand).
Attribute kinds: int, float, bool, str, dtype, dim, dims, ints, scalar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import DType, DTYPES
from ..shapes import Dim, TensorType, dim

_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def coerce_attr(kind: str, v: Any) -> Any:
    """Check and normalise one attribute value; raises ValueError naming the expected kind."""
    bad = ValueError(f"expected {kind}, got {v!r}")
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad
        return v
    if kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad
        return float(v)
    if kind == "bool":
        if not isinstance(v, bool):
            raise bad
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise bad
        return v
    if kind == "scalar":
        if not isinstance(v, (bool, int, float)):
            raise bad
        return float(v) if isinstance(v, float) else v  # np.float64 is a float, but prints as np.float64(...)
    if kind == "dtype":
        if isinstance(v, DType):
            return v
        if isinstance(v, str) and v in DTYPES:
            return DTYPES[v]
        raise bad
    if kind == "dim":
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise bad
        return dim(v)
    if kind in ("dims", "ints"):
        if not isinstance(v, (list, tuple)):
            raise bad
        return [coerce_attr("dim" if kind == "dims" else "int", x) for x in v]
    raise AssertionError(kind)


class OpDef:
    name: ClassVar[str]
    operands: ClassVar[tuple[str, ...]] = ()
    attrs: ClassVar[dict[str, Attr]] = {}
    doc: ClassVar[str] = ""

    def arity_ok(self, n: int) -> bool:
        if self.operands and self.operands[-1].endswith("*"):
            return n >= len(self.operands) - 1 + 1
        required = sum(not o.endswith("?") for o in self.operands)
        return required <= n <= len(self.operands)

    def signature(self) -> str:
        from ..printer import fmt_value

        a = ", ".join(f"{k}: {v.kind}" + ("" if v.required or v.default is None else f" = {fmt_value(v.default)}")
                      for k, v in self.attrs.items())
        return f"{self.name}({', '.join(self.operands)})" + (f" {{{a}}}" if a else "")

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"unknown attribute(s) {sorted(unknown)}; {self.name} takes {sorted(self.attrs) or 'none'}")
        out = {}
        for k, spec in self.attrs.items():
            if k in attrs:
                try:
                    out[k] = coerce_attr(spec.kind, attrs[k])
                except ValueError as e:
                    raise ValueError(f"attribute {k}: {e}") from None
            elif spec.required:
                raise ValueError(f"missing required attribute {k} ({spec.kind})")
            elif spec.default is not None:
                out[k] = spec.default
        return out

    def infer(self, ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        raise NotImplementedError(f"op {self.name} has no type rule")

    def reference(self, ins: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError(f"op {self.name} has no reference implementation")


OPS: dict[str, OpDef] = {}


def register_op(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: add an op to the registry (plugins call it too). Names are unique."""
    if cls.name in OPS and type(OPS[cls.name]) is not cls:
        raise ValueError(f"op {cls.name!r} is already registered by {type(OPS[cls.name]).__module__}")
    OPS[cls.name] = cls()
    return cls


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}") from None


# -- small helpers the op files share ---------------------------------------------------------
def upcast16(x: np.ndarray) -> np.ndarray:
    """16-bit floats (f16, and bf16, whose numpy kind is "V") as f32, anything else unchanged: the ops
    compute 16-bit math in f32 and round once, as torch does on the CPU."""
    return x.astype(np.float32) if x.dtype.kind in "fV" and x.dtype.itemsize < 4 else x


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def same_dtype(ins: list[TensorType], op: str) -> DType:
    dts = {t.dtype for t in ins}
    need(len(dts) == 1, f"{op} needs operands of one dtype, got {', '.join(str(t) for t in ins)}")
    return ins[0].dtype


def float_only(t: TensorType, op: str) -> None:
    need(t.dtype.is_float, f"{op} needs a floating-point operand, got {t}")


def dims_of(xs: list[Dim]) -> tuple[Dim, ...]:
    return tuple(dim(x) for x in xs)
