"""Power-of-two (shift) grids: DenseShift's zero-free sign * 2^-p levels per group of input columns."""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op
from .affine import check_grouped, expand_groups


def shift_fields(code: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A `bits`-bit code -> (sign bit, exponent p): bit bits-1 is the sign, the low bits-1 bits are p."""
    c = np.asarray(code).astype(np.int32)
    return c >> (bits - 1), c & ((1 << (bits - 1)) - 1)


@register_op
class DequantShift(OpDef):
    """DenseShift (Li et al. 2022): every weight is a signed power of two times its group's scale,
    with no zero level, so a backend multiplies by shifting:

        W[o, i] = scale[o, g] * (-1)^sign * 2^-p,   g = i // group
        code    = sign << (bits - 1) | p,  sign in {0 (+), 1 (-)},  p in 0 .. 2^(bits-1) - 1

    e.g. bits = 3: codes 0..3 are +s, +s/2, +s/4, +s/8 and codes 4..7 are -s, -s/2, -s/4, -s/8.
    Codes are stored in an unsigned dtype of at least `bits` bits (u3 for 3 bits, u8 above 4);
    the product is computed in f32 (exact: a power-of-two multiply) and cast to `dtype`.
    """

    name = "dequant_shift"
    operands = ("code", "scale")
    attrs = {"bits": Attr("int"), "group": Attr("int", bounds=COUNT), "dtype": Attr("dtype", DTYPES["f32"])}
    doc = ("W[o, i] = scale[o, i // group] * (-1)^s * 2^-p with code = s << (bits-1) | p: "
           "zero-free signed powers of two (DenseShift)")

    def infer(self, ins, attrs):
        q, s = ins
        b = attrs["bits"]
        need(2 <= b <= 8, f"dequant_shift: bits must be 2..8, got {b}")
        need(q.dtype.kind == "uint" and q.dtype.bits >= b,
             f"dequant_shift: codes must be unsigned with at least {b} bits, got {q}")
        check_grouped(self.name, q, s, attrs["group"])
        return TensorType(attrs["dtype"], q.shape)

    def reference(self, ins, attrs):
        sign, p = shift_fields(ins[0], attrs["bits"])
        s = expand_groups(ins[1].astype(np.float32), attrs["group"], ins[0].shape[1])
        return np.ldexp(np.where(sign == 1, -s, s), -p).astype(attrs["dtype"].np)
