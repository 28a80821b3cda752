"""SqueezeLLM (Kim et al., 2023, "SqueezeLLM: Dense-and-Sparse Quantization"): per-row codebooks
fitted by sensitivity-weighted k-means, plus a sparse fp16 part that keeps outliers exactly.

    W ≈ book[o, codes[o, i]]  +  sparse corrections at a few flat indices
    %w.dq = dequant_codebook(@w.codes, @w.book);  %w.sp = add_sparse(%w.dq, @w.idx, @w.val)

Sensitivity s_ij of each weight (the paper's Eq. 4 weights the error by the Fisher diagonal):
  * the empirical Fisher diagonal Σ_n (∂ℓ_n/∂W_ij)² when the caller gave `loss(model)`; the loss is
    called once, a scalar is one term ℓ_1, a tensor of per-sample losses gives one term per element;
  * else E[x_j²] of the layer's input channel j over the calibration data (the same for every row,
    so each row's k-means minimises the expected squared output error of that row);
  * with neither, the pass raises PassError. Which one was used is printed and appended to the loc
    of every `dequant_codebook` node (`... [squeezellm: sensitivity=fisher]`).

Sparse part (the paper's Sec. 4.2), removed from the dense fit and stored exactly:
  * outliers: Tukey's IQR rule made symmetric as in SqueezeLLM, |W| >= max(|Q1|, |Q3|) + k·IQR with
    the quartiles of each weight matrix, one fence multiplier k for all selected layers, chosen so
    that a fraction `outliers` of all their weights lies outside (0.45% by default, the paper's
    setting); equivalently the top `outliers` of the scores (|W| − max(|Q1|, |Q3|)) / IQR;
  * sensitive: the top `sensitive` fraction of each layer's weights by s_ij (0.05%; ties, as in
    the per-channel E[x²], go to the larger |W|).
  The stored value is val = f16(W − book[code]), so Ŵ = W there up to the f16 rounding of the gap.

Dense part, per row: 2^bits centroids by weighted Lloyd iterations (1-D k-means) on the remaining
weights, initialised at the weighted quantiles (k + ½)/2^bits; empty clusters keep their centroid,
so the objective Σ_i s_i (W_i − c(W_i))² never increases. Rows whose remaining sensitivity is all
zero are fitted unweighted. The centroids are rounded to f16 and every weight takes the code of its
nearest f16 centroid.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, linear_input_moments, quantize_linears, select_linears, source_weight
from .base import Pass, PassContext, register_pass

F16_MAX = float(np.finfo(np.float16).max)


# -- 1-D weighted k-means, one problem per row ------------------------------------------------------
def row_searchsorted(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per row r: #{j : a[r, j] <= v[r, m]} for rows a [R, n] sorted ascending (side='right'),
    by a binary search run on all rows at once."""
    n = a.shape[1]
    flat, base = np.ascontiguousarray(a).ravel(), (np.arange(a.shape[0]) * n)[:, None]
    lo, hi = np.zeros(v.shape, np.int64), np.full(v.shape, n, np.int64)
    while (active := lo < hi).any():
        mid = (lo + hi) // 2
        right = active & (flat[base + np.minimum(mid, n - 1)] <= v)
        lo, hi = np.where(right, mid + 1, lo), np.where(active & ~right, mid, hi)
    return lo


def weighted_kmeans(x: np.ndarray, s: np.ndarray, k: int, iters: int) -> np.ndarray:
    """Centroids [R, k] (float64, ascending) of each row of x [R, n] under weights s >= 0 [R, n]:
    `iters` Lloyd steps from the weighted quantiles; stops early once nothing moves."""
    R, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x.astype(np.float64), order, axis=1)
    ss = np.take_along_axis(s.astype(np.float64), order, axis=1)
    cum = np.cumsum(ss, axis=1)
    target = (np.arange(k) + 0.5) / k * cum[:, -1:]
    c = np.take_along_axis(xs, np.minimum(row_searchsorted(cum, target), n - 1), axis=1)
    flat_s, flat_sx = np.append(ss.ravel(), 0.0), np.append((ss * xs).ravel(), 0.0)  # reduceat needs a sentinel
    base = (np.arange(R) * n)[:, None]
    for _ in range(iters):
        # In 1-D, nearest-centroid clusters are runs of the sorted row split at the midpoints.
        ends = row_searchsorted(xs, (c[:, :-1] + c[:, 1:]) / 2)
        starts = np.concatenate([np.zeros((R, 1), np.int64), ends], axis=1)
        size = np.concatenate([ends, np.full((R, 1), n)], axis=1) - starts
        at = (base + starts).ravel()
        w = np.where(size > 0, np.add.reduceat(flat_s, at).reshape(R, k), 0.0)
        m = np.where(size > 0, np.add.reduceat(flat_sx, at).reshape(R, k), 0.0)
        first = xs.ravel()[np.minimum(base + starts, R * n - 1)]  # the run's smallest and largest value
        last = xs.ravel()[np.maximum(base + starts + size - 1, 0)]  # (garbage for empty runs: unused)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.clip(m / w, first, last)  # in its run's range despite rounding: a constant run stays exact
        new = np.sort(np.where(w > 0, mean, c), axis=1)  # an empty cluster keeps its centroid
        if np.array_equal(new, c):
            break
        c = new
    return c


def nearest(x: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of each row's ascending `book` [R, k] for x [R, n] (a tie goes low)."""
    mids = (book[:, :-1].astype(np.float64) + book[:, 1:]) / 2  # exact for f16 entries
    out = np.zeros(x.shape, np.uint8)
    for j in range(mids.shape[1]):
        out += x > mids[:, j : j + 1]
    return out


# -- the sparse part --------------------------------------------------------------------------------
def top_mask(key: np.ndarray, k: int, tiebreak: np.ndarray) -> np.ndarray:
    """Mask of the `k` largest entries of `key`; among equal keys the larger `tiebreak` first."""
    flat = key.ravel()
    mask = np.zeros(flat.size, bool)
    if k <= 0:
        return mask.reshape(key.shape)
    if k >= flat.size:
        return ~mask.reshape(key.shape)
    v = np.partition(flat, flat.size - k)[flat.size - k]
    mask |= flat > v
    eq = np.flatnonzero(flat == v)
    mask[eq[np.argsort(-tiebreak.ravel()[eq], kind="stable")[: k - int(mask.sum())]]] = True
    return mask.reshape(key.shape)


def iqr_scores(W: np.ndarray) -> np.ndarray:
    """(|W| − max(|Q1|, |Q3|)) / IQR: a weight lies on or outside the symmetric fences at multiplier
    k exactly when its score is >= k. A matrix with IQR 0 scores ±inf (outside / inside)."""
    q1, q3 = np.quantile(W, [0.25, 0.75])
    over = np.abs(W) - max(abs(q1), abs(q3))
    if q3 > q1:
        return (over / (q3 - q1)).astype(np.float32)
    return np.where(over > 0, np.inf, -np.inf).astype(np.float32)


def iqr_outliers(weights: dict[str, np.ndarray], fraction: float) -> tuple[dict[str, np.ndarray], float]:
    """Outlier masks of every weight for one fence multiplier k shared by all of them: k is the
    floor(fraction · total)-th largest score, so that many weights lie on or outside the fences
    (when several score exactly k, those first in layer order); and k."""
    scores = {w: iqr_scores(W) for w, W in weights.items()}
    total = sum(r.size for r in scores.values())
    kk = int(np.floor(fraction * total))
    if kk <= 0:
        return {w: np.zeros(r.shape, bool) for w, r in scores.items()}, np.inf
    flat = np.concatenate([r.ravel() for r in scores.values()])
    v = float(np.partition(flat, total - kk)[total - kk])
    del flat
    masks = {w: r > v for w, r in scores.items()}
    need = kk - sum(int(m.sum()) for m in masks.values())
    for w, r in scores.items():
        if need <= 0:
            break
        eq = np.flatnonzero(r.ravel() == v)[:need]
        masks[w].ravel()[eq] = True
        need -= eq.size
    return masks, v


def squeezellm(W: np.ndarray, s: np.ndarray, bits: int, outliers: np.ndarray, sensitive: float,
               iters: int) -> tuple[Quantized, np.ndarray, np.ndarray]:
    """One weight [out, in] with sensitivities s and its outlier mask -> (dense codebook part,
    sparse flat indices i32, sparse values f16). See the module doc."""
    s = np.nan_to_num(s.astype(np.float64), nan=0.0, posinf=0.0).clip(min=0.0)
    sparse = outliers | top_mask(s, int(np.floor(sensitive * W.size)), np.abs(W))
    fit = np.where(sparse, 0.0, s)
    dead = fit.sum(axis=1) == 0  # no sensitivity left on the row: fit it unweighted
    fit[dead] = (~sparse[dead]).astype(np.float64)
    fit[dead & (fit.sum(axis=1) == 0)] = 1.0  # a row that is all sparse: any codebook will do
    c = weighted_kmeans(W, fit, 2**bits, iters)
    book = np.sort(np.clip(c, -F16_MAX, F16_MAX).astype(np.float16), axis=1)
    codes = nearest(W, book)
    idx = np.flatnonzero(sparse)
    if W.size > 2**31:
        raise ir.PassError(f"squeezellm: a {W.shape} weight is too large for i32 sparse indices")
    dense = np.take_along_axis(book.astype(np.float32), codes.astype(np.intp), axis=1)
    val = (W.ravel()[idx] - dense.ravel()[idx]).astype(np.float16)
    q = Quantized("dequant_codebook", {"codes": (codes, DTYPES[f"u{bits}"]), "book": (book, DTYPES["f16"])})
    return q, idx.astype(np.int32), val


# -- sensitivity ------------------------------------------------------------------------------------
def fisher_diagonal(model: object, loss: object, names: list[str]) -> dict[str, np.ndarray]:
    """Σ_n (∂ℓ_n/∂W)² for the named parameters of the torch `model`, ℓ = loss(model) (see the module doc)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ir.PassError(f"squeezellm: a loss was given, but the model is a {type(model).__name__}, not a torch "
                           "module to take gradients of; compile the torch model, or pass calibration= instead")
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [w for w in names if w not in params]
    if missing:
        raise ir.PassError(f"squeezellm: the model has no parameter {missing[0]!r} to take the Fisher diagonal of; "
                           "pass calibration= instead of loss= for graphs whose weights are not the model's")
    ps = [params[w] for w in names]
    saved = [p.requires_grad for p in ps]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in ps]
    try:
        for p in ps:
            p.requires_grad_(True)
        with torch.enable_grad():
            terms = torch.as_tensor(loss(model)).reshape(-1)  # type: ignore[operator]
            for i, t in enumerate(terms):
                grads = torch.autograd.grad(t, ps, retain_graph=i < len(terms) - 1, allow_unused=True)
                for a, gr in zip(acc, grads):
                    if gr is not None:
                        a += gr.detach().float() ** 2
    finally:
        for p, r in zip(ps, saved):
            p.requires_grad_(r)
    return {w: a.numpy() for w, a in zip(names, acc)}


def sensitivities(g: ir.Graph, ctx: PassContext, names: list[str]) -> tuple[str, dict[str, np.ndarray]]:
    """("fisher" | "activation", weight name -> s [out, in]); PassError when the caller gave no data."""
    if ctx.loss is not None:
        return "fisher", fisher_diagonal(ctx.model, ctx.loss, names)
    if ctx.calibration:
        m = linear_input_moments(g, ctx.calibration, set(names), progress=ctx.progress)
        return "activation", {w: np.broadcast_to(m[w], g.params[w].shape) for w in names}
    raise ir.PassError("squeezellm weights its k-means by each weight's sensitivity and needs data: pass "
                       "compile(..., calibration=[...]) for E[x^2] of each layer's inputs, or "
                       "compile(..., loss=lambda model: ...) for the Fisher diagonal (squared gradients)")


@register_pass
@dataclass(frozen=True)
class SqueezeLLM(Pass):
    """SqueezeLLM dense-and-sparse: per-row sensitivity-weighted k-means codebooks of 2^bits f16 entries, plus exact f16 outliers.

    Sensitivity: the Fisher diagonal when compile() got `loss=`, else E[x_j^2] from `calibration=`.
    Sparse: `outliers` of all weights by the IQR rule, plus the `sensitive` fraction with the
    highest sensitivity of each layer. `iters`: Lloyd iterations (stops early at convergence).
    """

    name = "squeezellm"
    bits: int = 4
    outliers: float = 0.0045
    sensitive: float = 0.0005
    iters: int = 50
    layers: str = "*"
    head: bool = False

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        if not 2 <= self.bits <= 8:
            raise ir.PassError(f"squeezellm: bits must be 2..8, got {self.bits}")
        if not (0 <= self.outliers < 1 and 0 <= self.sensitive < 1):
            raise ir.PassError(f"squeezellm: outliers and sensitive are fractions in [0, 1), got {self.outliers}, {self.sensitive}")
        if self.iters < 0:
            raise ir.PassError(f"squeezellm: iters must be >= 0, got {self.iters}")
        names = list(dict.fromkeys(w for _, w in select_linears(g, self.layers, self.head)))
        if not names:
            return g.copy()  # nothing (left) to quantize: no data needed
        kind, sens = sensitivities(g, ctx, names)
        weights = {w: np.asarray(g.weights[w], np.float32) for w in names}
        out_masks, fence = iqr_outliers(weights, self.outliers)
        sparse: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def quantize(w: str, W: np.ndarray) -> Quantized:
            q, idx, val = squeezellm(W, sens[w], self.bits, out_masks[w], self.sensitive, self.iters)
            sparse[w] = (idx, val)
            return q

        before = {n.name for n in g.nodes}
        out = quantize_linears(g, quantize, desc=f"squeezellm{self.bits}", layers=self.layers, head=self.head,
                               progress=ctx.progress)
        _add_sparse_nodes(out, [n for n in out.nodes if n.op == "dequant_codebook" and n.name not in before],
                          sparse, f"[squeezellm: sensitivity={kind}]")
        n_w = sum(W.size for W in weights.values())
        nnz = sum(i.size for i, _ in sparse.values())
        bits = sum(8 * out.params[p].nbytes() for w in names for p in _parts(out, w))
        print(f"squeezellm{{bits={self.bits}}}: sensitivity={kind}, {len(names)} layers, sparse {nnz / n_w:.3%} "
              f"(IQR fence k={fence:.3g}), {bits / n_w:.3f} bits/weight", file=sys.stderr)
        return out


def _parts(g: ir.Graph, w: str) -> list[str]:
    return [p for p in g.params if p.startswith(w + ".") and p[len(w) + 1:] in ("codes", "book", "idx", "val")]


def _add_sparse_nodes(g: ir.Graph, dqs: list[ir.Node], sparse: dict[str, tuple[np.ndarray, np.ndarray]],
                      note: str) -> None:
    """After each new dequant_codebook node, `add_sparse` its weight's corrections (params @w.idx and
    @w.val placed after @w.book); a weight with no sparse entries keeps the plain codebook."""
    extra: dict[str, list[tuple[str, np.ndarray, ir.TensorType]]] = {}
    for dq in dqs:
        dq.loc = f"{dq.loc} {note}" if dq.loc else note
        w = source_weight(dq)
        idx, val = sparse[w]  # type: ignore[index]
        if idx.size == 0:
            continue
        refs = []
        for part, a in (("idx", idx), ("val", val)):
            name = f"{w}.{part}"
            if name in g.params:
                raise ir.PassError(f"parameter @{name} already exists; was @{w} quantized twice?")
            g.weights[name] = a
            extra.setdefault(f"{w}.book", []).append((name, a, ir.TensorType(DTYPES["i32" if part == "idx" else "f16"], a.shape)))
            refs.append("@" + name)
        sp = ir.Node(g.fresh_name(f"{w}.sp"), "add_sparse", (dq.ref, *refs), {}, dq.type, dq.loc)
        g.replace_uses(dq.ref, sp.ref)
        g.nodes.insert(g.nodes.index(dq) + 1, sp)
    params: dict[str, ir.TensorType] = {}
    for p, t in g.params.items():
        params[p] = t
        params.update({name: tt for name, _, tt in extra.get(p, [])})
    g.params = params
