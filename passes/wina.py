"""WINA: training-free sparse activation weighted by the weights (microsoft/wina, arXiv 2505.19427)."""
from __future__ import annotations

from dataclasses import dataclass

import fnmatch

import numpy as np

import ir

from ._sparse import DEFAULT_LAYERS, sparsify_linears
from .base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class Wina(Pass):
    """For each selected linear y = W x, keep only the input entries with the largest
    |x_i| * ||W[:, i]||_2 and zero the rest (a `sparsify` op in front of the linear, so backends
    can skip the zeroed columns).

    sparsity: the fraction of each token's entries dropped (per layer: `per_layer="*down_proj*:0.6"`,
    "|"-separated glob:value entries, the last match wins). mode=topk (default) keeps exactly
    round((1 - sparsity) * D) entries per token, ties to the lower index; mode=threshold keeps the
    scores above a per-layer threshold, the `sparsity` quantile of the scores over `calibration=`
    data (as the reference's histogram inverse CDF). layers: "|"-separated globs of weight names;
    the default is the inputs of q/k/v, gate/up and down projections; never the LM head.

    Choices where the paper leaves room: every selected layer uses its own column norms (the paper's
    criterion), q/k/v (and gate/up) each get their own mask of the shared input, and every token is
    sparsified (the reference leaves the first 1% of a prompt dense).

    scored: "|"-separated globs of the weights that score with column norms; the others score with
    |x| alone (the reference code's choice is `*k_proj*|*gate_proj*`). Default: every one.

    shared=true: linears that read one input at one sparsity (q/k/v; gate/up) share one mask, scored
    with the column norms of their weights stacked, sqrt(sum_j ||W_j[:, i]||^2): WINA's criterion for
    the fused linear. The CPU backend then fuses them into one sparse kernel (3 a layer instead of 6:
    faster decoding, see docs/performance.md); the perplexity cost is in docs/sparsity.md.

    allocate=greedy: each block's inputs get their own sparsities, chosen with calibration data by TEAL's
    greedy search (`_sparse.greedy_levels`), which the reference's README uses too, so that every block
    (each model.layers.N) is `sparsity` sparse by weight count; allocate=uniform (default): `sparsity`
    everywhere, or `per_layer`'s.

    transform=true: WINA's orthogonal transform (`rotate_inputs`): the input shared by q/k/v (and
    by gate/up) is rotated into the SVD basis of k_proj (gate_proj), so that those weights' columns
    are orthogonal; then, as in the reference code, only those layers score with column norms and
    the others with |x| of the rotated input. The reference rotates the residual stream and the
    shortcuts instead; rotating each branch's input gives the same masks and outputs at the same cost
    (one D x D matmul per sublayer).
    """

    name = "wina"
    sparsity: float = 0.5
    mode: str = "topk"
    layers: str = DEFAULT_LAYERS
    per_layer: str = ""
    transform: bool = False
    scored: str = "*"
    shared: bool = False
    allocate: str = "uniform"

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        rotated: set[str] = set()

        def scale_of(ws: list[str], g: ir.Graph) -> np.ndarray | None:
            # the reference's choice under transform: norms only where the columns are orthogonal
            ws = [w for w in ws if (not self.transform or w in rotated)
                  and any(fnmatch.fnmatchcase(w, p) for p in self.scored.split("|"))]
            if not ws:
                return None
            for w in ws:
                if w not in g.weights:
                    raise ir.PassError(f"wina scores inputs by the weight's column norms, and @{w} has no data")
            # one mask for several linears: the column norms of their weights stacked (WINA on the fused linear)
            sq = sum(np.square(np.asarray(g.weights[w], np.float64)).sum(axis=0) for w in ws)
            return np.sqrt(sq)

        return sparsify_linears(g, ctx, who=self.name, sparsity=self.sparsity, layers=self.layers,
                                per_layer=self.per_layer, mode=self.mode, scale_of=scale_of, shared=self.shared,
                                allocate=self.allocate,
                                prepare=(lambda g, ts: rotated.update(rotate_inputs(g, ts))) if self.transform else None)


ROTATE_BY = ("*k_proj*", "*gate_proj*")  # the weight whose SVD basis a shared input is rotated into


def rotate_inputs(g: ir.Graph, targets: list[ir.Node]) -> list[str]:
    """WINA's transform, per input: linears y_j = x W_j^T that share an input x (q/k/v; gate/up)
    become (x Q)(W_j Q)^T with Q the right singular vectors of one of them (k_proj, gate_proj), whose
    columns W Q = U S are then orthogonal -- the case where |x_i| * ||W[:, i]|| is the exact size of
    each input's contribution. One `matmul(x, @Q)` per shared input; weights are rewritten in place
    of the originals. Inputs without such a weight (o_proj's, down_proj's) are left alone. Returns
    the names of the weights whose columns are now orthogonal."""
    groups: dict[str, list[ir.Node]] = {}
    for n in targets:
        groups.setdefault(n.operands[0], []).append(n)
    done = []
    for x, lins in groups.items():
        names = [n.operands[1][1:] for n in lins]
        ref = next((w for w in names if any(fnmatch.fnmatchcase(w, p) for p in ROTATE_BY)), None)
        if ref is None:
            continue
        _, _, vt = np.linalg.svd(np.asarray(g.weights[ref], np.float64), full_matrices=True)
        Q = vt.T
        qname = f"{ref}.rotation"
        g.params[qname] = ir.TensorType(ir.dtype("f32"), Q.shape)
        g.weights[qname] = np.ascontiguousarray(Q, np.float32)
        node = ir.Node(g.fresh_name(f"{lins[0].name}.rotated"), "matmul", (x, "@" + qname), {}, g.types()[x], lins[0].loc)
        g.nodes.insert(min(g.nodes.index(n) for n in lins), node)
        for n, w in zip(lins, names):
            if sum(m.operands.count("@" + w) for m in g.nodes) > 1:
                raise ir.PassError(f"wina{{transform=true}}: weight @{w} is also used elsewhere; cannot rotate it")
            g.weights[w] = np.ascontiguousarray(np.asarray(g.weights[w], np.float64) @ Q, np.float32)
            n.operands = (node.ref, *n.operands[1:])
        done.append(ref)
    return done
