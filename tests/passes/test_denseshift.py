"""denseshift: golden rewrite, and its contracts on rows with outliers, all-zero and constant rows:
no zero weight, every weight at its nearest level for the final scale, MSE non-increasing."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import PASSES, parse_pipeline
from passes.denseshift import S_MIN, DenseShift, fit_shift, nearest_levels

BEFORE = """graph @g(%x: f32[s0, 10]) {
  param @norm: f32[10]
  param @w: f32[4, 10]
  param @head.weight: f32[3, 4]
  %h: f32[s0, 10] = mul(%x, @norm)
  %y: f32[s0, 4] = linear(%h, @w)
  %z: f32[s0, 3] = linear(%y, @head.weight)
  return %z
}
"""
AFTER = """graph @g(%x: f32[s0, 10]) {
  param @norm: f32[10]
  param @head.weight: f32[3, 4]
  param @w.code: u3[4, 10]
  param @w.scale: f16[4, 1]
  %h: f32[s0, 10] = mul(%x, @norm)
  %w.dq: f32[4, 10] = dequant_shift(@w.code, @w.scale) {bits = 3, group = 10, dtype = f32}
  %y: f32[s0, 4] = linear(%h, %w.dq)
  %z: f32[s0, 3] = linear(%y, @head.weight)
  return %z
}
"""


def with_weights(text: str, seed: int = 0) -> ir.Graph:
    g = ir.parse(text)
    rng = np.random.default_rng(seed)
    g.weights = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in g.params.items()}
    return ir.verify(g)


def one_linear(W: np.ndarray) -> ir.Graph:
    out, n = W.shape
    g = ir.parse(f"graph @g(%x: f32[s0, {n}]) {{\n  param @w: f32[{out}, {n}]\n  %y: f32[s0, {out}] = linear(%x, @w)\n"
                 f"  %z: f32[s0, {out}] = relu(%y)\n  return %z\n}}\n")
    g.weights = {"w": W}
    return ir.verify(g)


def dequant(g: ir.Graph, w: str) -> np.ndarray:
    n = next(n for n in g.nodes if n.op == "dequant_shift" and n.operands[0] == f"@{w}.code")
    return ir.OPS[n.op].reference([g.weights[o[1:]] for o in n.operands], n.attrs)


def test_golden_rewrite_verifies_roundtrips_and_is_idempotent() -> None:
    g = with_weights(BEFORE)
    text = str(g)
    p = DenseShift()
    out = p.run(g)
    assert str(g) == text and "w" in g.weights, "the pass mutated its input"
    assert out == ir.parse(AFTER), f"got:\n{out}"
    ir.verify(out)
    assert ir.parse(str(out)) == out
    again = p.run(out)
    assert again == out and again.same_weights(out), "a second run changed the graph"
    x = np.random.default_rng(1).standard_normal((5, 10)).astype(np.float32)
    want, got = ir.run(g, [x])[0], ir.run(out, [x])[0]
    assert np.abs(got - want).max() < 0.6 * np.abs(want).max()  # 3-bit power-of-two: coarse, but the same map
    assert (dequant(out, "w") != 0).all()


def test_registered_and_options_roundtrip() -> None:
    assert PASSES["denseshift"] is DenseShift
    p = parse_pipeline("denseshift{bits=4, group=64, iters=3}")[0]
    assert parse_pipeline(str(p)) == [p] and (p.bits, p.group, p.iters) == (4, 64, 3)
    for bad in ("denseshift{bits=1}", "denseshift{bits=9}", "denseshift{group=-1}"):
        with pytest.raises(ir.PassError):
            parse_pipeline(bad)[0].run(with_weights(BEFORE))


@st.composite
def weights(draw: st.DrawFn) -> np.ndarray:
    """Gaussian rows, some with a few large outliers, some all zero, some constant."""
    out, n = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    W = rng.standard_normal((out, n)) * 10.0 ** draw(st.integers(-3, 1))
    for o in range(out):
        kind = draw(st.sampled_from(["gauss", "outliers", "zero", "const", "tiny"]))
        if kind == "outliers":
            W[o, rng.integers(0, n, 1 + n // 10)] *= 50
        elif kind == "zero":
            W[o] = 0
        elif kind == "const":
            W[o] = rng.standard_normal()
        elif kind == "tiny":
            W[o] *= 1e-30
    return W.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(weights(), st.sampled_from([2, 3, 4, 8]), st.integers(0, 16), st.integers(0, 12))
def test_contracts(W: np.ndarray, bits: int, group: int, iters: int) -> None:
    group = group or W.shape[1]
    P = 2 ** (bits - 1) - 1
    s, p, neg, history = fit_shift(W, bits, group, iters)
    # the MSE never rises
    for a, b in zip(history, history[1:]):
        assert (b <= a).all()
    # every weight sits at its nearest level for the final (f16) scale, with W's sign
    sw = np.repeat(s.astype(np.float64), group, axis=1)[:, : W.shape[1]]
    A = np.abs(W.astype(np.float64))
    err = np.abs(A - sw * 2.0**-p)
    best = np.abs(A[..., None] - sw[..., None] * 2.0 ** -np.arange(P + 1)).min(-1)
    assert (err <= best).all()
    assert (neg == (W < 0)).all()
    # the dequantized weights (as the op computes them, in f32) are never zero
    Wh = dequant(DenseShift(bits=bits, group=group, iters=iters).run(one_linear(W)), "w")
    assert (Wh != 0).all()
    # all-zero groups take the smallest scale and level; constant rows come out exact up to the f16 scale
    zero = (W == 0).all(axis=1)
    np.testing.assert_array_equal(Wh[zero], np.float32(S_MIN * 2.0**-P))
    const = (W == W[:, :1]).all(axis=1) & ~zero & (np.abs(W[:, 0]) > 1e-4)
    np.testing.assert_allclose(Wh[const], W[const], rtol=2**-11)


def test_nearest_levels_is_nearest_by_value() -> None:
    r = np.r_[np.random.default_rng(0).random(10_000) * 3, 0.0, 0.75, 0.7, 1.5, 3.0, 2.0**-9]
    for P in (1, 3, 7):
        p = nearest_levels(r, P)
        lv = 2.0 ** -np.arange(P + 1)
        assert (np.abs(r - 2.0**-p) <= np.abs(r[:, None] - lv).min(-1)).all()
    assert nearest_levels(np.array([0.7, 0.75]), 3).tolist() == [1, 0]  # the log midpoint would give 0, 1


def test_more_iterations_never_hurt() -> None:
    W = np.random.default_rng(3).standard_normal((32, 96)).astype(np.float32)
    W[:, 7] *= 30
    final = [fit_shift(W, 3, 96, it)[3][-1].sum() for it in (0, 1, 5, 20)]
    assert all(b <= a for a, b in zip(final, final[1:])) and final[-1] < final[0]
