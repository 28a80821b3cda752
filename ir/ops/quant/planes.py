"""Trit-planes: a weight as a sum of K scaled ternary planes (PTQTP; K = 1 is BitNet b1.58)."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op
from .affine import expand_groups, groups


@register_op
class DequantPlanes(OpDef):
    name = "dequant_planes"
    operands = ("t", "alpha")
    attrs = {"group": Attr("int", bounds=COUNT), "dtype": Attr("dtype", DTYPES["f32"])}
    doc = ("W[o, i] = sum_k alpha[k, o, g] * t[k, o, i], g = i // group; t: trits {-1, 0, 1} [K, out, in], "
           "alpha: float [K, out, ngroups], computed in f32")

    def infer(self, ins, attrs):
        t, a = ins
        need(t.dtype.name == "tern", f"dequant_planes: planes must be tern, got {t}")
        need(t.rank == 3 and t.is_static, f"dequant_planes: planes must be a static 3-D [K, out, in] tensor, got {t}")
        need(attrs["group"] >= 1, f"dequant_planes: group must be >= 1, got {attrs['group']}")
        k, out, n = t.shape
        want = (k, out, groups(n, attrs["group"]))
        need(a.shape == want, f"dequant_planes: alpha {a} must be [{k}, {out}, {want[2]}] for {t} with group {attrs['group']}")
        need(a.dtype.is_float, f"dequant_planes: alpha must be floating point, got {a}")
        return TensorType(attrs["dtype"], t.shape[1:])

    def reference(self, ins, attrs):
        t, a = ins[0].astype(np.float32), expand_groups(ins[1].astype(np.float32), attrs["group"], ins[0].shape[2])
        return np.einsum("koi,koi->oi", t, a).astype(attrs["dtype"].np)
