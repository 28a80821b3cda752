"""What the sparse-activation passes (wina, teal) share: which linear layers, how many input entries
each keeps, and the rewrite `linear(x, W)` -> `linear(sparsify(x, scale), W)`.

The `sparsify` op zeroes all but the most important entries of each token's input vector: the
`keep` largest scores (top-k per token, the default), or the scores above a threshold calibrated so
that a fraction `sparsity` of the calibration tokens' entries fall below it (the inverse CDF of the
scores, per layer). Every token is sparsified, prompt and decode alike, unless `prefix` > 0 keeps the
first tokens of each prompt dense (`keep_prefix_dense`).
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
                     prepare: Callable[[ir.Graph, list[ir.Node]], None] | None = None,
                     allocate: str = "uniform", prefix: float = 0.0) -> ir.Graph:
    """Put a `sparsify` in front of every selected linear of a copy of `g`. `scale_of(weight names, graph)`
    gives the per-input-column factor of the score of one mask, or None for |x| alone; `prepare(g, targets)`
    may first rewrite the copy (WINA's transform). shared: linears that read the same value at the same
    sparsity get one mask (one `sparsify`, so that the backend fuses them); else one mask each.
    allocate=greedy: each block's linears get their own sparsities (`greedy_levels`), else `per_layer`'s.
    prefix > 0: each prompt's first tokens stay dense (`keep_prefix_dense`)."""
    if not 0 <= prefix < 1:
        raise ir.PassError(f"{who}: prefix is the fraction of a prompt's first tokens kept dense, in [0, 1); got {prefix}")
    if mode not in ("topk", "threshold"):
        raise ir.PassError(f"{who}: mode must be topk or threshold, got {mode!r}")
    if allocate not in ("uniform", "greedy"):
        raise ir.PassError(f"{who}: allocate must be uniform or greedy, got {allocate!r}")
    if allocate == "greedy" and per_layer:
        raise ir.PassError(f"{who}: allocate=greedy chooses each layer's sparsity itself; drop per_layer or use allocate=uniform")
    globs = [p for p in layers.split("|") if p]
    made_by = {n.ref: n for n in g.nodes}

    def sparse(x: str) -> bool:  # made by a sparsify, or by keep_prefix_dense's where(dense, x, sparsify(x))
        n = made_by.get(x)
        return n is not None and (n.op == "sparsify" or (n.op == "where" and getattr(made_by.get(n.operands[2]), "op", "") == "sparsify"))

    targets = [n for n in g.nodes if n.op == "linear" and n.operands[1].startswith("@") and not is_head(g, n)
               and any(fnmatch.fnmatchcase(n.operands[1][1:], p) for p in globs)
               and not sparse(n.operands[0])]  # already sparse: running twice changes nothing
    if not targets:
        if any(n.op == "sparsify" for n in made_by.values()):
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
    if allocate == "greedy":
        levels = greedy_levels(g, ctx, who, list(masks.values()), scales, sparsity)
    thresholds = _thresholds(g, ctx, who, {w: levels[w] for w in groups}, scales) if mode == "threshold" else {}
    made = _insert(g, list(masks.values()), scales, ctx, who)
    for w, node in made.items():
        node.attrs = ir.OPS["sparsify"].normalize_attrs(
            {"keep": -1, "threshold": thresholds[w]} if mode == "threshold" else {"keep": keep(g, w, levels[w]), "threshold": 0.0})
    if prefix > 0:
        keep_prefix_dense(g, list(made.values()), prefix, who)
    return g


def keep_prefix_dense(g: ir.Graph, sparsifies: list[ir.Node], prefix: float, who: str) -> None:
    """Behind each `sparsify` s of x [..., L, D], `where(dense, x, s)`: a prompt of L > 1 tokens keeps its
    first L - floor((1 - prefix) L) tokens dense, a single token (a decoding step) is sparsified whole. This
    is the reference implementations' rule (microsoft/wina's SparsifyFn sparsifies the last int(0.99 L)
    tokens of each forward; Python's x[:, -0:] makes that every token when L = 1). The mask is computed
    in the graph (L may be symbolic), once per sequence length. A linear behind it is no longer
    `linear(sparsify(x))`, so pack_sparse leaves it dense."""
    types, users = g.types(), g.users()
    masks: dict[object, str] = {}
    made: list[ir.Node] = []

    def emit(op: str, *operands: str, **attrs: object) -> str:  # a mask node, at the top of the graph
        a = ir.OPS[op].normalize_attrs(attrs)
        t = ir.OPS[op].infer([types[o] for o in operands], a)
        n = ir.Node(g.fresh_name(f"prefix_{op}"), op, operands, a, t, None)
        g.nodes.insert(len(made), n)
        made.append(n)
        types[n.ref] = t
        return n.ref

    for s in sparsifies:
        t = s.type
        if t.rank < 2:
            raise ir.PassError(f"{who}: prefix keeps a prompt's first tokens dense, but %{s.name} has no token axis ({t})")
        L = t.shape[-2]
        if L not in masks:
            pos = emit("arange", end=L)  # token positions, i64 [L]
            one = emit("full", value=1, dtype="i64")
            n = emit("add", emit("amax", pos, dims=[0]), one)  # L, as a value
            q = emit("full", value=1.0 - prefix, dtype="f64")
            sparse_n = emit("cast", emit("mul", emit("cast", n, dtype="f64"), q), dtype="i64")  # floor((1 - prefix) L)
            dense = emit("logical_and", emit("lt", pos, emit("sub", n, sparse_n)), emit("gt", n, one))
            masks[L] = emit("reshape", dense, shape=[L, 1])
        w = ir.Node(g.fresh_name(f"{s.name}.prefix"), "where", (masks[L], s.operands[0], s.ref), {}, t, s.loc)
        g.nodes.insert(g.nodes.index(s) + 1, w)
        for u in users[s.ref]:
            u.operands = tuple(w.ref if o == s.ref else o for o in u.operands)


def keep(g: ir.Graph, w: str, level: float) -> int:
    """How many of weight `w`'s inputs a top-k mask at sparsity `level` keeps."""
    D = g.params[w].shape[1]
    return D - int(round(level * D))


def _insert(g: ir.Graph, masks: list[list[ir.Node]], scales: dict[str, str], ctx: PassContext,
            who: str) -> dict[str, ir.Node]:
    """One `sparsify` (dense for now: keep all) in front of each mask's linears; by the first one's weight."""
    made = {}
    for lins in tqdm(masks, desc=who, unit="mask", disable=None if ctx.progress else True, leave=False):
        first = lins[0]
        w, x = first.operands[1][1:], first.operands[0]
        node = ir.Node(g.fresh_name(f"{first.name}.sparse"), "sparsify", (x, scales[w]) if w in scales else (x,),
                       ir.OPS["sparsify"].normalize_attrs({"keep": keep(g, w, 0.0), "threshold": 0.0}),
                       g.types()[x], first.loc)
        g.nodes.insert(min(g.nodes.index(lin) for lin in lins), node)
        for lin in lins:
            lin.operands = (node.ref, *lin.operands[1:])
        made[w] = node
    return made


GREEDY_STEP = 0.025  # of a block's weights, sparsified per greedy step (TEAL's base step size)
GREEDY_MAX = 0.95  # no input gets sparser than this


def block_of(n: ir.Node) -> str | None:
    """The block a node belongs to: its module path up to the first numeric part (`model.layers.3`)."""
    parts = (n.loc or "").split(" ", 1)[0].split(".")
    i = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return None if i is None else ".".join(parts[:i + 1])


def greedy_levels(g: ir.Graph, ctx: PassContext, who: str, masks: list[list[ir.Node]], scales: dict[str, str],
                  sparsity: float) -> dict[str, float]:
    """TEAL's block-wise greedy allocation (which WINA's reference uses too): per block (`block_of`), the
    linears that read one input share a sparsity, all starting dense; each step raises the one input
    whose step (GREEDY_STEP of the block's weights, so every candidate drops as many weights) adds the
    least squared error to the block's outputs on the first calibration sample, with the dense block's
    inputs and top-k masks, until the block's weighted sparsity reaches `sparsity`. -> weight: sparsity."""
    if not ctx.calibration:
        raise ir.PassError(f"{who}{{allocate=greedy}} measures each block's error on activations: pass "
                           "compile(..., calibration=[...]), or use allocate=uniform (no data needed)")
    if sparsity > GREEDY_MAX:
        raise ir.PassError(f"{who}{{allocate=greedy}}: sparsity {sparsity} is above the most any input gets "
                           f"({GREEDY_MAX}); use allocate=uniform")
    h = g.copy()  # a scratch copy with a sparsify per mask, whose `keep` the search sets
    in_h = {n.name: n for n in h.nodes}
    masks = [[in_h[lin.name] for lin in lins] for lins in masks]
    # per block, per input value: the weights of the linears that read it (they share a sparsity)
    blocks: dict[str, dict[str, list[str]]] = {}
    for lins in masks:
        lin = lins[0]
        b = block_of(lin)
        if b is None:
            raise ir.PassError(f"{who}{{allocate=greedy}} groups linears into blocks by the module path of their "
                               f"location (model.layers.N...); %{lin.name} has {lin.loc!r}: use allocate=uniform")
        blocks.setdefault(b, {}).setdefault(lin.operands[0], []).extend(l.operands[1][1:] for l in lins)
    made = _insert(h, masks, scales, PassContext(progress=False), who)  # by each mask's first weight
    types = h.types()
    subs = {}  # per block: a graph of its nodes, whose inputs are the values it reads from outside
    for b in blocks:
        nodes = [n for n in h.nodes if block_of(n) == b]
        inside = {n.ref for n in nodes}
        free = list(dict.fromkeys(o for n in nodes for o in n.operands if o.startswith("%") and o not in inside))
        used_after = {o for n in h.nodes if n.ref not in inside for o in n.operands} | set(h.outputs)
        outs = [n.ref for n in nodes if n.ref in used_after]
        consts = {o[1:] for n in nodes for o in n.operands if o.startswith("@")}
        subs[b] = (ir.Graph(f"block_{len(subs)}", [(r[1:], types[r]) for r in free], {p: h.params[p] for p in consts},
                            nodes, outs, {p: h.weights[p] for p in consts}), free)
    # the dense graph's values that enter each block, on the first calibration sample
    want = {r for _, free in subs.values() for r in free}
    seen: dict[str, np.ndarray] = {}
    sample = ctx.calibration[0]
    seen.update({"%" + n: np.asarray(a) for (n, _), a in zip(g.inputs, sample) if "%" + n in want})
    ir.run(g, list(sample), observe=lambda n, ins: seen.update((o, v) for o, v in zip(n.operands, ins) if o in want))
    levels: dict[str, float] = {}
    for b, inputs in tqdm(blocks.items(), desc=f"{who} greedy allocation", unit="block",
                          disable=None if ctx.progress else True, leave=False):
        sub, free = subs[b]
        args = [seen[r] for r in free]
        size = {x: sum(int(np.prod(h.params[w].shape)) for w in ws) for x, ws in inputs.items()}
        total = sum(size.values())
        level = dict.fromkeys(inputs, 0.0)
        order = list(inputs)  # ties go to the input read first

        def error(lv: dict[str, float]) -> float:
            for x, ws in inputs.items():
                for w in ws:
                    if w in made:
                        made[w].attrs["keep"] = keep(h, w, lv[x])
            return float(sum(np.square(np.float64(a) - r).sum() for a, r in zip(ir.run(sub, args, check=False), ref)))

        ref = [np.float64(a) for a in ir.run(sub, args, check=False)]
        while sum(level[x] * size[x] for x in inputs) < sparsity * total - 1e-9:
            cands = {x: min(level[x] + GREEDY_STEP * total / size[x], GREEDY_MAX) for x in inputs if level[x] < GREEDY_MAX}
            if not cands:
                break
            best = min(cands, key=lambda x: (error({**level, x: cands[x]}), order.index(x)))
            level[best] = cands[best]
        levels.update({w: level[x] for x, ws in inputs.items() for w in ws})
    return levels


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
