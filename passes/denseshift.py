"""DenseShift: zero-free power-of-two weights W ≈ s · sign · 2^-p, fitted per row (or group)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, padded_groups, quantize_linears
from .base import Pass, register_pass

S_MIN = float(np.finfo(np.float16).tiny)  # 2^-14: the smallest normal f16 scale
S_MAX = float(np.finfo(np.float16).max)
INIT = tuple(2.0 ** (-k / 8) for k in range(-2, 8))  # starting scales tried, as fractions of the absmax


def nearest_levels(r: np.ndarray, P: int) -> np.ndarray:
    """p in 0..P with 2^-p nearest to r = |w|/s >= 0 (by value; ties go to the larger level).

    Read off the log domain: r = m · 2^e with m in [0.5, 1) lies between the levels 2^(e-1) and
    2^e, and the nearer one wins: 2^e when m >= 3/4 (the value midpoint, not the log midpoint
    2^(e-1/2): only the value-nearest level makes the assignment step of `fit_shift` an MSE
    descent). Clipping to 0..P then gives the nearest of the allowed levels; r = 0 takes P."""
    m, e = np.frexp(r)
    p = np.where(m >= 0.75, -e, 1 - e)
    return np.where(r > 0, np.clip(p, 0, P), P).astype(np.int32)


def _f16(s: np.ndarray) -> np.ndarray:
    """Scales as stored: f16, clipped to its normal range (so no scale is ever 0), back in f64."""
    return np.clip(s, S_MIN, S_MAX).astype(np.float16).astype(np.float64)


def fit_shift(W: np.ndarray, bits: int, group: int, iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Fit s[o, g] and p[o, i] minimising sum (|W| - s · 2^-p)^2 per group (the sign is W's, + for 0).

    Alternates (Lloyd's algorithm on a log-spaced codebook): (1) each weight takes its nearest level
    for the current scale (`nearest_levels`); (2) the scale is refit in closed form for those
    levels, s = Σ|w|·2^-p / Σ 4^-p, then rounded to f16. Both steps lower the MSE (rounding to the
    nearest f16 moves s no further from the refit optimum than the old f16 scale was, and the MSE
    is a parabola in s); a group whose MSE would still rise (float ties) keeps its old scale, so the
    history is non-increasing by construction. Starts from the best of the scales absmax · 2^(-k/8), k = -2..7.

    Returns (scale f16 [out, ngroups], p int32 [out, in], negative bool [out, in], MSE history: one
    [out, ngroups] array per step, the start first). Every weight sits at its nearest level for the
    final scale. An all-zero group gets the smallest scale 2^-14 and the smallest level, so it
    dequantizes to +2^-(14+P) (P = 2^(bits-1) - 1), never to zero.
    """
    P = 2 ** (bits - 1) - 1
    out, n = W.shape
    Wg, mask = padded_groups(W.astype(np.float64), group)
    A, m = np.abs(Wg), mask.astype(np.float64)
    levels = np.ldexp(1.0, -np.arange(P + 1))

    def assign(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = nearest_levels(A / s[..., None], P)
        return s, p, (((A - s[..., None] * levels[p]) ** 2) * m).sum(-1) / m.sum(-1)

    def keep_better(cur: tuple, new: tuple, strict: bool) -> tuple:
        better = new[2] < cur[2] if strict else new[2] <= cur[2]
        return tuple(np.where(better.reshape(better.shape + (1,) * (c.ndim - 2)), b, c) for c, b in zip(cur, new))

    amax = A.max(-1)
    state = assign(_f16(amax * INIT[0]))
    for f in INIT[1:]:
        state = keep_better(state, assign(_f16(amax * f)), strict=True)
    history = [state[2]]
    for _ in range(iters):
        s, p, _ = state
        lv = levels[p] * m
        state = keep_better(state, assign(_f16((A * lv).sum(-1) / (lv * lv).sum(-1))), strict=False)
        history.append(state[2])
        if np.array_equal(state[0], s):
            break  # a fixed point: the same scales give the same levels
    s, p, _ = state
    neg = (Wg < 0).reshape(out, -1)[:, :n]
    return s.astype(np.float16), p.reshape(out, -1)[:, :n], neg, history


def denseshift(W: np.ndarray, bits: int, group: int, iters: int) -> Quantized:
    """The `dequant_shift` parts of one weight: codes sign << (bits-1) | p and f16 scales."""
    s, p, neg, _ = fit_shift(W, bits, group, iters)
    code = (neg.astype(np.int32) << (bits - 1)) | p
    dt = DTYPES[f"u{bits}"] if f"u{bits}" in DTYPES else DTYPES["u8"]
    return Quantized("dequant_shift", {"code": (code.astype(np.uint8), dt), "scale": (s, DTYPES["f16"])},
                     {"bits": bits, "group": group})


@register_pass
@dataclass(frozen=True)
class DenseShift(Pass):
    """DenseShift weights (Li et al. 2022): W ≈ s[o, g] · (-1)^sign · 2^-p, p in 0 .. 2^(bits-1) - 1.

    `bits` bits per weight (1 sign bit, bits-1 exponent bits; no zero level) and one f16 scale per
    group of `group` input columns (0: one per row). Each group's scale minimises the weight MSE
    with every weight at its nearest level (see `fit_shift`: `iters` rounds of assign + closed-form
    refit). Multiplication-free: a backend applies 2^-p as a shift and the sign as a negation, and
    multiplies by s once per group.

    Contracts: no weight dequantizes to zero (an all-zero row becomes +2^-(14+P), P = 2^(bits-1) - 1,
    nonzero in f32 for every bits <= 8); every weight is at its value-nearest level for the final
    f16 scale; the MSE never rises from one iteration to the next.
    """

    name = "denseshift"
    bits: int = 3
    group: int = 0
    iters: int = 10
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        if not 2 <= self.bits <= 8:
            raise ir.PassError(f"denseshift: bits must be 2..8, got {self.bits}")
        if self.group < 0 or self.iters < 0:
            raise ir.PassError(f"denseshift: group and iters must be >= 0 (group 0 = per row), got {self.group}, {self.iters}")

        def quantize(name: str, W: np.ndarray) -> Quantized:
            if not np.isfinite(W).all():
                raise ir.PassError(f"denseshift: @{name} has non-finite weights")
            return denseshift(W, self.bits, self.group or W.shape[1], self.iters)

        return quantize_linears(g, quantize, desc=f"denseshift{self.bits}", layers=self.layers, head=self.head)
