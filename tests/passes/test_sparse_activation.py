"""wina and teal: the sparsify op against a brute-force reading of its definition (ties, NaN, empty
and full keeps, thresholds), golden rewrites, WINA's scores, calibration, errors (the transform: test_wina_transform.py)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ir
from ir.ops.nn import sparsify_keep
from passes import PassContext
from passes.teal import Teal
from passes.wina import Wina

VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -3.0, np.nan, np.inf, -np.inf, 1e-30])


def brute_keep(score: np.ndarray, keep: int) -> np.ndarray:
    """The definition, one row at a time: sort by (score descending, NaN first, index ascending)."""
    out = np.zeros(score.shape, bool)
    for r in np.ndindex(score.shape[:-1]):
        row = score[r]
        order = sorted(range(len(row)), key=lambda i: (-np.inf if np.isnan(row[i]) else -row[i], i))
        out[r + (order[:keep],)] = True
    return out


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9), elements=VALUES),
       data=st.data())
def test_sparsify_keeps_the_top_scores_ties_to_the_lower_index(x, data):
    D = x.shape[-1]
    keep = data.draw(st.integers(0, D + 1))
    scale = data.draw(st.none() | hnp.arrays(np.float32, (D,), elements=st.sampled_from([0.0, 1.0, 2.0, 0.5])))
    ins = [x] if scale is None else [x, scale]
    got = ir.OPS["sparsify"].reference(ins, {"keep": keep, "threshold": 0.0})
    with np.errstate(invalid="ignore"):
        score = np.abs(x) * (1 if scale is None else scale)
    want_mask = brute_keep(score, keep)
    assert (want_mask.sum(-1) == min(keep, D)).all()
    np.testing.assert_array_equal(got, np.where(want_mask, x, 0))


@settings(max_examples=100, deadline=None)
@given(x=hnp.arrays(np.float32, (3, 7), elements=VALUES), t=st.sampled_from([0.0, 0.7, 1.5, -1.0]))
def test_sparsify_threshold_keeps_what_is_not_below(x, t):
    got = ir.OPS["sparsify"].reference([x], {"keep": -1, "threshold": t})
    keep = ~(np.abs(x) <= t)  # NaN is kept: never silently dropped
    np.testing.assert_array_equal(got, np.where(keep, x, 0))
    assert sparsify_keep(np.abs(x), -1, t).tolist() == keep.tolist()


BEFORE = """graph @mlp(%x: f32[2, 5, 8]) {
  param @layers.0.mlp.up_proj.weight: f32[16, 8]
  param @layers.0.mlp.down_proj.weight: f32[8, 16]
  %up: f32[2, 5, 16] = linear(%x, @layers.0.mlp.up_proj.weight)
  %down: f32[2, 5, 8] = linear(%up, @layers.0.mlp.down_proj.weight)
  %out: f32[2, 5, 8] = neg(%down)
  return %out
}
"""
TEAL_AFTER = """graph @mlp(%x: f32[2, 5, 8]) {
  param @layers.0.mlp.up_proj.weight: f32[16, 8]
  param @layers.0.mlp.down_proj.weight: f32[8, 16]
  %up.sparse: f32[2, 5, 8] = sparsify(%x) {keep = 4, threshold = 0.0}
  %up: f32[2, 5, 16] = linear(%up.sparse, @layers.0.mlp.up_proj.weight)
  %down.sparse: f32[2, 5, 16] = sparsify(%up) {keep = 6, threshold = 0.0}
  %down: f32[2, 5, 8] = linear(%down.sparse, @layers.0.mlp.down_proj.weight)
  %out: f32[2, 5, 8] = neg(%down)
  return %out
}
"""


def test_teal_golden(golden):
    golden(Teal(sparsity=0.5, per_layer="*down_proj*:0.6"), BEFORE, TEAL_AFTER)


def with_weights(text: str, seed: int = 0) -> ir.Graph:
    g = ir.parse(text)
    rng = np.random.default_rng(seed)
    for name, t in g.params.items():
        g.weights[name] = (rng.standard_normal(t.shape) * rng.uniform(0.1, 3, t.shape[-1])).astype(np.float32)
    return g


def test_wina_scores_with_column_norms():
    g = with_weights(BEFORE)
    out = Wina(sparsity=0.5).run(g)
    x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)
    W1, W2 = g.weights["layers.0.mlp.up_proj.weight"], g.weights["layers.0.mlp.down_proj.weight"]

    def masked(v, W, keep):
        s = np.abs(v) * np.linalg.norm(W.astype(np.float64), axis=0).astype(np.float32)
        return np.where(brute_keep(s, keep), v, 0)

    up = masked(x, W1, 4) @ W1.T
    want = -(masked(up, W2, 8) @ W2.T)
    np.testing.assert_allclose(ir.run(out, [x])[0], want, rtol=1e-5, atol=1e-5)
    assert Wina(sparsity=0.5).run(out) == out  # idempotent: sparse inputs are left alone


ATTN = """graph @attn(%x: f32[1, 4, 8]) {
  param @layers.0.self_attn.q_proj.weight: f32[8, 8]
  param @layers.0.self_attn.k_proj.weight: f32[4, 8]
  param @layers.0.self_attn.v_proj.weight: f32[4, 8]
  %q: f32[1, 4, 8] = linear(%x, @layers.0.self_attn.q_proj.weight)
  %k: f32[1, 4, 4] = linear(%x, @layers.0.self_attn.k_proj.weight)
  %v: f32[1, 4, 4] = linear(%x, @layers.0.self_attn.v_proj.weight)
  %q2: f32[1, 4, 8] = neg(%q)
  %k2: f32[1, 4, 4] = neg(%k)
  %v2: f32[1, 4, 4] = neg(%v)
  return %q2, %k2, %v2
}
"""


@pytest.mark.parametrize("method", ["wina", "teal"])
def test_shared_inputs_get_one_mask(method):
    """teal always, wina with shared=true: q/k/v get one sparsify, scored (wina) by the column norms of
    their weights stacked; plain wina gives each its own."""
    g = with_weights(ATTN)
    x = np.random.default_rng(3).standard_normal((1, 4, 8)).astype(np.float32)
    out = (Wina(sparsity=0.5, shared=True) if method == "wina" else Teal(sparsity=0.5)).run(g)
    masks = [n for n in out.nodes if n.op == "sparsify"]
    assert len(masks) == 1 and all(n.operands[0] == masks[0].ref for n in out.nodes if n.op == "linear")
    Ws = [g.weights[f"layers.0.self_attn.{m}_proj.weight"] for m in "qkv"]
    scale = np.linalg.norm(np.concatenate(Ws).astype(np.float64), axis=0).astype(np.float32) if method == "wina" else 1
    xs = np.where(brute_keep(np.abs(x) * scale, 4), x, 0)
    for got, W in zip(ir.run(out, [x]), Ws):
        np.testing.assert_allclose(got, -(xs @ W.T), rtol=1e-5, atol=1e-5)
    assert len([n for n in Wina(sparsity=0.5).run(g).nodes if n.op == "sparsify"]) == 3


def test_threshold_mode_calibrates_the_quantile():
    g = with_weights(BEFORE)
    rng = np.random.default_rng(3)
    calib = [[rng.standard_normal((2, 5, 8)).astype(np.float32)] for _ in range(3)]
    out = Teal(sparsity=0.5, mode="threshold").apply(g, PassContext(calibration=calib, progress=False))
    kept = []
    for xs in calib:
        ir.run(out, xs, observe=lambda n, ins: kept.append(np.mean(n.op == "sparsify" and
                                                                     ir.OPS["sparsify"].reference(ins, n.attrs) != 0))
               if n.op == "sparsify" else None)
    assert all(abs(k - 0.5) < 0.1 for k in kept)
    with pytest.raises(ir.PassError, match="calibration"):
        Teal(sparsity=0.5, mode="threshold").run(g)


@pytest.mark.parametrize("p, message", [
    (Teal(sparsity=1.0), "must be in \\[0, 1\\)"),
    (Teal(per_layer="*down_proj*"), "must be glob:sparsity"),
    (Teal(layers="*nothing*"), "no linear layer"),
    (Teal(mode="random"), "mode must be topk or threshold"),
])
def test_errors(p, message):
    with pytest.raises(ir.PassError, match=message):
        p.run(with_weights(BEFORE))


def block_sparsity(out: ir.Graph, block: str) -> tuple[float, dict[str, int]]:
    """The weighted sparsity of a block's top-k masks, and each linear's keep (by weight name)."""
    made = {n.ref: n for n in out.nodes if n.op == "sparsify"}
    keeps, dropped, total = {}, 0, 0
    for n in out.nodes:
        if n.op == "linear" and n.operands[0] in made and n.operands[1].startswith(f"@{block}."):
            W = out.weights[n.operands[1][1:]]
            keeps[n.operands[1][1:]] = k = made[n.operands[0]].attrs["keep"]
            dropped, total = dropped + (W.shape[1] - k) * W.shape[0], total + W.size
    return dropped / total, keeps


@pytest.mark.parametrize("method", [Wina, Teal])
def test_greedy_allocation_reaches_each_blocks_sparsity_and_spares_what_hurts(method):
    from test_squeezellm import tiny_llama  # one export of tiny("llama") per session

    _, g, ids = tiny_llama()
    calib = [[np.random.default_rng(1).integers(0, 128, (1, 12)).astype(np.int64)]]
    ctx = PassContext(calibration=calib, progress=False)
    out = method(sparsity=0.5, allocate="greedy").apply(g, ctx)
    for b in ("model.layers.0", "model.layers.1"):
        s, keeps = block_sparsity(out, b)
        assert 0.5 - 1 / 64 <= s <= 0.5 + 0.05, (b, s)
        # linears that read one input get one sparsity
        assert len({keeps[f"{b}.self_attn.{m}_proj.weight"] for m in "qkv"}) == 1
        assert keeps[f"{b}.mlp.gate_proj.weight"] == keeps[f"{b}.mlp.up_proj.weight"]
    assert [n.attrs for n in out.nodes] == [n.attrs for n in method(sparsity=0.5, allocate="greedy").apply(g, ctx).nodes]
    # a block whose MLP adds nothing: its inputs cost no error, so they go first and attention stays dense
    h = g.copy()
    h.weights["model.layers.0.mlp.down_proj.weight"] = np.zeros_like(h.weights["model.layers.0.mlp.down_proj.weight"])
    s, keeps = block_sparsity(method(sparsity=0.5, allocate="greedy").apply(h, ctx), "model.layers.0")
    assert s >= 0.5 - 1 / 64 and keeps["model.layers.0.self_attn.q_proj.weight"] == 64
    # top-k masks at the chosen sparsities: the model still runs, and differs from the dense one
    assert np.isfinite(ir.run(out, [ids.numpy()])[0]).all()


def test_greedy_allocation_errors():
    from test_squeezellm import tiny_llama

    _, g, _ = tiny_llama()
    with pytest.raises(ir.PassError, match="calibration"):
        Wina(allocate="greedy").run(g)
    with pytest.raises(ir.PassError, match="drop per_layer"):
        Teal(allocate="greedy", per_layer="*down_proj*:0.6").run(g)
    with pytest.raises(ir.PassError, match="above the most"):
        Wina(sparsity=0.97, allocate="greedy").apply(g, PassContext(calibration=[[np.zeros((1, 4), np.int64)]]))
    with pytest.raises(ir.PassError, match="allocate must be uniform or greedy"):
        Teal(allocate="best").run(g)
    calib = PassContext(calibration=[[np.zeros((2, 5, 8), np.float32)]], progress=False)
    with pytest.raises(ir.PassError, match="module path"):  # no model.layers.N in the locations
        Teal(allocate="greedy").apply(with_weights(BEFORE), calib)
