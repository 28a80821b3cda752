"""What the sparse-activation passes (wina, teal) share: which linear layers, how many input entries
each keeps, and the rewrite `linear(x, W)` -> `linear(sparsify(x, scale), W)`.

The `sparsify` op zeroes all but the most important entries of each token's input vector: the
`keep` largest scores (top-k per token, the default), or the scores above a threshold calibrated so
that a fraction `sparsity` of the calibration tokens' entries fall below it (the inverse CDF of the
scores, per layer). Every token is sparsified, prompt and decode alike.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

import ir

from ._quant import is_head
from .base import PassContext

# the inputs of q/k/v, gate/up and down projections (Llama-style names), as in WINA and TEAL
DEFAULT_LAYERS = "*q_proj*|*k_proj*|*v_proj*|*gate_proj*|*up_proj*|*down_proj*"
CALIBRATION_TOKENS = 256  # per layer: enough for a quantile of 256 x D scores, small enough to hold them all


def layer_sparsity(w: str, sparsity: float, per_layer: str, who: str) -> float:
    """The sparsity of weight `w`: the last `glob:value` entry of `per_layer` ("|"-separated) whose
    glob matches, else `sparsity`."""
    s = sparsity
    for entry in filter(None, per_layer.split("|")):
        glob, sep, value = entry.rpartition(":")
        try:
            v = float(value)
        except ValueError:
            v = None
        if not sep or v is None:
            raise ir.PassError(f"{who}: per_layer entry {entry!r} must be glob:sparsity, e.g. *down_proj*:0.6")
        if fnmatch.fnmatchcase(w, glob):
            s = v
    if not 0 <= s < 1:
        raise ir.PassError(f"{who}: sparsity of {w} is {s}; it must be in [0, 1)")
    return s


def sparsify_linears(g: ir.Graph, ctx: PassContext, *, who: str, sparsity: float, layers: str, per_layer: str,
                     mode: str, scale_of: Callable[[list[str], ir.Graph], np.ndarray | None], shared: bool = False,
                     prepare: Callable[[ir.Graph, list[ir.Node]], None] | None = None) -> ir.Graph:
    """Put a `sparsify` in front of every selected linear of a copy of `g`. `scale_of(weight names, graph)`
    gives the per-input-column factor of the score of one mask, or None for |x| alone; `prepare(g, targets)`
    may first rewrite the copy (WINA's transform). shared: linears that read the same value at the same
    sparsity get one mask (one `sparsify`, so that the backend fuses them); else one mask each."""
    if mode not in ("topk", "threshold"):
        raise ir.PassError(f"{who}: mode must be topk or threshold, got {mode!r}")
    globs = [p for p in layers.split("|") if p]
    made_by = {n.ref: n.op for n in g.nodes}
    targets = [n for n in g.nodes if n.op == "linear" and n.operands[1].startswith("@") and not is_head(g, n)
               and any(fnmatch.fnmatchcase(n.operands[1][1:], p) for p in globs)
               and made_by.get(n.operands[0]) != "sparsify"]  # already sparse: running twice changes nothing
    if not targets:
        if any(op == "sparsify" for op in made_by.values()):
            return g
        raise ir.PassError(f"{who}: no linear layer's weight matches layers={layers!r}")
    levels = {n.operands[1][1:]: layer_sparsity(n.operands[1][1:], sparsity, per_layer, who) for n in targets}
    g = g.copy()
    targets = [next(n for n in g.nodes if n.name == t.name) for t in targets]
    if prepare is not None:
        prepare(g, targets)
    # the masks: each a list of the linears it feeds, named by the first one's weight
    masks: dict[object, list[ir.Node]] = {}
    for lin in targets:
        w = lin.operands[1][1:]
        masks.setdefault((lin.operands[0], levels[w]) if shared else w, []).append(lin)
    groups = {lins[0].operands[1][1:]: [lin.operands[1][1:] for lin in lins] for lins in masks.values()}
    scales: dict[str, str] = {}
    for w, ws in groups.items():
        scale = scale_of(ws, g)
        if scale is not None:
            name = f"{w}.colnorm"
            g.params[name] = ir.TensorType(ir.dtype("f32"), (g.params[w].shape[1],))
            g.weights[name] = np.ascontiguousarray(scale, np.float32)
            scales[w] = "@" + name
    thresholds = _thresholds(g, ctx, who, {w: levels[w] for w in groups}, scales) if mode == "threshold" else {}
    for lins in tqdm(list(masks.values()), desc=who, unit="mask", disable=None if ctx.progress else True, leave=False):
        first = lins[0]
        w, x = first.operands[1][1:], first.operands[0]
        D = g.params[w].shape[1]
        attrs = {"keep": D - int(round(levels[w] * D)), "threshold": 0.0}
        if mode == "threshold":
            attrs = {"keep": -1, "threshold": thresholds[w]}
        node = ir.Node(g.fresh_name(f"{first.name}.sparse"), "sparsify", (x, scales[w]) if w in scales else (x,),
                       ir.OPS["sparsify"].normalize_attrs(attrs), g.types()[x], first.loc)
        g.nodes.insert(min(g.nodes.index(lin) for lin in lins), node)
        for lin in lins:
            lin.operands = (node.ref, *lin.operands[1:])
    return g


def _thresholds(g: ir.Graph, ctx: PassContext, who: str, levels: dict[str, float], scales: dict[str, str]) -> dict[str, float]:
    """Per weight: the `levels[w]` quantile of its input scores over the calibration tokens."""
    if not ctx.calibration:
        raise ir.PassError(f"{who}{{mode=threshold}} calibrates a threshold per layer from activations: pass "
                           "compile(..., calibration=[...]), or use mode=topk (no data needed)")
    seen: dict[str, list[np.ndarray]] = {w: [] for w in levels}
    count = {w: 0 for w in levels}

    def observe(n: ir.Node, ins: list[np.ndarray]) -> None:
        if n.op == "linear" and n.operands[1][1:] in seen:
            w = n.operands[1][1:]
            X = np.abs(ins[0].reshape(-1, ins[0].shape[-1]).astype(np.float32))
            X = X[:max(CALIBRATION_TOKENS - count[w], 0)]
            if X.size:
                seen[w].append(X * (g.weights[scales[w][1:]] if w in scales else 1))
                count[w] += X.shape[0]

    for xs in tqdm(ctx.calibration, desc=f"{who} calibration", unit="sample", disable=None if ctx.progress else True,
                   leave=False):
        ir.run(g, xs, observe=observe)
    return {w: float(np.quantile(np.concatenate(v), levels[w])) if levels[w] > 0 else -np.inf
            for w, v in seen.items()}
