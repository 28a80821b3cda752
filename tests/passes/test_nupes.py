"""nupes: golden rewrite, alpha = 1 is rtn exactly, nearest-level codes, the exponent search in both
modes, options and missing data, and a tiny Llama end to end."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from compiler.pass_manager import PassManager
from passes import PassContext, parse_pipeline
from passes.nupes import nupes, parse_alphas, rebuild, search
from passes.rtn import rtn

from test_squeezellm import tiny_llama  # one export of tiny("llama") for both test modules

BEFORE = """graph @main(%x: f32[2, 10]) {
  param @fc.weight: f32[4, 10]
  param @fc.bias: f32[4]
  %y: f32[2, 4] = linear(%x, @fc.weight, @fc.bias)
  %z: f32[2, 4] = relu(%y)
  return %z
}
"""
AFTER = """graph @main(%x: f32[2, 10]) {
  param @fc.bias: f32[4]
  param @fc.weight.q: i3[4, 10]
  param @fc.weight.scale: f16[4, 3]
  %fc.weight.dq: f32[4, 10] = dequant_pow(@fc.weight.q, @fc.weight.scale) {group = 4, alpha = ALPHA, dtype = f32}
  %y: f32[2, 4] = linear(%x, %fc.weight.dq, @fc.bias)
  %z: f32[2, 4] = relu(%y)
  return %z
}
"""


def graph(seed: int = 0) -> ir.Graph:
    g = ir.parse(BEFORE)
    rng = np.random.default_rng(seed)
    g.weights = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in g.params.items()}
    return g


def test_golden_text_round_trip_and_rerun_changes_nothing() -> None:
    g = graph()
    p = parse_pipeline("nupes{bits=3,group=4,alphas=\"0.5,1.5\"}")[0]
    out = p.run(g)
    alpha = out.node("fc.weight.dq").attrs["alpha"]
    assert alpha in (0.5, 1.5)
    assert out == ir.parse(AFTER.replace("ALPHA", repr(alpha))) and ir.parse(str(out)) == out
    ir.verify(out)
    again = p.run(out)
    assert again == out and again.same_weights(out)
    assert "fc.weight" in g.weights and "fc.weight" not in out.weights


weights = st.tuples(st.integers(0, 2**31 - 1), st.sampled_from([1.5, 3.0, 30.0]), st.booleans())


def heavy(seed: int, df: float, zero_row: bool, shape: tuple[int, int] = (5, 37)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W = (rng.standard_t(df, shape) * 0.05).astype(np.float32)
    if zero_row:
        W[1] = 0.0
    return W


@settings(max_examples=60, deadline=None)
@given(weights, st.integers(2, 8), st.integers(1, 40))
def test_alpha_one_is_symmetric_rtn_exactly(case, bits: int, group: int) -> None:
    W = heavy(*case)
    ours, ref = nupes(W, bits, group, 1.0), rtn(W, bits, group, symmetric=True)
    np.testing.assert_array_equal(ours.parts["q"][0], ref.parts["q"][0])
    np.testing.assert_array_equal(ours.parts["scale"][0], ref.parts["scale"][0])
    assert ours.parts["q"][1] == ref.parts["q"][1]
    np.testing.assert_array_equal(rebuild(ours), rebuild(ref))  # dequant_pow = dequant_affine, bit for bit


def test_alpha_one_pass_equals_rtn_pass() -> None:
    g = graph()
    a = parse_pipeline("nupes{bits=4,group=4,alphas=\"1.0\"}")[0].run(g)
    b = parse_pipeline("rtn{bits=4,group=4}")[0].run(g)
    x = np.random.default_rng(1).standard_normal((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(ir.run(a, [x])[0], ir.run(b, [x])[0])
    assert a.weights.keys() == b.weights.keys() and all((a.weights[k] == b.weights[k]).all() for k in a.weights)


@settings(max_examples=60, deadline=None)
@given(weights, st.integers(2, 5), st.integers(1, 40), st.sampled_from([0.5, 0.75, 1.25, 1.5, 2.0, 3.0]))
def test_codes_are_the_nearest_level_and_nothing_is_clipped(case, bits: int, group: int, alpha: float) -> None:
    W = heavy(*case)
    q = nupes(W, bits, group, alpha)
    Wh = rebuild(q).astype(np.float64)
    qmax = 2 ** (bits - 1) - 1
    s = np.repeat(q.parts["scale"][0].astype(np.float64), group, axis=1)[:, : W.shape[1]]
    ks = np.arange(-qmax - 1, qmax + 1)
    levels = (np.sign(ks) * np.abs(ks).astype(np.float64) ** alpha).astype(np.float32).astype(np.float64)
    best = np.abs(W[..., None] - s[..., None] * levels).min(axis=-1)
    assert (np.abs(W - Wh) <= best + 2.0**-21 * np.abs(W)).all()  # up to the f32 rounding of Ŵ
    assert q.parts["q"][0].max() <= qmax and q.parts["q"][0].min() >= -qmax - 1
    # the outermost level sits on each group's absmax (up to the f16 scale): nothing is clipped
    amax = np.abs(W).max()
    assert np.abs(Wh).max() <= amax * (1 + 2.0**-10) + 2.0**-24 * (qmax + 1) ** alpha  # (+ a subnormal f16 step)
    if case[2]:
        assert (Wh[1] == 0).all()


@settings(max_examples=30, deadline=None)
@given(weights, st.booleans())
def test_search_picks_the_least_weighted_error(case, data: bool) -> None:
    W = heavy(*case, shape=(6, 64))
    imp = np.random.default_rng(case[0]).random(64) ** 4 if data else None
    alphas = [0.5, 1.0, 1.5, 2.0]
    chosen = search(W, 3, 16, alphas, imp)

    def err(a: float) -> float:
        d2 = (W.astype(np.float64) - rebuild(nupes(W, 3, 16, a))) ** 2
        return float((d2 * (imp if imp is not None else 1.0)).sum())

    errs = [err(a) for a in alphas]
    assert chosen.attrs["alpha"] == alphas[int(np.argmin(errs))]


@settings(max_examples=30, deadline=None)
@given(weights, st.integers(2, 5), st.integers(1, 40), st.sampled_from([0.75, 1.0, 1.5]), st.booleans())
def test_clip_search_never_does_worse_per_group(case, bits: int, group: int, alpha: float, data: bool) -> None:
    W = heavy(*case)
    imp = np.random.default_rng(case[0]).random(W.shape[1]) if data else None
    plain, clipped = nupes(W, bits, group, alpha, imp), nupes(W, bits, group, alpha, imp, clip=0.6)
    assert plain.parts["q"][0].tobytes() == nupes(W, bits, group, alpha, imp, clip=1.0).parts["q"][0].tobytes()

    def group_err(q) -> np.ndarray:
        d2 = (W.astype(np.float64) - rebuild(q)) ** 2 * (imp if imp is not None else 1.0)
        return np.add.reduceat(d2, np.arange(0, W.shape[1], group), axis=1)

    assert (group_err(clipped) <= group_err(plain) * (1 + 1e-9) + 1e-30).all()
    assert (clipped.parts["scale"][0] <= plain.parts["scale"][0]).all()


def test_data_mode_weights_the_error_by_input_energy() -> None:
    """A layer whose inputs live on the columns where a power grid fits worse picks a different α."""
    rng = np.random.default_rng(0)
    W = np.concatenate([rng.standard_normal((8, 32)), rng.uniform(-1, 1, (8, 32))], axis=1).astype(np.float32)
    gauss, unif = np.r_[np.ones(32), np.zeros(32)], np.r_[np.zeros(32), np.ones(32)]
    a_g = search(W, 3, 32, [0.75, 1.0, 1.5], gauss).attrs["alpha"]
    a_u = search(W, 3, 32, [0.75, 1.0, 1.5], unif).attrs["alpha"]
    assert a_g > a_u  # bell-shaped columns want levels packed near 0, uniform ones don't


def test_data_mode_needs_calibration() -> None:
    p = parse_pipeline("nupes{mode=data}")[0]
    for call in (lambda: p.run(graph()), lambda: p.apply(graph(), PassContext(calibration=None, progress=False))):
        with pytest.raises(ir.PassError, match=r"calibration=\[\.\.\.\].*mode=data_free"):
            call()
    calib = [[np.random.default_rng(i).standard_normal((2, 10)).astype(np.float32)] for i in range(2)]
    out = p.apply(graph(), PassContext(calibration=calib, progress=False))
    assert ir.count_ops(out)["dequant_pow"] == 1


def test_alphas_lists_and_ranges() -> None:
    assert parse_alphas("0.5:2.0:0.25") == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert parse_alphas("1.0") == [1.0] and parse_alphas("1.5, 0.5") == [1.5, 0.5]
    for bad in ("", "a,b", "1:0.5:0.1", "0.5:2:0", "0,1", "-1", "1:2"):
        with pytest.raises(ir.PassError, match="nupes"):
            parse_alphas(bad)
    p = parse_pipeline("nupes{alphas=\"0.5:2.0:0.5\", mode=data}")[0]
    assert parse_pipeline(str(p)) == [p]


@pytest.mark.parametrize("spec, msg", [("nupes{bits=1}", "bits"), ("nupes{group=0}", "group"), ("nupes{mode=fast}", "mode"),
                                       ("nupes{clip=0.0}", "clip"), ("nupes{clip=1.5}", "clip")])
def test_bad_options(spec: str, msg: str) -> None:
    with pytest.raises(ir.PassError, match=msg):
        parse_pipeline(spec)[0].run(graph())


def test_tiny_llama_end_to_end(capsys) -> None:
    model, g, ids = tiny_llama()
    calib = [[np.random.default_rng(i).integers(0, 128, (1, 12))] for i in range(2)]
    want = ir.run(g, [ids.numpy()])[0]
    for spec in ("nupes{bits=4,group=32}", "nupes{bits=4,group=32,mode=data}"):
        out = PassManager(spec, context=PassContext(calibration=calib, progress=False)).run(g)
        assert "alpha per layer" in capsys.readouterr().err
        assert ir.count_ops(out)["dequant_pow"] == 14  # 7 linears a layer, not the head
        got = ir.run(out, [ids.numpy()])[0]
        cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
        assert cos > 0.99, cos
