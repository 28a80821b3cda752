"""NUPES (Yvinec et al., 2023, "NUPES: Non-Uniform Post-Training Quantization via Power Exponent
Search"): a symmetric grid warped by a power law, its exponent searched per layer.

Grid (op `dequant_pow`): Ŵ = s · sign(q) · |q|^α, qmax = 2^(bits-1) - 1, one f16 scale s per group
of `group` input columns. α > 1 packs levels near zero (where most weights of a bell-shaped row
lie), α < 1 near the edge; α = 1 is the uniform grid. Codes use the signed range [-qmax - 1, qmax]
like rtn; the extra negative level is reached only when the f16 rounding of a (subnormal) scale
pushes absmax past qmax^α.

Scale, for each α, by default in closed form: s = absmax(group) / qmax^α, so the outermost level
s·qmax^α lands on the group's largest |W| and nothing is clipped. At α = 1 this is rtn's symmetric
scale, and the codes round half to even like rtn, so `nupes{alphas="1.0"}` reproduces
`rtn{symmetric=true}` exactly (codes, scales and the f32 weights `dequant_pow` rebuilds). Option
`clip` < 1 adds a small search: each group takes the best of s·r, r = 1, 0.95, ... >= clip, under
the same (weighted) error as the exponent, clipping a few large weights to refine the rest. Codes
are each weight's nearest level.

Exponent, per layer: α* = argmin over the candidate list of
    data_free:  Σ_ij (W_ij − Ŵ_ij(α))²
    data:       Σ_ij E[x_j²] (W_ij − Ŵ_ij(α))²   (E[x_j²] from the calibration data: the expected
                                                  squared output error of the layer, cross terms dropped)
ties going to the earlier candidate. (The paper also refines α by gradient descent inside a GPTQ
loop; this pass is its search-only, rounding-to-nearest form.)
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES
from ir.ops.quant.power import pow_levels

from ._quant import Quantized, linear_input_moments, padded_groups, quantize_linears, select_linears
from .base import Pass, PassContext, register_pass

F16_TINY, F16_MAX = float(np.finfo(np.float16).smallest_subnormal), float(np.finfo(np.float16).max)
MODES = ("data_free", "data")


def parse_alphas(spec: str) -> list[float]:
    """`"0.5,0.75,1.0"` (a list) or `"0.5:2.0:0.25"` (start:stop:step, stop included) -> exponents."""
    try:
        if ":" in spec:
            a, b, step = (float(x) for x in spec.split(":"))
            if not step > 0 or b < a:
                raise ValueError
            out = [round(a + i * step, 12) for i in range(int(np.floor((b - a) / step + 1e-9)) + 1)]
        else:
            out = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ir.PassError(f"nupes: alphas must be a list like \"0.5,1.0,1.5\" or a range start:stop:step "
                           f"like \"0.5:2.0:0.25\", got {spec!r}") from None
    if not out or not all(np.isfinite(x) and x > 0 for x in out):
        raise ir.PassError(f"nupes: exponents must be positive and finite, got {spec!r}")
    return out


def nupes(W: np.ndarray, bits: int, group: int, alpha: float, importance: np.ndarray | None = None,
          clip: float = 1.0) -> Quantized:
    """W [out, in] f32 -> codes and f16 scales on the grid s·sign(q)·|q|^α (see the module doc).
    With clip < 1, each group's scale is the best of r·absmax/qmax^α, r = 1, 0.95, ... >= clip,
    under the (importance-weighted) squared error of the group."""
    qmax = 2 ** (bits - 1) - 1
    Wg, mask = padded_groups(W, group)
    imp = padded_groups(importance[None, :], group)[0][0] if importance is not None else mask[0].astype(np.float64)
    amax = np.abs(Wg).max(axis=-1)
    best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (codes, scales, group errors)
    for r in np.arange(1.0, clip - 1e-9, -0.05):
        s = np.where(amax > 0, r * amax / qmax**alpha, 1.0)  # an all-zero group keeps codes 0 and a unit scale
        s = np.clip(s, F16_TINY, F16_MAX).astype(np.float16)  # never 0 or inf in f16
        s32 = s.astype(np.float32)[..., None]
        t = np.abs(Wg) / s32  # |W| in units of the scale
        if alpha == 1.0:
            k = np.rint(t)  # half to even, as rtn
        else:
            lv = pow_levels(np.arange(qmax + 2), alpha).astype(np.float64)  # the levels the op computes
            k = np.searchsorted((lv[:-1] + lv[1:]) / 2, t)  # nearest level (a tie goes down)
        q = (np.sign(Wg) * np.minimum(k, np.where(Wg < 0, qmax + 1, qmax))).astype(np.int8)  # rtn's signed range
        err = (((Wg - pow_levels(q, alpha) * s32).astype(np.float64) ** 2) * imp).sum(axis=-1)
        if best is None:
            best = (q, s, err)
        else:
            better = err < best[2]
            best = (np.where(better[..., None], q, best[0]), np.where(better, s, best[1]), np.minimum(err, best[2]))
    assert best is not None
    q = best[0].reshape(W.shape[0], -1)[:, : W.shape[1]]
    return Quantized("dequant_pow", {"q": (q, DTYPES[f"i{bits}"]), "scale": (best[1], DTYPES["f16"])},
                     {"group": group, "alpha": alpha})


def rebuild(q: Quantized) -> np.ndarray:
    """The f32 weight the graph computes from `q`."""
    op = ir.OPS[q.op]
    return op.reference([a for a, _ in q.parts.values()], op.normalize_attrs(q.attrs))


def search(W: np.ndarray, bits: int, group: int, alphas: list[float], importance: np.ndarray | None,
           clip: float = 1.0) -> Quantized:
    """The candidate with the least (importance-weighted) squared weight error; ties: the earlier one."""
    best, best_err = None, np.inf
    for a in alphas:
        q = nupes(W, bits, group, a, importance, clip)
        d2 = (W.astype(np.float64) - rebuild(q)) ** 2
        err = float((d2 @ importance).sum() if importance is not None else d2.sum())
        if best is None or err < best_err:
            best, best_err = q, err
    return best  # type: ignore[return-value]


@register_pass
@dataclass(frozen=True)
class Nupes(Pass):
    """NUPES power-exponent grids s·sign(q)·|q|^α, `bits` bits per group of `group` columns, α searched per layer.

    mode=data_free minimises the weight MSE; mode=data the activation-weighted error Σ E[x_j²](W − Ŵ)²
    (needs calibration data). alphas: a list "0.5,1.0" or a range "0.5:2.0:0.25". Scales: absmax/qmax^α
    (α = 1 is then rtn exactly), or with clip < 1 the best of r·absmax/qmax^α, r = 1, 0.95, ... >= clip.
    """

    name = "nupes"
    bits: int = 4
    group: int = 128
    mode: str = "data_free"
    alphas: str = "0.5,0.75,1.0,1.25,1.5,2.0"
    clip: float = 1.0
    layers: str = "*"
    head: bool = False

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        if not 2 <= self.bits <= 8:
            raise ir.PassError(f"nupes: bits must be 2..8, got {self.bits}")
        if self.group < 1:
            raise ir.PassError(f"nupes: group must be >= 1, got {self.group}")
        if not 0 < self.clip <= 1:
            raise ir.PassError(f"nupes: clip is the smallest scale ratio searched, in (0, 1], got {self.clip}")
        if self.mode not in MODES:
            raise ir.PassError(f"nupes: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        alphas = parse_alphas(self.alphas)
        names = {w for _, w in select_linears(g, self.layers, self.head)}
        if not names:
            return g.copy()
        moments: dict[str, np.ndarray] = {}
        if self.mode == "data":
            if not ctx.calibration:
                raise ir.PassError("nupes{mode=data} weights the error with E[x^2] of each layer's inputs and needs "
                                   "calibration data: pass compile(..., calibration=[...]) (or a PassContext with "
                                   "calibration), or use mode=data_free")
            moments = linear_input_moments(g, ctx.calibration, names, progress=ctx.progress)
        chosen: dict[str, float] = {}

        def quantize(w: str, W: np.ndarray) -> Quantized:
            imp = moments[w].astype(np.float64) if self.mode == "data" else None
            q = search(W, self.bits, self.group, alphas, imp, self.clip)
            chosen[w] = q.attrs["alpha"]
            return q

        out = quantize_linears(g, quantize, desc=f"nupes{self.bits}", layers=self.layers, head=self.head,
                               progress=ctx.progress)
        hist = ", ".join(f"{a:g}: {n}" for a, n in sorted(Counter(chosen.values()).items()))
        print(f"nupes{{bits={self.bits}, group={self.group}, mode={self.mode}, clip={self.clip}}}: {len(chosen)} layers, "
              f"alpha per layer {{{hist}}}", file=sys.stderr)
        return out
