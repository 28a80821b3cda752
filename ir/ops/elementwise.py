"""Elementwise ops. Binary ops broadcast like NumPy and need operands of one dtype: the
frontend inserts explicit `cast`s, so type promotion never hides in an op."""
from __future__ import annotations

import numpy as np
import scipy.special

from ..dtypes import DTYPES, bool_
from ..shapes import TensorType, broadcast, sub
from .base import Attr, OpDef, float_only, need, register_op, same_dtype, upcast16


class Unary(OpDef):
    operands = ("x",)
    floats = True  # needs a floating-point operand
    bools = True  # takes bool (neg does not: neither torch nor numpy negates bools)

    def infer(self, ins, attrs):
        if self.floats:
            float_only(ins[0], self.name)
        need(self.bools or ins[0].dtype != bool_, f"{self.name} of bool is not defined; use logical_not or cast first")
        return ins[0]

    def fn(self, x: np.ndarray, attrs) -> np.ndarray:
        raise NotImplementedError

    def reference(self, ins, attrs):
        x = ins[0]
        return np.asarray(self.fn(upcast16(x) if self.floats else x, attrs)).astype(x.dtype, copy=False)


def _unary(name: str, fn, floats: bool = True, doc: str = "", bools: bool = True) -> None:
    cls = type(name.title().replace("_", ""), (Unary,), {"name": name, "floats": floats, "bools": bools, "doc": doc,
                                                          "fn": lambda self, x, a: fn(x)})
    register_op(cls)


_unary("neg", np.negative, floats=False, doc="-x", bools=False)
_unary("abs", np.abs, floats=False, doc="|x|")
_unary("exp", np.exp)
_unary("log", np.log)
_unary("sqrt", np.sqrt)
_unary("rsqrt", lambda x: 1.0 / np.sqrt(x), doc="1/sqrt(x)")
_unary("reciprocal", lambda x: 1.0 / x)
_unary("sin", np.sin)
_unary("cos", np.cos)
_unary("tanh", np.tanh)
_unary("erf", scipy.special.erf)
_unary("sigmoid", scipy.special.expit)
_unary("silu", lambda x: x * scipy.special.expit(x), doc="x * sigmoid(x)")
_unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype), floats=False)


@register_op
class LogicalNot(Unary):
    name = "logical_not"
    floats = False

    def infer(self, ins, attrs):
        need(ins[0].dtype == bool_, f"logical_not needs bool, got {ins[0]}")
        return ins[0]

    def fn(self, x, attrs):
        return np.logical_not(x)


@register_op
class Gelu(Unary):
    name = "gelu"
    attrs = {"approximate": Attr("str", "none")}
    # At the infinities the formula is evaluated in IEEE arithmetic, on purpose: gelu(+inf) = +inf and
    # gelu(-inf) = -inf * 0 = NaN (tanh form: +inf and NaN too). torch's float64 kernels agree; its
    # float32/bfloat16 CPU kernel for approximate='none' returns NaN at +inf, which we do not copy.
    doc = "x * Phi(x); approximate='tanh' uses the tanh formula; gelu(+inf) = +inf, gelu(-inf) = NaN"

    def infer(self, ins, attrs):
        need(attrs["approximate"] in ("none", "tanh"), f"approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
        return super().infer(ins, attrs)

    def fn(self, x, attrs):
        if attrs["approximate"] == "tanh":
            c = np.asarray(np.sqrt(2.0 / np.pi), x.dtype)
            return 0.5 * x * (1.0 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x * x * x)))
        return 0.5 * x * (1.0 + scipy.special.erf(x * np.asarray(1 / np.sqrt(2.0), x.dtype)))


class Binary(OpDef):
    operands = ("a", "b")
    compare = False  # result is bool
    floats = False  # needs floating-point operands (div: torch true-divides ints into floats)
    bools = True  # takes bools (sub does not, in torch or numpy)

    def infer(self, ins, attrs):
        dt = same_dtype(ins, self.name)
        if self.floats:
            float_only(ins[0], self.name)
        need(self.bools or dt != bool_, f"{self.name} of bool is not defined; use logical ops or cast first")
        shape = broadcast(ins[0].shape, ins[1].shape)
        return TensorType(bool_ if self.compare else dt, shape)

    def reference(self, ins, attrs):
        a, b = ins
        out = np.asarray(self.fn(a, b))
        return out if self.compare else out.astype(a.dtype, copy=False)


def _binary(name: str, fn, compare: bool = False, doc: str = "", **flags: bool) -> None:
    cls = type(name.title().replace("_", ""), (Binary,), {"name": name, "compare": compare, "doc": doc,
                                                           "fn": staticmethod(fn), **flags})
    register_op(cls)


def _div(a, b):
    if a.dtype.kind in "iu":  # torch true-divides ints into floats; the frontend casts first
        raise ValueError("div of integers is not defined; cast to a float dtype first")
    return np.divide(a, b)


def _pow(a, b):
    return np.power(upcast16(a), upcast16(b))


_binary("add", np.add)
_binary("sub", np.subtract, bools=False)
_binary("mul", np.multiply)
_binary("div", _div, floats=True)
_binary("pow", _pow)
_binary("maximum", np.maximum, doc="NaN-propagating max")
_binary("minimum", np.minimum, doc="NaN-propagating min")
for _n, _fn in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                ("gt", np.greater), ("ge", np.greater_equal)]:
    _binary(_n, _fn, compare=True)


@register_op
class LogicalAnd(Binary):
    name = "logical_and"
    fn = staticmethod(np.logical_and)

    def infer(self, ins, attrs):
        need(all(t.dtype == bool_ for t in ins), f"logical_and needs bool operands, got {ins[0]}, {ins[1]}")
        return super().infer(ins, attrs)


@register_op
class LogicalOr(LogicalAnd):
    name = "logical_or"
    fn = staticmethod(np.logical_or)


@register_op
class Where(OpDef):
    name = "where"
    operands = ("cond", "a", "b")
    doc = "cond ? a : b, broadcasting all three"

    def infer(self, ins, attrs):
        need(ins[0].dtype == bool_, f"where's condition must be bool, got {ins[0]}")
        dt = same_dtype(ins[1:], "where")
        return TensorType(dt, broadcast(broadcast(ins[0].shape, ins[1].shape), ins[2].shape))

    def reference(self, ins, attrs):
        return np.where(*ins).astype(ins[1].dtype, copy=False)


@register_op
class Cast(OpDef):
    name = "cast"
    operands = ("x",)
    attrs = {"dtype": Attr("dtype")}
    doc = "convert elements to dtype (float->int truncates toward zero, like torch)"

    def infer(self, ins, attrs):
        need(not attrs["dtype"].packed, f"cast to the storage dtype {attrs['dtype']} is not an arithmetic cast")
        return ins[0].with_dtype(attrs["dtype"])

    def reference(self, ins, attrs):
        x, dt = ins[0], attrs["dtype"]
        if dt == bool_:
            return x != 0
        with np.errstate(invalid="ignore"):
            return x.astype(dt.np)


@register_op
class Full(OpDef):
    name = "full"
    attrs = {"value": Attr("scalar"), "dtype": Attr("dtype"), "shape": Attr("dims", [])}
    doc = "a tensor filled with one value (shape [] is a scalar constant)"

    def infer(self, ins, attrs):
        need(all(isinstance(d, str) or d >= 0 for d in attrs["shape"]), f"negative size in {attrs['shape']}")
        return TensorType(attrs["dtype"], tuple(attrs["shape"]))

    def reference(self, ins, attrs):
        return np.full(attrs["shape"], attrs["value"], dtype=attrs["dtype"].np)


@register_op
class Arange(OpDef):
    name = "arange"
    attrs = {"start": Attr("dim", 0), "end": Attr("dim"), "dtype": Attr("dtype", DTYPES["i64"])}
    doc = "start, start+1, ..., end-1"

    def infer(self, ins, attrs):
        n = sub(attrs["end"], attrs["start"])
        need(not isinstance(n, int) or n >= 0, f"arange end {attrs['end']} is before start {attrs['start']}")
        return TensorType(attrs["dtype"], (n,))

    def reference(self, ins, attrs):
        return np.arange(attrs["start"], attrs["end"], dtype=attrs["dtype"].np)
