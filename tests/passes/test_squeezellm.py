"""squeezellm: golden rewrite, the dense-and-sparse contracts, the Lloyd objective, the IQR rule,
the sensitivity sources (Fisher, E[x^2], neither), and a tiny Llama end to end."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from compiler.pass_manager import PassManager
from passes import PassContext, parse_pipeline
from passes.squeezellm import fisher_diagonal, iqr_outliers, iqr_scores, squeezellm, top_mask, weighted_kmeans

BEFORE = """graph @main(%x: f32[2, 8]) {
  param @fc.weight: f32[4, 8]
  param @fc.bias: f32[4]
  param @out.weight: f32[3, 4]
  %y: f32[2, 4] = linear(%x, @fc.weight, @fc.bias)
  %z: f32[2, 4] = relu(%y)
  %o: f32[2, 3] = linear(%z, @out.weight)
  return %o
}
"""
# outliers=0.1 of 32 weights: 3 IQR outliers, kept exactly by add_sparse; the head stays float
AFTER = """graph @main(%x: f32[2, 8]) {
  param @fc.bias: f32[4]
  param @out.weight: f32[3, 4]
  param @fc.weight.codes: u3[4, 8]
  param @fc.weight.book: f16[4, 8]
  param @fc.weight.idx: i32[3]
  param @fc.weight.val: f16[3]
  %fc.weight.dq: f32[4, 8] = dequant_codebook(@fc.weight.codes, @fc.weight.book) {dtype = f32}
  %fc.weight.sp: f32[4, 8] = add_sparse(%fc.weight.dq, @fc.weight.idx, @fc.weight.val)
  %y: f32[2, 4] = linear(%x, %fc.weight.sp, @fc.bias)
  %z: f32[2, 4] = relu(%y)
  %o: f32[2, 3] = linear(%z, @out.weight)
  return %o
}
"""


def graph(seed: int = 0) -> ir.Graph:
    g = ir.parse(BEFORE)
    rng = np.random.default_rng(seed)
    g.weights = {k: rng.standard_t(3, t.shape).astype(np.float32) for k, t in g.params.items()}
    return g


def calibration(seed: int = 0, n: int = 2) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((2, 8)).astype(np.float32)] for _ in range(n)]


def rebuilt(q, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
    codes, book = q.parts["codes"][0], q.parts["book"][0]
    W = np.take_along_axis(book.astype(np.float32), codes.astype(np.intp), axis=1)
    W.reshape(-1)[idx] += val.astype(np.float32)
    return W


def objective(x: np.ndarray, s: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (s * ((x[:, :, None].astype(np.float64) - c[:, None, :]) ** 2).min(axis=2)).sum(axis=1)


def test_golden_text_round_trip_and_rerun_changes_nothing(capsys) -> None:
    p = parse_pipeline("squeezellm{bits=3,outliers=0.1}")[0]
    g, ctx = graph(), PassContext(calibration=calibration(), progress=False)
    text = str(g)
    out = p.apply(g, ctx)
    assert str(g) == text and "fc.weight" in g.weights  # the input is untouched
    ir.verify(out)
    assert out == ir.parse(AFTER), str(out)
    assert ir.parse(str(out)) == out and ir.parse(ir.print_graph(out, locs=True)).node("fc.weight.dq").loc.endswith(
        "[squeezellm: sensitivity=activation]")
    assert "sensitivity=activation" in capsys.readouterr().err
    again = p.apply(out, ctx)
    assert again == out and again.same_weights(out)
    assert p.run(out) == out  # nothing left to quantize: no data needed either
    x = calibration(1, 1)[0]
    np.testing.assert_allclose(ir.run(out, x)[0], ir.run(g, x)[0], rtol=0.2, atol=0.2)


def test_missing_data_says_what_to_pass() -> None:
    p = parse_pipeline("squeezellm")[0]
    for call in (lambda: p.run(graph()), lambda: p.apply(graph(), PassContext(calibration=[], progress=False))):
        with pytest.raises(ir.PassError, match=r"calibration=\[\.\.\.\].*loss="):
            call()
    with pytest.raises(ir.PassError, match="not a torch module"):
        p.apply(graph(), PassContext(loss=lambda m: m, model=graph(), progress=False))


@pytest.mark.parametrize("spec, msg", [("squeezellm{bits=1}", "bits"), ("squeezellm{outliers=1.5}", "fractions"),
                                       ("squeezellm{iters=-1}", "iters")])
def test_bad_options(spec: str, msg: str) -> None:
    with pytest.raises(ir.PassError, match=msg):
        parse_pipeline(spec)[0].apply(graph(), PassContext(calibration=calibration(), progress=False))


case = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from([1.5, 3.0, 30.0]), st.booleans(), st.booleans(),
                 st.sampled_from(["random", "column", "sparse_zero", "zero"]), st.sampled_from([2, 3, 4]))


def heavy(seed: int, df: float, zero_row: bool, const_row: bool, sens: str) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed weights with a few planted outliers, maybe an all-zero and a constant row, and
    sensitivities: random, per input column, mostly zero, or all zero."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_t(df, (6, 40)) * 0.05).astype(np.float32)
    W.reshape(-1)[rng.choice(W.size, 3, replace=False)] = rng.choice([-1, 1], 3) * 4.0
    if zero_row:
        W[1] = 0.0
    if const_row:
        W[2] = 0.3125
    s = {"random": rng.random(W.shape) ** 3, "column": np.broadcast_to(rng.random(40), W.shape),
         "sparse_zero": rng.random(W.shape) * (rng.random(W.shape) < 0.2), "zero": np.zeros(W.shape)}[sens]
    return W, s


@settings(max_examples=60, deadline=None)
@given(case)
def test_dense_and_sparse_contracts(c) -> None:
    seed, df, zero_row, const_row, sens, bits = c
    W, s = heavy(seed, df, zero_row, const_row, sens)
    masks, _ = iqr_outliers({"w": W}, 0.02)
    q, idx, val = squeezellm(W, s, bits, masks["w"], 0.01, 30)
    codes, book = q.parts["codes"][0], q.parts["book"][0].astype(np.float64)
    assert book.shape == (6, 2**bits) and codes.max() < 2**bits and (np.diff(book, axis=1) >= 0).all()
    # the sparse part: sorted unique i32 indices, the planted outliers among them, W exact up to f16
    assert idx.dtype == np.int32 and (np.diff(idx) > 0).all()
    if (np.abs(W) >= 4.0).sum() <= int(np.floor(0.02 * W.size)):  # else a heavier tail outranks them
        assert set(np.flatnonzero(np.abs(W) == 4.0)) <= set(idx)
    assert masks["w"].sum() == int(np.floor(0.02 * W.size))
    top = top_mask(s, int(np.floor(0.01 * W.size)), np.abs(W))
    np.testing.assert_array_equal(idx, np.flatnonzero(masks["w"] | top))  # outliers and the most sensitive
    Wh = rebuilt(q, idx, val)
    dense = np.take_along_axis(book, codes.astype(np.intp), axis=1)
    gap = np.abs(W.ravel()[idx] - dense.ravel()[idx])
    assert (np.abs(Wh.ravel()[idx] - W.ravel()[idx]) <= gap * 2.0**-11 + 1e-7).all()
    # every weight takes its nearest f16 centroid
    dist = np.abs(W[:, :, None] - book[:, None, :])
    assert (np.abs(W - dense) <= dist.min(axis=2)).all()
    # an all-zero row is rebuilt exactly, a constant row up to f16
    if zero_row:
        assert (Wh[1] == 0).all()
    if const_row:
        assert (np.abs(Wh[2] - 0.3125) <= 0.3125 * 2.0**-11).all()


@settings(max_examples=40, deadline=None)
@given(case)
def test_lloyd_objective_never_increases(c) -> None:
    seed, df, zero_row, const_row, sens, bits = c
    W, s = heavy(seed, df, zero_row, const_row, sens)
    s = np.where(s.sum(axis=1, keepdims=True) > 0, s, 1.0)  # the pass fits such rows unweighted
    prev = None
    ulp = 1e-24 * (s * W.astype(np.float64) ** 2).sum(axis=1)  # a centroid one rounding off an exact fit
    for t in range(12):
        c = weighted_kmeans(W, s, 2**bits, t)  # deterministic: t iterations are a prefix of t + 1
        assert c.shape == (6, 2**bits) and (np.diff(c, axis=1) >= 0).all()
        cur = objective(W, s, c)
        if prev is not None:
            assert (cur <= prev * (1 + 1e-9) + ulp).all(), (t, cur, prev)
        prev = cur


def test_weighted_kmeans_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([-3.0, -1.0, 0.5, 2.0])
    x = (centers[rng.integers(0, 4, (3, 400))] + rng.normal(0, 0.01, (3, 400)))
    c = weighted_kmeans(x, rng.random(x.shape), 4, 50)
    np.testing.assert_allclose(c, np.broadcast_to(centers, c.shape), atol=0.01)


def test_iqr_rule_uses_one_fence_for_all_layers() -> None:
    rng = np.random.default_rng(0)
    ws = {"a": rng.standard_t(2, (20, 30)).astype(np.float32), "b": rng.standard_normal((10, 30)).astype(np.float32)}
    masks, k = iqr_outliers(ws, 0.0045 * 10)
    n = sum(w.size for w in ws.values())
    assert sum(m.sum() for m in masks.values()) == int(np.floor(0.045 * n))
    for w, W in ws.items():  # on or outside the fences max(|Q1|, |Q3|) + k·IQR, and only those
        q1, q3 = np.quantile(W, [0.25, 0.75])
        fence = max(abs(q1), abs(q3)) + k * (q3 - q1)
        np.testing.assert_array_equal(masks[w], np.abs(W) >= fence - 1e-6 * abs(fence))
    assert masks["a"].sum() > masks["b"].sum()  # the heavy-tailed layer has more
    flat = np.zeros((4, 4), np.float32)
    flat[0, 0] = 1.0
    assert iqr_scores(flat)[0, 0] == np.inf and (iqr_scores(flat).ravel()[1:] == -np.inf).all()


def test_fisher_diagonal_is_the_sum_of_squared_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3))
    xs = torch.randn(4, 5)
    w = model[0].weight

    def loss(m: torch.nn.Module) -> torch.Tensor:
        return (m(xs) ** 2).sum(dim=1)  # one term per sample

    got = fisher_diagonal(model, loss, ["0.weight"])["0.weight"]
    want = sum(torch.autograd.grad((model(xs[i]) ** 2).sum(), w)[0] ** 2 for i in range(4))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
    assert w.grad is None and w.requires_grad  # no side effects on the model
    with pytest.raises(ir.PassError, match="no parameter"):
        fisher_diagonal(model, loss, ["nope.weight"])


@functools.lru_cache(maxsize=1)
def tiny_llama() -> tuple[torch.nn.Module, ir.Graph, torch.Tensor]:
    """tiny("llama"), its exported graph and a 12-token input; exported once per session (test_nupes too)."""
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    return model, export(model, (ids,)).graph, ids


def test_tiny_llama_end_to_end(capsys) -> None:
    model, g, ids = tiny_llama()
    calib = [[torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(i)).numpy()] for i in range(2)]
    want = ir.run(g, [ids.numpy()])[0]

    def loss(m: torch.nn.Module) -> torch.Tensor:
        return torch.stack([m(torch.from_numpy(c[0]), labels=torch.from_numpy(c[0]), use_cache=False).loss for c in calib])

    for ctx, kind in ((PassContext(calibration=calib, progress=False), "activation"),
                      (PassContext(calibration=calib, model=model, loss=loss, progress=False), "fisher")):
        out = PassManager("squeezellm{bits=4}", context=ctx).run(g)
        assert f"sensitivity={kind}" in capsys.readouterr().err
        counts = ir.count_ops(out)
        assert counts["dequant_codebook"] == 14 and counts["add_sparse"] == 14  # 7 linears a layer, not the head
        assert all(kind in n.loc for n in out if n.op == "dequant_codebook")
        got = ir.run(out, [ids.numpy()])[0]
        cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
        assert cos > 0.99, cos
