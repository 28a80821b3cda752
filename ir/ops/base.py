"""How an op is defined: one class per op carries its signature, type rule and NumPy meaning.

    @register_op
    class Add(OpDef):
        name = "add"
        operands = ("a", "b")
        def infer(self, ins, attrs): ...        # operand types + attrs -> result type
        def reference(self, ins, attrs): ...    # NumPy arrays + attrs (dims evaluated) -> array
        def cost(self, ins, out, attrs): ...    # static types -> Cost (optional: elementwise by default)

Operand specs: "x" required, "bias?" optional (trailing), "xs*" variadic (only operand).
Attribute kinds: int, float, bool, str, dtype, dim, dims, ints, scalar. Integers (int, each of ints, a
constant dim) also have declared bounds, `Attr("int", bounds=COUNT)`, int64 by default: the verifier
refuses a value outside them, so no kernel ever truncates one into a C integer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..dtypes import DType, DTYPES
from ..shapes import Dim, TensorType, dim

_REQUIRED = object()


@dataclass(frozen=True)
class Bounds:
    """The inclusive range an integer attribute must lie in, and why (said in the error)."""
    lo: int
    hi: int
    why: str

    def check(self, name: str, v: Any) -> None:
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, int) and not self.lo <= x <= self.hi:
                raise ValueError(f"attribute {name} = {x} is outside [{self.lo}, {self.hi}] ({self.why})")


INT64 = Bounds(-2**63, 2**63 - 1, "a C int64_t")  # every integer attribute: the widest integer a kernel takes
COUNT = Bounds(1, 2**31 - 1, "a group, block, row or column count: the kernels loop over it with a C int")
KEEP = Bounds(-1, 2**31 - 1, "-1 (threshold) or how many entries to keep, a C int")
TOPK = Bounds(0, 2**31 - 1, "how many entries to pick, a C int")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = _REQUIRED
    bounds: Bounds = INT64  # for int, ints, dim and dims (their constant values)

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


@dataclass(frozen=True)
class Cost:
    """What one op does at static shapes (`tritium analyze`, compiler/analyze.py, sums these): `flops`
    floating-point and `int_ops` integer operations (a multiply-add is 2, a table lookup 1); `reads[i]`
    the bytes it reads from operand i, as stored (packed dtypes at their packed size, a gather only the
    rows it takes, a view nothing); `writes` the bytes of its result. Each tensor is counted once per
    op: the ideal traffic that a roofline prices, not what a cache hierarchy makes of it."""

    flops: int = 0
    int_ops: int = 0
    reads: tuple[int, ...] = ()
    writes: int = 0


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
                spec.bounds.check(k, out[k])
            elif spec.required:
                raise ValueError(f"missing required attribute {k} ({spec.kind})")
            elif spec.default is not None:
                out[k] = spec.default
        return out

    def infer(self, ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        raise NotImplementedError(f"op {self.name} has no type rule")

    def reference(self, ins: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError(f"op {self.name} has no reference implementation")

    def cost(self, ins: list[TensorType], out: TensorType, attrs: dict[str, Any]) -> Cost:
        """The op's work at static operand and result types (attrs with dims evaluated). Default, right
        for elementwise ops and reductions: one operation per element of the largest of the operands
        and the result, floating-point when any of them is a float; every operand read once, the
        result written. Ops that do more, or move less, override it next to their definition."""
        n = max([out.numel(), *(t.numel() for t in ins)])
        floating = out.dtype.is_float or any(t.dtype.is_float for t in ins)
        return Cost(flops=n if floating else 0, int_ops=0 if floating else n, reads=reads(ins), writes=out.nbytes())


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


def reads(ins: list[TensorType]) -> tuple[int, ...]:
    """Every operand read whole: its stored bytes."""
    return tuple(t.nbytes() for t in ins)


VIEW_COST = Cost()  # a view (reshape, permute, slice, expand): backends read it through strides, its users pay
