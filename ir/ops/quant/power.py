"""Power-exponent grids (NUPES): integer codes warped by |q|^alpha, a per-group scale."""
from __future__ import annotations

import math

import numpy as np

from ...dtypes import DTYPES
from ..base import Attr, COUNT, OpDef, need, register_op
from .affine import check_grouped, expand_groups


def pow_levels(q: np.ndarray, alpha: float) -> np.ndarray:
    """sign(q) * |q|^alpha in f32 (computed in f64): the grid before scaling. alpha = 1 gives q exactly."""
    q = np.asarray(q)
    if q.dtype == np.int8 and q.size > 256:  # 8-bit codes: the same values from a 256-entry table
        return pow_levels(np.arange(-128, 128), alpha)[q.astype(np.int16) + 128]
    f = q.astype(np.float64)
    return (np.sign(f) * np.abs(f) ** alpha).astype(np.float32)


@register_op
class DequantPow(OpDef):
    name = "dequant_pow"
    operands = ("q", "scale")
    attrs = {"group": Attr("int", bounds=COUNT), "alpha": Attr("float"), "dtype": Attr("dtype", DTYPES["f32"])}
    doc = ("W[o, i] = scale[o, g] * sign(q[o, i]) * |q[o, i]|^alpha, g = i // group; q: signed integer "
           "codes, alpha > 0. The levels sign(q)|q|^alpha are rounded to f32 and multiplied by the f32 "
           "scale, so alpha = 1 is dequant_affine (no zero) bit for bit")

    def infer(self, ins, attrs):
        q, s = ins
        need(q.dtype.kind == "int", f"dequant_pow: codes must be signed integers, got {q}")
        check_grouped(self.name, q, s, attrs["group"])
        a = attrs["alpha"]
        need(math.isfinite(a) and a > 0, f"dequant_pow: alpha must be a positive finite number, got {a}")
        need(attrs["dtype"].is_float, f"dequant_pow: dtype must be floating point, got {attrs['dtype']}")
        return q.with_dtype(attrs["dtype"])

    def reference(self, ins, attrs):
        s = expand_groups(ins[1].astype(np.float32), attrs["group"], ins[0].shape[1])
        return (pow_levels(ins[0], attrs["alpha"]) * s).astype(attrs["dtype"].np)
