"""LLM.int8() (Dettmers et al. 2022): row-wise absmax int8 weights, run by `int8_linear`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, quantize_linears
from .base import Pass, register_pass


def int8_rowwise(W: np.ndarray, threshold: float = 6.0) -> Quantized:
    """wscale[o] = max_i |W[o, i]|, wq[o, i] = round_half_even(127 * W[o, i] / wscale[o]) (eq. 1 of
    the paper, per row). The codes are computed in f64, so |W - wq * wscale / 127| <= wscale / 254
    holds to within f64 rounding; an all-zero row gets wscale 0 and codes 0."""
    a = np.abs(W).max(axis=1, initial=np.float32(0))
    q = np.rint(W.astype(np.float64) * 127 / np.where(a > 0, a, 1).astype(np.float64)[:, None])
    parts = {"q": (np.clip(q, -127, 127).astype(np.int8), DTYPES["i8"]), "scale": (a.astype(np.float32), DTYPES["f32"])}
    return Quantized("int8_linear", parts, {"threshold": threshold}, replaces_linear=True)


@register_pass
@dataclass(frozen=True)
class Int8(Pass):
    """LLM.int8(): int8 row-wise weights; int8 row-wise activations with f16 outlier columns.

    Each selected `linear(x, @w, bias?)` becomes `int8_linear(x, @w.q, @w.scale, bias?) {threshold}`
    (8 bits per weight plus one f32 scale per output row). Input columns whose magnitude reaches
    `threshold` in any token run in 16 bits; threshold <= 0 turns that path off.

    Error contract: |W - wq * wscale / 127| <= max_i |W[o, i]| / 254 for every weight of row o; the
    layer then computes exactly what the `int8_linear` reference says.
    """

    name = "int8"
    threshold: float = 6.0
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        return quantize_linears(g, lambda w, W: int8_rowwise(W, self.threshold), desc="int8",
                                layers=self.layers, head=self.head)
