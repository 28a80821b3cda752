"""BitNet b1.58 absmean ternary weights: one trit-plane with one scale per row (or group)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, padded_groups, quantize_linears
from .base import Pass, register_pass


def absmean(W: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] -> (trits [out, ng, group] int8, γ [out, ng] f16) on `padded_groups(W, group)`:
    γ = mean |W| over the group's real entries, T = clamp(round(W / γ), -1, 1). γ is rounded to
    f16 *before* the codes are chosen, so the codes are the ones for the stored scale. A group
    whose γ is 0 (all zero, or below f16's range) gets γ = 1 and all-zero codes."""
    Wg, mask = padded_groups(W, group)
    g = (np.abs(Wg).sum(-1) / mask.sum(-1)).astype(np.float16)
    g = np.where(g > 0, g, np.float16(1.0))
    t = np.clip(np.rint(Wg / g.astype(np.float32)[..., None]), -1, 1).astype(np.int8)
    return t, g


def row_group(W: np.ndarray, group: int) -> int:
    """`group` <= 0 means one group per row."""
    return group if group > 0 else W.shape[1]


def planes(t: np.ndarray, alpha: np.ndarray, n: int, group: int) -> Quantized:
    """Trits [K, out, ng, group] (padded) and scales [K, out, ng] -> a `dequant_planes` weight."""
    k, out = t.shape[:2]
    codes = t.reshape(k, out, -1)[..., :n]
    return Quantized("dequant_planes", {"t": (codes, DTYPES["tern"]), "alpha": (alpha, DTYPES["f16"])}, {"group": group})


@register_pass
@dataclass(frozen=True)
class Ternary(Pass):
    """BitNet b1.58 absmean ternary weights: W ≈ γ·T, γ = mean|W| per row (`group=0`) or per
    group of `group` input columns, T = clamp(round(W/γ), -1, 1), stored as one trit-plane of
    `dequant_planes` (2 bits per weight) and f16 γ (16 / group bits per weight).

    Error contract: every weight whose |W| <= 1.5·γ is within γ/2 of Ŵ; larger ones are clipped
    to ±γ (the method's choice: no outlier handling). Quantizing the same weight twice gives the
    same codes (deterministic, no data).
    """

    name = "ternary"
    group: int = 0
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        def quantize(_: str, W: np.ndarray) -> Quantized:
            gs = row_group(W, self.group)
            t, gamma = absmean(W, gs)
            return planes(t[None], gamma[None], W.shape[1], gs)

        return quantize_linears(g, quantize, desc="ternary", layers=self.layers, head=self.head)
