"""WINA: training-free sparse activation weighted by the weights (microsoft/wina, arXiv 2505.19427)."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

import ir

from ._sparse import DEFAULT_LAYERS, sparsify_linears
from .base import Pass, PassContext, register_pass
from .fuse_rms_norm import _match as rms_norm_chain

REFERENCE_LAYERS = DEFAULT_LAYERS + "|*o_proj*"  # the reference sparsifies all 7 linears of a block
REFERENCE_PREFIX = 0.01  # ... and leaves the first 1% of each prompt's tokens dense
# the weight whose SVD gives a sublayer's basis: k_proj and gate_proj (BERT: key, intermediate)
ROTATE_BY = ("*k_proj*", "*gate_proj*", "*.self.key.*", "*intermediate.dense*")


@register_pass
@dataclass(frozen=True)
class Wina(Pass):
    """For each selected linear y = W x, keep only the input entries with the largest
    |x_i| * ||W[:, i]||_2 and zero the rest (a `sparsify` op in front of the linear, so backends
    can skip the zeroed columns).

    sparsity: the fraction of each token's entries dropped (per layer: `per_layer="*down_proj*:0.6"`,
    "|"-separated glob:value entries, the last match wins). mode=topk (default) keeps exactly
    round((1 - sparsity) * D) entries per token, ties to the lower index (the reference: int(...));
    mode=threshold keeps the scores above a per-layer threshold, the `sparsity` quantile of the scores
    over `calibration=` data (as the reference's histogram inverse CDF). layers: "|"-separated globs of
    weight names; default (""): the inputs of q/k/v, gate/up and down projections, and with
    transform=true also o_proj's (REFERENCE_LAYERS, the reference's 7); never the LM head.
    prefix: the fraction of each prompt's first tokens left dense (`_sparse.keep_prefix_dense`; a
    single decoding token is always sparsified); default (-1): 0 (every token sparsified), and with
    transform=true the reference's 0.01.

    Choices where the paper leaves room: every selected layer uses its own column norms (the paper's
    criterion), q/k/v (and gate/up) each get their own mask of the shared input.

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

    transform=true: WINA's orthogonal transform as the reference runs it (`rotate_residual`: its
    utils/tensor_transform.py, after SliceGPT): RMSNorm weights folded into the linears they feed, the
    residual stream rotated into a per-sublayer basis (right singular vectors of the folded k_proj, or
    gate_proj, weight), shortcut rotations on the residual between sublayers. The dense transformed
    model equals the original (tests/passes/test_wina_transform.py). Then, as in the reference, only
    k_proj and gate_proj (whose columns are now orthogonal) score with column norms, every other layer
    with |x| of its (rotated) input; and the defaults above follow the reference: o_proj sparsified too,
    the first 1% of a prompt dense. The reference supports pre-norm RMSNorm decoders (Llama, Qwen,
    Mistral, Phi-3); a graph with LayerNorms (BERT, whose post-norm residual stream carries the norm's
    weight and bias and so cannot be rotated) gets `rotate_branches` instead: the same folded weights,
    bases and rotated linear inputs, with the rotation on each norm's branch rather than the residual.
    """

    name = "wina"
    sparsity: float = 0.5
    mode: str = "topk"
    layers: str = ""
    per_layer: str = ""
    transform: bool = False
    scored: str = "*"
    shared: bool = False
    allocate: str = "uniform"
    prefix: float = -1.0

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        rotated: set[str] = set()
        layers = self.layers or (REFERENCE_LAYERS if self.transform else DEFAULT_LAYERS)
        prefix = self.prefix if self.prefix >= 0 else (REFERENCE_PREFIX if self.transform else 0.0)

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

        return sparsify_linears(g, ctx, who=self.name, sparsity=self.sparsity, layers=layers,
                                per_layer=self.per_layer, mode=self.mode, scale_of=scale_of, shared=self.shared,
                                allocate=self.allocate, prefix=prefix,
                                prepare=(lambda g, ts: rotated.update(transform(g))) if self.transform else None)


def transform(g: ir.Graph) -> list[str]:
    """WINA's transform of `g` in place: the residual stream's (`rotate_residual`) for RMSNorm models,
    each norm's branch (`rotate_branches`) for LayerNorm ones. -> the weights scored by column norms."""
    return rotate_branches(g) if any(n.op == "layer_norm" for n in g.nodes) else rotate_residual(g)


def basis(W: np.ndarray) -> np.ndarray:
    """V of W = U S V^T [D, D], by descending singular value (the reference's torch.linalg.svd(W)[2].T),
    here as the eigenvectors of W^T W: one D x D eigh is 10x faster than the SVD of an [out, D] weight,
    and as exact (W V's columns are orthogonal to 1e-15)."""
    return np.linalg.eigh(W.T @ W)[1][:, ::-1]


def reference_weight(names: list[str]) -> str | None:
    """The weight of a sublayer whose SVD gives its basis (k_proj, gate_proj), or None."""
    return next((w for p in ROTATE_BY for w in names if fnmatch.fnmatchcase(w, p)), None)


def rotate_branches(g: ir.Graph) -> list[str]:
    """WINA's transform for LayerNorm models, in place. For each `layer_norm(x, @g, @b)` that feeds
    weight-bound linears: %n = layer_norm(x) without weight and bias, %r = matmul(%n, @Q) with Q = V of
    the SVD of the folded k_proj-like weight (`ROTATE_BY`; else the linears' weights stacked), and each
    linear reads %r with W <- W diag(g) Q, bias <- bias + W b: the inputs, weights and bases that
    `rotate_residual` gives a pre-norm model's linears, while the norm's own output (the residual stream
    of a post-norm model) is left as it is. Returns the weights whose columns are now orthogonal."""
    users = g.users()
    types = g.types()
    refs, rotated = [], 0
    for norm in [n for n in g.nodes if n.op == "layer_norm"]:
        feeds = [u for u in users.get(norm.ref, []) if u.op == "linear" and u.operands[0] == norm.ref
                 and all(o.startswith("@") and o[1:] in g.weights for o in u.operands[1:])]
        if not feeds:
            continue
        D = norm.type.shape[-1]
        one = np.ones(D)
        gamma = np.asarray(g.weights[norm.operands[1][1:]], np.float64) if len(norm.operands) > 1 else one
        beta = np.asarray(g.weights[norm.operands[2][1:]], np.float64) if len(norm.operands) > 2 else 0 * one
        names = [u.operands[1][1:] for u in feeds]
        ref = reference_weight(names)
        refs += [ref] if ref else []
        rotated += 1
        Q = basis(np.concatenate([np.asarray(g.weights[w], np.float64) for w in ([ref] if ref else names)]) * gamma)
        dtype = g.weights[names[0]].dtype
        qname = g.fresh_param(f"{(ref or names[0]).rsplit('.', 1)[0]}.rotation")
        g.params[qname] = ir.TensorType(g.params[names[0]].dtype, (D, D))
        g.weights[qname] = np.ascontiguousarray(Q, dtype)
        bare = ir.Node(g.fresh_name(f"{norm.name}.bare"), "layer_norm", norm.operands[:1], dict(norm.attrs),
                       types[norm.ref], norm.loc)
        rot = ir.Node(g.fresh_name(f"{norm.name}.rotated"), "matmul", (bare.ref, "@" + qname), {}, types[norm.ref], norm.loc)
        i = g.nodes.index(norm) + 1
        g.nodes[i:i] = [bare, rot]
        for lin, w in zip(feeds, names):
            W = np.asarray(g.weights[w], np.float64)
            bias = W @ beta + (np.asarray(g.weights[lin.operands[2][1:]], np.float64) if len(lin.operands) > 2 else 0)
            if len(lin.operands) == 2:
                bname = g.fresh_param(w.rsplit(".", 1)[0] + ".bias")
                g.params[bname] = ir.TensorType(g.params[w].dtype, (W.shape[0],))
                lin.operands = (*lin.operands, "@" + bname)
            for operand, value in ((lin.operands[1], (W * gamma) @ Q), (lin.operands[2], bias)):
                if sum(m.operands.count(operand) for m in g.nodes) > 1:
                    raise ir.PassError(f"wina{{transform=true}}: weight {operand} is also used elsewhere; cannot rotate it")
                g.weights[operand[1:]] = np.ascontiguousarray(value, dtype)
            lin.operands = (rot.ref, *lin.operands[1:])
    if not rotated:
        raise ir.PassError("wina{transform=true}: no LayerNorm of this graph feeds a weight-bound linear; nothing to rotate")
    return refs


def rotate_residual(g: ir.Graph) -> list[str]:
    """WINA's tensor transform, in place, on a pre-norm decoder whose residual stream runs
    embedding -> (RMSNorm -> linears ... -> linear -> add)* -> RMSNorm -> head. Row vectors: h' = h Q.

    1. Fold each RMSNorm's weight g into the linears it feeds (W <- W diag(g)); the norm keeps weight 1.
    2. Per sublayer s (each attention, each MLP), Q_s = V of the SVD U S V^T of its folded k_proj
       (gate_proj) weight (`basis`): that weight's columns become W Q_s = U S, orthogonal, with norms S; a
       sublayer without such a weight uses its linears' weights stacked.
    3. The residual stream entering sublayer s is kept in basis Q_s: the embedding table becomes E Q_0,
       the norm's linears W Q_s (rms_norm(h Q) = rms_norm(h) Q: Q is orthogonal and the norm has no
       weight left), the branch's last linear (o_proj, down_proj) writes in the next sublayer's basis,
       W <- Q_{s+1}^T W (b <- b Q_{s+1}), and the residual is carried over by a shortcut
       h Q_s -> h Q_s (Q_s^T Q_{s+1}) = `matmul(h, @shortcut)` before the add. The last sublayer writes
       in its own basis (no shortcut: the reference's is the identity), where the head reads it
       (W_head diag(g_final) Q_last).

    Differences from the reference code, each keeping the model's function: it also subtracts each
    embedding row's mean (SliceGPT's LayerNorm -> RMSNorm step; with RMSNorm models it changes the
    output, so it is not done here), and a head tied to the embedding gets its own copy here (in the
    reference, folding the final norm into a tied head also scales the embedding). Returns the
    weights whose columns are now orthogonal (the k_proj and gate_proj), which WINA scores with norms."""
    prod, users, outputs = {n.ref: n for n in g.nodes}, g.users(), set(g.outputs)
    norms: dict[str, tuple[str, str, list[ir.Node]]] = {}  # residual value -> (norm output, its weight, its readers of it)
    for n in g.nodes:
        if n.op == "rms_norm" and len(n.operands) == 2 and n.operands[1].startswith("@"):
            norms[n.operands[0]] = (n.ref, n.operands[1][1:], [n])
        elif (hit := rms_norm_chain(n, prod, users, outputs)) is not None and hit[1].startswith("@"):
            x, w, _, chain = hit
            norms[x] = (n.ref, w[1:], [m for m in chain if x in m.operands])
    embeds = [n for n in g.nodes if n.op == "embedding" and n.operands[0].startswith("@") and n.ref in norms]
    if len(embeds) != 1:
        raise ir.PassError("wina{transform=true} rotates the residual stream of a pre-norm RMSNorm decoder, from a "
                           f"token embedding that an RMSNorm reads; graph @{g.name} has {len(embeds)} such embeddings and "
                           "no LayerNorm (whose branches `rotate_branches` would rotate instead): use transform=false")
    # the sublayers, in order: (residual value, norm weight, linears the norm feeds, residual add, branch's last linear)
    subs: list[tuple[str, str, list[ir.Node], ir.Node | None, ir.Node | None]] = []
    v = embeds[0].ref
    while True:
        if v not in norms:
            raise ir.PassError(f"wina{{transform=true}}: residual value {v} is not read by an RMSNorm (a pre-norm "
                               "block starts with one); this graph's residual stream cannot be rotated")
        out, gamma, readers = norms[v]
        feeds = users.get(out, [])
        bad = [u for u in feeds if u.op != "linear" or u.operands[0] != out or not u.operands[1].startswith("@")
               or u.operands[1][1:] not in g.weights] + [None] * (not feeds)
        if bad:
            raise ir.PassError(f"wina{{transform=true}} folds the norm weight @{gamma} into the linears the norm feeds, "
                               f"but {'%' + bad[0].name + ' (' + bad[0].op + ')' if bad[0] else 'nothing'} reads it; "
                               "run wina{transform=true} first, on a graph whose norms feed only weight-bound linears")
        adds = [u for u in users.get(v, []) if u.op == "add"]
        rest = [u for u in users.get(v, []) if u not in adds and u not in readers]
        if rest or v in outputs or len(adds) > 1 or sum(m.operands.count("@" + gamma) for m in g.nodes) != 1:
            raise ir.PassError(f"wina{{transform=true}}: residual value {v} has readers other than its norm and one "
                               f"residual add ({', '.join('%' + u.name for u in rest + adds) or 'a graph output'}), "
                               "or its norm weight is shared; this graph's residual stream cannot be rotated")
        if not adds:
            subs.append((v, gamma, feeds, None, None))  # the final norm and the head
            break
        branch = prod.get(next((o for o in adds[0].operands if o != v), v))
        if branch is None or branch.op != "linear" or not branch.operands[1].startswith("@") or any(
                not o.startswith("@") for o in branch.operands[2:]):
            raise ir.PassError(f"wina{{transform=true}}: the residual add %{adds[0].name} does not add a weight-bound "
                               "linear's output (o_proj, down_proj) to the residual stream")
        subs.append((v, gamma, feeds, adds[0], branch))
        v = adds[0].ref

    def weight(ref: str) -> np.ndarray:
        return np.asarray(g.weights[ref[1:]], np.float64)

    def store(node: ir.Node, i: int, value: np.ndarray) -> None:
        """Operand i of node (a weight) becomes `value`; a weight other nodes read too gets a copy."""
        w = node.operands[i][1:]
        dtype = g.weights[w].dtype
        if sum(m.operands.count("@" + w) for m in g.nodes) > 1:  # the embedding and a head tied to it
            new = g.fresh_param(w)
            g.params[new] = g.params[w]
            node.operands = node.operands[:i] + ("@" + new,) + node.operands[i + 1:]
            w = new
        g.weights[w] = np.ascontiguousarray(value, dtype)

    bases, refs = [], []
    for _, gamma, feeds, add, _ in subs[:-1]:
        names = [n.operands[1][1:] for n in feeds]
        ref = reference_weight(names)
        bases.append(basis(np.concatenate([weight("@" + w) for w in ([ref] if ref else names)]) * weight("@" + gamma)))
        refs += [ref] if ref else []
    if not bases:
        raise ir.PassError("wina{transform=true}: this graph has no pre-norm blocks to rotate")
    store(embeds[0], 0, weight(embeds[0].operands[0]) @ bases[0])
    for s, (v, gamma, feeds, add, branch) in enumerate(subs):
        Q = bases[min(s, len(bases) - 1)]
        for lin in feeds:
            store(lin, 1, (weight(lin.operands[1]) * weight("@" + gamma)) @ Q)
        g.weights[gamma] = np.ones_like(g.weights[gamma])
        if add is None:
            continue
        Qn = bases[min(s + 1, len(bases) - 1)]
        store(branch, 1, Qn.T @ weight(branch.operands[1]))
        if len(branch.operands) == 3:
            store(branch, 2, weight(branch.operands[2]) @ Qn)
        if Qn is not Q:
            name = g.fresh_param(f"{branch.operands[1][1:].rsplit('.', 2)[0]}.shortcut")
            g.params[name] = ir.TensorType(g.params[gamma].dtype, Q.shape)
            g.weights[name] = np.ascontiguousarray(Q.T @ Qn, g.weights[gamma].dtype)
            sc = ir.Node(g.fresh_name(f"{add.name}.shortcut"), "matmul", (v, "@" + name), {}, g.types()[v], add.loc)
            g.nodes.insert(g.nodes.index(add), sc)
            add.operands = tuple(sc.ref if o == v else o for o in add.operands)
    return refs
