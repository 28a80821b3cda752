"""Reductions and scans over named axes."""
from __future__ import annotations

import numpy as np

from ..dtypes import DTYPES
from ..errors import RuntimeShapeError
from ..shapes import TensorType, normalize_axis
from .base import Attr, Cost, OpDef, float_only, need, reads, register_op, upcast16


class Reduce(OpDef):
    operands = ("x",)
    attrs = {"dims": Attr("ints"), "keepdim": Attr("bool", False)}
    floats = False
    empty_ok = True  # a max over nothing has no value (numpy and torch raise)

    def axes(self, t: TensorType, attrs) -> tuple[int, ...]:
        axes = tuple(sorted({normalize_axis(d, t.rank) for d in attrs["dims"]})) if attrs["dims"] else tuple(range(t.rank))
        need(len(axes) == len(attrs["dims"]) or not attrs["dims"], f"repeated axis in {attrs['dims']}")
        return axes

    def infer(self, ins, attrs):
        t = ins[0]
        if self.floats:
            float_only(t, self.name)
        axes = self.axes(t, attrs)
        need(self.empty_ok or all(t.shape[i] != 0 for i in axes), f"{self.name} over an empty axis of {t}")
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape) if attrs["keepdim"] or i not in axes)
        return TensorType(t.dtype, shape)

    def reference(self, ins, attrs):
        x = ins[0]
        axes = tuple(normalize_axis(d, x.ndim) for d in attrs["dims"]) if attrs["dims"] else None
        out = self.fn(upcast16(x), axes, attrs["keepdim"])
        return np.asarray(out).astype(x.dtype, copy=False)


@register_op
class Sum(Reduce):
    name = "sum"
    doc = "sum over dims (all dims when empty)"

    @staticmethod
    def fn(x, axes, keep):
        return np.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)


@register_op
class Mean(Reduce):
    name = "mean"
    floats = True

    @staticmethod
    def fn(x, axes, keep):
        return np.mean(x, axis=axes, keepdims=keep, dtype=x.dtype)


@register_op
class Amax(Reduce):
    name = "amax"
    empty_ok = False

    @staticmethod
    def fn(x, axes, keep):
        return np.max(x, axis=axes, keepdims=keep)


@register_op
class Amin(Reduce):
    name = "amin"
    empty_ok = False

    @staticmethod
    def fn(x, axes, keep):
        return np.min(x, axis=axes, keepdims=keep)


@register_op
class Argmax(OpDef):
    name = "argmax"
    operands = ("x",)
    attrs = {"dim": Attr("int"), "keepdim": Attr("bool", False)}
    doc = "index of the first maximum along dim (i64)"

    def infer(self, ins, attrs):
        t = ins[0]
        ax = normalize_axis(attrs["dim"], t.rank)
        need(t.rank > 0 and t.shape[ax] != 0, f"argmax over an empty axis of {t}")
        shape = tuple(1 if i == ax else d for i, d in enumerate(t.shape) if attrs["keepdim"] or i != ax)
        return TensorType(DTYPES["i64"], shape)

    def reference(self, ins, attrs):
        x = ins[0]
        if x.shape[normalize_axis(attrs["dim"], x.ndim)] == 0:  # a symbolic axis of length 0 this call (torch raises too)
            raise RuntimeShapeError(f"argmax over an empty axis: input shape {list(x.shape)}, dim {attrs['dim']}")
        return np.argmax(x, axis=attrs["dim"], keepdims=attrs["keepdim"]).astype(np.int64)


@register_op
class Cumsum(OpDef):
    name = "cumsum"
    operands = ("x",)
    attrs = {"dim": Attr("int")}
    doc = "inclusive prefix sum along dim; bool and small ints accumulate in i64, like torch"

    def infer(self, ins, attrs):
        t = ins[0]
        normalize_axis(attrs["dim"], t.rank)
        return t.with_dtype(DTYPES["i64"]) if not t.dtype.is_float else t

    def reference(self, ins, attrs):
        x = ins[0]
        out = np.int64 if x.dtype.kind in "biu" else x.dtype  # (bfloat16's numpy kind is "V", not "f")
        acc = np.float32 if out == x.dtype and x.dtype.itemsize < 4 else out  # 16-bit floats sum in f32, as torch
        return np.cumsum(x, axis=attrs["dim"] % max(x.ndim, 1), dtype=acc).astype(out, copy=False).reshape(x.shape)


class SoftmaxBase(OpDef):
    operands = ("x",)
    attrs = {"dim": Attr("int")}

    def infer(self, ins, attrs):
        float_only(ins[0], self.name)
        normalize_axis(attrs["dim"], ins[0].rank)
        return ins[0]

    def cost(self, ins, out, attrs):
        """5 per element: max, subtract, exp, sum, then divide (log_softmax: subtract the log)."""
        return Cost(flops=5 * out.numel(), reads=reads(ins), writes=out.nbytes())


@register_op
class Softmax(SoftmaxBase):
    name = "softmax"
    doc = "exp(x - max) / sum(exp(x - max)) along dim"

    def reference(self, ins, attrs):
        x = ins[0]
        xf = upcast16(x)
        m = np.max(xf, axis=attrs["dim"], keepdims=True) if xf.size else xf
        with np.errstate(invalid="ignore"):
            e = np.exp(xf - m)
            return (e / np.sum(e, axis=attrs["dim"], keepdims=True)).astype(x.dtype)


@register_op
class LogSoftmax(SoftmaxBase):
    name = "log_softmax"

    def reference(self, ins, attrs):
        x = ins[0]
        xf = upcast16(x)
        m = np.max(xf, axis=attrs["dim"], keepdims=True) if xf.size else xf
        with np.errstate(invalid="ignore", divide="ignore"):
            s = xf - m
            return (s - np.log(np.sum(np.exp(s), axis=attrs["dim"], keepdims=True))).astype(x.dtype)
