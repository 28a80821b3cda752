"""Round-to-nearest per group: the common baseline of every low-bit method."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, padded_groups, quantize_linears
from .base import Pass, register_pass


def rtn(W: np.ndarray, bits: int, group: int, symmetric: bool = True) -> Quantized:
    """Symmetric: q = clamp(round(W / s), -2^(b-1), 2^(b-1) - 1), s = absmax / (2^(b-1) - 1).
    Asymmetric: q = clamp(round(W / s) + z, 0, 2^b - 1), s = (max - min) / (2^b - 1), z = round(-min / s)."""
    Wg, mask = padded_groups(W, group)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = np.abs(Wg).max(axis=-1) / qmax
        s = np.where(s > 0, s, 1.0).astype(np.float16)  # an all-zero group keeps codes 0 and a unit scale
        q = np.clip(np.rint(Wg / s.astype(np.float32)[..., None]), -qmax - 1, qmax)
        dt = DTYPES[f"i{bits}"] if bits < 8 else DTYPES["i8"]
        parts = {"q": (q.reshape(W.shape[0], -1)[:, : W.shape[1]].astype(np.int8), dt), "scale": (s, DTYPES["f16"])}
    else:
        lo = np.where(mask, Wg, np.inf).min(axis=-1)
        hi = np.where(mask, Wg, -np.inf).max(axis=-1)
        # The zero point -lo / s must stay a finite f16: a narrow group far from 0 (a range of 1e-5 at 1.7)
        # would need |z| ~ 1e5, which overflows to inf. Such a scale widens to max|W| / 2^15 (|z| <= 2^15).
        s = np.maximum((hi - lo) / (2**bits - 1), np.maximum(np.abs(lo), np.abs(hi)) / 2**15).astype(np.float16)
        s = np.where(s > 0, s, np.float16(1.0))
        s32 = s.astype(np.float32)
        # a float zero point covers any range; codes round against the stored (f16) value, which
        # is not an integer once |z| > 2048 (a narrow group far from 0)
        z = np.rint(-lo / s32).astype(np.float16)
        q = np.clip(np.rint(Wg / s32[..., None] + z.astype(np.float32)[..., None]), 0, 2**bits - 1)
        dt = DTYPES[f"u{bits}"] if bits < 8 else DTYPES["u8"]
        parts = {"q": (q.reshape(W.shape[0], -1)[:, : W.shape[1]].astype(np.uint8), dt),
                 "scale": (s, DTYPES["f16"]), "zero": (z, DTYPES["f16"])}
    return Quantized("dequant_affine", parts, {"group": group})


@register_pass
@dataclass(frozen=True)
class Rtn(Pass):
    """Round-to-nearest weights, `bits` bits per group of `group` input columns (f16 scales).

    Error contract: every weight is within half a step of its group's grid, |W - Ŵ| <= s/2, plus
    what f16 parameters cost: the scale's rounding (2^-11 relative, 2^-25 when subnormal) times the weight's code distance
    from the grid's anchor (0 symmetric, the group's minimum asymmetric), and, asymmetric, the zero
    point's rounding (2^-11 of the group's absmax). `group` larger than a row means per row.
    """

    name = "rtn"
    bits: int = 4
    group: int = 128
    symmetric: bool = True
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        if not 2 <= self.bits <= 8:
            raise ir.PassError(f"rtn: bits must be 2..8, got {self.bits}")
        if self.group < 1:
            raise ir.PassError(f"rtn: group must be >= 1, got {self.group}")
        return quantize_linears(g, lambda w, W: rtn(W, self.bits, self.group, self.symmetric),
                                desc=f"rtn{self.bits}", layers=self.layers, head=self.head)
