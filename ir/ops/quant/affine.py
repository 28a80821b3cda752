"""Uniform (affine) grids: round-to-nearest int2..int8 per group of input columns."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op


def groups(n_in: int, group: int) -> int:
    """Column groups of a row: the last one is short when `group` does not divide `n_in`."""
    return -(-n_in // group)


def expand_groups(s: np.ndarray, group: int, n_in: int) -> np.ndarray:
    """[..., ngroups] -> [..., n_in]: each group's value repeated over its columns."""
    return np.repeat(s, min(group, n_in), axis=-1)[..., :n_in]  # a group wider than the row covers it once


def check_grouped(op: str, q: TensorType, s: TensorType, group: int, what: str = "scale") -> None:
    need(q.rank == 2 and q.is_static, f"{op}: codes must be a static 2-D [out, in] tensor, got {q}")
    need(group >= 1, f"{op}: group must be >= 1, got {group}")
    want = (q.shape[0], groups(q.shape[1], group))  # type: ignore[arg-type]
    need(s.shape == want, f"{op}: {what} {s} must be [{want[0]}, {want[1]}] for {q} with group {group}")
    need(s.dtype.is_float, f"{op}: {what} must be floating point, got {s}")


@register_op
class DequantAffine(OpDef):
    name = "dequant_affine"
    operands = ("q", "scale", "zero?")
    attrs = {"group": Attr("int", bounds=COUNT), "dtype": Attr("dtype", DTYPES["f32"])}
    doc = ("W[o, i] = (q[o, i] - zero[o, g]) * scale[o, g], g = i // group (zero = 0 when absent); "
           "q: integer codes of any width, computed in f32")

    def infer(self, ins, attrs):
        q, s = ins[0], ins[1]
        need(q.dtype.kind in ("int", "uint"), f"dequant_affine: codes must be integers, got {q}")
        check_grouped(self.name, q, s, attrs["group"])
        if len(ins) == 3:
            need(ins[2].shape == s.shape and ins[2].dtype == s.dtype, f"dequant_affine: zero {ins[2]} must match scale {s}")
        return TensorType(attrs["dtype"], q.shape)

    def reference(self, ins, attrs):
        q, n = ins[0].astype(np.float32), ins[0].shape[1]
        s = expand_groups(ins[1].astype(np.float32), attrs["group"], n)
        z = expand_groups(ins[2].astype(np.float32), attrs["group"], n) if len(ins) == 3 else 0.0
        return ((q - z) * s).astype(attrs["dtype"].np)
