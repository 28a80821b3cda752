"""Block floating point: integer mantissas sharing one power-of-two exponent per block of columns."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op
from .affine import expand_groups


@register_op
class DequantBfp(OpDef):
    """W[o, i] = mant[o, i] * 2^exp[o, i // block]: a shared exponent per `block` input columns
    (the last block is short when `block` does not divide `in`). Mantissas are signed integers
    of up to 8 bits (i2, i3, i4, i8), exponents i8; the product is exact in f32 for every
    exponent >= -149 and cast to `dtype`."""

    name = "dequant_bfp"
    operands = ("mant", "exp")
    attrs = {"block": Attr("int", bounds=COUNT), "dtype": Attr("dtype", DTYPES["f32"])}
    doc = "W[o, i] = mant[o, i] * 2^exp[o, i // block]: block floating point, i8 shared exponents"

    def infer(self, ins, attrs):
        m, e = ins
        need(m.dtype.kind == "int" and m.dtype.bits <= 8 and m.dtype.name != "tern",
             f"dequant_bfp: mantissas must be signed integers of at most 8 bits, got {m}")
        need(e.dtype == DTYPES["i8"], f"dequant_bfp: exponents must be i8, got {e}")
        need(m.rank == 2 and m.is_static, f"dequant_bfp: mantissas must be a static 2-D [out, in] tensor, got {m}")
        need(attrs["block"] >= 1, f"dequant_bfp: block must be >= 1, got {attrs['block']}")
        want = (m.shape[0], -(-m.shape[1] // attrs["block"]))  # type: ignore[operator]
        need(e.shape == want, f"dequant_bfp: exp {e} must be [{want[0]}, {want[1]}] for {m} with block {attrs['block']}")
        return TensorType(attrs["dtype"], m.shape)

    def reference(self, ins, attrs):
        e = expand_groups(ins[1].astype(np.int32), attrs["block"], ins[0].shape[1])
        return np.ldexp(ins[0].astype(np.float32), e).astype(attrs["dtype"].np)
