"""PTQTP, Post-Training Quantization to Trit-Planes: W ≈ Σ_k diag(α_k)·T_k, fitted without data
(the paper), or to calibration activations with GPTQ-style error feedback (beyond it)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

import ir

from ._quant import (Quantized, linear_input_moments, linear_input_stats, padded_groups, quantize_linears,
                     select_linears)
from .base import Pass, PassContext, register_pass
from .ternary import absmean, planes, row_group

COND_MAX = 1e3  # f16 scales keep 11 bits: a worse-conditioned K x K system loses its fit when they are rounded
F16_MAX = float(np.finfo(np.float16).max)


@lru_cache(maxsize=None)
def code_table(k: int) -> np.ndarray:
    """All 3^K code vectors [3^K, K], the all-zero one first."""
    return np.array(list(itertools.product((0, 1, -1), repeat=k)), dtype=np.float64)


@dataclass
class Fit:
    """A fitted weight: trits [K, out, ng, group] (padded), f16 scales [K, out, ng], and the
    weighted squared error Σ d·(W − Ŵ)² after the initialisation and after every iteration."""

    t: np.ndarray
    alpha: np.ndarray
    errors: list[float] = field(default_factory=list)


def _recon(t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Ŵ [out, ng, group] = Σ_k α_k·T_k, in float64."""
    w = np.zeros(t.shape[1:])
    for tk, ak in zip(t, a):
        w += tk * ak.astype(np.float64)[..., None]
    return w


def _err(Wg: np.ndarray, h: np.ndarray, t: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Weighted squared error per (row, group) [out, ng]."""
    return np.einsum("ogi,gi->og", (Wg - _recon(t, a)) ** 2, h)


def _scales(Wg: np.ndarray, h: np.ndarray, t: np.ndarray, ridge: float) -> np.ndarray:
    """Step (a): for fixed codes, (T H Tᵀ + λI)·α = T H w per (row, group), all systems at once."""
    k = t.shape[0]
    th = t * h.astype(np.float32)
    M = np.empty(t.shape[1:3] + (k, k))
    for i, j in itertools.combinations_with_replacement(range(k), 2):
        M[..., i, j] = M[..., j, i] = np.einsum("ogi,ogi->og", th[i], t[j], dtype=np.float64)
    b = np.einsum("kogi,ogi->ogk", th, Wg)
    s = np.trace(M, axis1=-2, axis2=-1) / k
    e = np.linalg.eigvalsh(M)  # ascending
    # λ = ridge·mean eigenvalue, raised so that cond(M + λI) <= COND_MAX (a plane that is all zero
    # in the group, or two planes that agree, make M singular); an all-zero M gets α = 0.
    lam = np.maximum(ridge * s, (e[..., -1] - COND_MAX * e[..., 0]) / (COND_MAX - 1))
    lam = np.where(s > 0, lam, 1.0)
    a = np.linalg.solve(M + lam[..., None, None] * np.eye(k), b[..., None])[..., 0]
    return np.clip(np.moveaxis(a, -1, 0), -F16_MAX, F16_MAX).astype(np.float16)


def _grid(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 3^K values Σ_k α_k c_k of every (row, group), ascending [out, ng, 3^K] (the all-zero
    code first among equal values), their codes [K, out, ng, 3^K], and the midpoints between them."""
    C = code_table(a.shape[0])
    V = np.einsum("ck,kog->ogc", C, a.astype(np.float64))
    order = np.argsort(V, axis=-1, kind="stable")
    V = np.take_along_axis(V, order, -1)
    return V, np.moveaxis(C[order], -1, 0).astype(np.int8), (V[..., 1:] + V[..., :-1]) / 2


def _codes(Wg32: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Step (b): for fixed scales, each element's nearest of the 3^K values (the weighted error is
    a sum of per-element terms, so the weights don't change the choice): count the midpoints below
    the weight, look the code up."""
    _, codes, mids = _grid(a)
    mids = mids.astype(np.float32)
    idx = np.zeros(Wg32.shape, np.intp)
    for m in range(mids.shape[-1]):
        idx += Wg32 > mids[..., m:m + 1]
    return np.stack([np.take_along_axis(c, idx, -1) for c in codes])


def fit_planes(W: np.ndarray, planes: int = 2, group: int = 128, iters: int = 50, tol: float = 1e-4,
               ridge: float = 1e-6, importance: np.ndarray | None = None) -> Fit:
    """Fit K = `planes` trit-planes to W [out, in]; see `Ptqtp`. `importance` [in] weights each
    column's squared error (E[x_j²] of the layer input); None weighs all columns alike."""
    gs = row_group(W, group)
    out, n = W.shape
    Wg, mask = padded_groups(W.astype(np.float64), gs)
    h = mask[0].astype(np.float64)  # [ng, gs]; padding weighs 0
    if importance is not None:
        d = np.asarray(importance, np.float64)
        d = d / d.mean() if d.mean() > 0 else np.ones_like(d)
        h = h * padded_groups((d + 1e-2)[None], gs)[0][0]  # a 1% floor: no column is ignored entirely
    # Init, progressively on the residual: plane 1 is the absmean ternary (the very codes and f16
    # scale `ternary` stores); plane k > 1 takes γ = mean|r| and the trit that best fits r (0 unless
    # |r| > γ/2, so no element's error grows).
    t = np.zeros((planes, out) + Wg.shape[1:], np.int8)
    a = np.zeros((planes, out, Wg.shape[1]), np.float16)
    t[0], a[0] = absmean(W, gs)
    r = Wg - a[0].astype(np.float64)[..., None] * t[0]
    for k in range(1, planes):
        a[k] = (np.abs(r).sum(-1) / mask.sum(-1)).astype(np.float16)
        g = a[k].astype(np.float64)[..., None]
        t[k] = np.where((np.abs(r) > g / 2) & (g > 0), np.sign(r), 0)
        r -= g * t[k]
    e = _err(Wg, h, t, a)
    fit = Fit(t, a, [float(e.sum())])
    Wg32 = Wg.astype(np.float32)
    for _ in range(iters):
        a_new = _scales(Wg, h, t, ridge)
        e_new = _err(Wg, h, t, a_new)
        better = e_new < e  # keep the old scales where the ridge or f16 rounding made things worse
        a = np.where(better, a_new, a)
        t_new = _codes(Wg32, a)
        e_new = _err(Wg, h, t_new, a)
        better = e_new <= e  # exact up to float32 rounding in the search: keep a group's old codes if not better
        t = np.where(better[..., None], t_new, t)
        e = np.where(better, e_new, e)
        prev = fit.errors[-1]
        fit.errors.append(float(e.sum()))
        if prev <= 0 or prev - fit.errors[-1] <= tol * prev:
            break
    fit.t, fit.alpha = t, a
    return fit


def input_grams(g: ir.Graph, calibration: list[list[np.ndarray]], names: set[str],
                progress: bool = True) -> dict[str, np.ndarray]:
    """E[x xᵀ] [in, in] of the input of every linear layer whose weight is in `names`, over the
    calibration tokens, keyed by weight name; layers that read one value (q/k/v) share one array.
    (`linear_input_moments` is its diagonal.)"""
    def gram(X: np.ndarray) -> np.ndarray:
        X = X.astype(np.float32)
        return (X.T @ X).astype(np.float64)

    return linear_input_stats(g, calibration, names, gram, progress)


def gptq_planes(W: np.ndarray, H: np.ndarray, planes: int = 2, group: int = 128, iters: int = 50,
                tol: float = 1e-4, ridge: float = 1e-6, damp: float = 0.01, block: int = 128) -> Fit:
    """GPTQ with trit-plane grids (Frantar et al. 2022, Alg. 1, lazy batches of `block` columns):
    minimise Σ_o (w_o − ŵ_o)ᵀ H (w_o − ŵ_o) greedily, column by column. When a column starts a
    group, fit K planes to the group's *updated* columns (`fit_planes`, each column weighted by
    1 / [U]_jj², GPTQ's cost of an error in column j, U = chol(H⁻¹) upper); each column takes
    its nearest grid value, and its error, scaled by 1 / U_jj, is fed into the columns after it."""
    out, n = W.shape
    gs = row_group(W, group)
    ng = -(-n // gs)
    W = W.astype(np.float64)  # a copy, updated in place
    H = H.astype(np.float64) + damp * max(float(np.mean(np.diag(H))), 1e-30) * np.eye(n)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H⁻¹ = Uᵀ U
    t = np.zeros((planes, out, ng, gs), np.int8)
    a = np.zeros((planes, out, ng), np.float16)
    bs = gs * max(1, block // gs)  # whole groups per block: a group is fitted on up-to-date columns
    rows = np.arange(out)
    for b0 in range(0, n, bs):
        b1 = min(b0 + bs, n)
        E = np.zeros((out, b1 - b0))
        for i in range(b0, b1):
            gi, j = divmod(i, gs)
            if j == 0:
                cols = slice(i, min(i + gs, n))
                f = fit_planes(W[:, cols], planes, gs, iters, tol, ridge, 1.0 / np.diag(U)[cols] ** 2)
                a[:, :, gi] = f.alpha[:, :, 0]
                V, codes, mids = (x[..., 0, :] for x in _grid(f.alpha))
            idx = (W[:, i, None] > mids).sum(-1)
            t[:, :, gi, j] = codes[:, rows, idx]
            E[:, i - b0] = err = (W[:, i] - V[rows, idx]) / U[i, i]
            W[:, i + 1:b1] -= np.outer(err, U[i, i + 1:b1])
        W[:, b1:] -= E @ U[b0:b1, b1:]
    return Fit(t, a)


@register_pass
@dataclass(frozen=True)
class Ptqtp(Pass):
    """PTQTP trit-planes: W ≈ Σ_{k<K} diag(α_k)·T_k per row × group of `group` input columns,
    T_k ∈ {-1, 0, 1}, fitted without calibration data (K = `planes`; `group=0` is per row).

    For each row o and column group g, with w the group's weights, d_i > 0 the column weights
    (1; E[x_i²] + 1% of their mean with `calibrated`), D = diag(d), T the K x group code matrix:

        min_{α, T}  Σ_i d_i (w_i − Σ_k α_k T_ki)²

    Init: plane 1 = absmean ternary (γ = mean|w|, T = clamp(round(w/γ), -1, 1)); plane k > 1 the
    same on the residual r = w − Σ_{j<k} α_j T_j (T_k = sign(r) where |r| > γ/2). Then alternate
    until the relative drop of the total error is below `tol`, or `iters` times:
      (a) α = (T D Tᵀ + λI)⁻¹ T D w, a K x K ridge system per (row, group), all solved at once;
          λ = ridge·tr(T D Tᵀ)/K, raised until the condition number is <= 1e3 (a plane that is all
          zero in the group or two equal planes; f16 scales could not hold a worse-conditioned fit).
      (b) each element's code vector = the best of the 3^K combinations: sort the 3^K values
          Σ_k α_k c_k of the (row, group), count the midpoints below the weight (vectorised).

    Choices where the paper is open: α is stored as f16 (16 / group bits per weight on top of 2·K
    bits of trits) and rounded to f16 inside the loop, so the fit is that of the stored model; a
    new α, or new codes, are kept only where they lower that (row, group)'s error; the ridge is
    relative to the system's scale; the progressive init above.

    Error contract (data-free, and `calibrated` without `feedback` in its d-weighted norm): the
    error Σ d (W − Ŵ)² of every (row, group) is never above that of the 1-plane absmean ternary
    (`ternary` with the same group: the init's first plane, with its f16 scale), and the total
    never increases from one iteration to the next ((a) and (b) are kept only where they help).
    All-zero rows give all-zero codes; a constant row is exact up to the f16 rounding of its scale.

    Beyond the paper, `calibrated=true` uses `compile(..., calibration=...)` data. With
    `feedback=false` it weighs columns by d = E[x_j²] as above. With `feedback=true` (the default)
    it runs GPTQ with trit-plane grids (`gptq_planes`): each group's planes are fitted when GPTQ
    reaches it, on the error-compensated columns, and every column's rounding error is fed into
    the columns after it through E[x xᵀ]; that minimises the layer's output error on the
    calibration data greedily, with no per-group guarantee in the weight norm.
    """

    name = "ptqtp"
    planes: int = 2
    group: int = 128
    iters: int = 50
    tol: float = 1e-4
    ridge: float = 1e-6
    calibrated: bool = False
    feedback: bool = True
    layers: str = "*"
    head: bool = False

    def _check(self) -> None:
        if not 1 <= self.planes <= 5:
            raise ir.PassError(f"ptqtp: planes must be 1..5 (3^planes codes are searched), got {self.planes}")
        if self.iters < 0 or self.tol < 0 or self.ridge < 0:
            raise ir.PassError(f"ptqtp: iters, tol and ridge must be >= 0, got {self.iters}, {self.tol}, {self.ridge}")

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        self._check()
        stats: dict[str, np.ndarray] = {}  # weight -> E[x²] [in], or E[x xᵀ] [in, in] with feedback
        if self.calibrated:
            if ctx.calibration is None:
                raise ir.PassError("ptqtp{calibrated=true} needs calibration data: pass compile(..., calibration=[...]) "
                                   "or PassManager(..., context=PassContext(calibration=...)), or set calibrated=false")
            names = {w for _, w in select_linears(g, self.layers, self.head)}
            if names:  # nothing left to quantize (a second run): don't run the model
                collect = input_grams if self.feedback else linear_input_moments
                stats = collect(g, ctx.calibration, names, progress=ctx.progress)

        def quantize(w: str, W: np.ndarray) -> Quantized:
            if w in stats and self.feedback:
                f = gptq_planes(W, stats[w], self.planes, self.group, self.iters, self.tol, self.ridge)
            else:
                f = fit_planes(W, self.planes, self.group, self.iters, self.tol, self.ridge, stats.get(w))
            return planes(f.t, f.alpha, W.shape[1], row_group(W, self.group))

        return quantize_linears(g, quantize, desc=f"ptqtp{self.planes}", layers=self.layers, head=self.head,
                                progress=ctx.progress)
