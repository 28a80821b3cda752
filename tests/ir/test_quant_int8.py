"""int8_linear against an independent torch formulation (true int64 matmul for the int8 part), with
injected outlier columns, all-zero rows, no tokens and ragged shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES, from_numpy

TESTED_OPS = {"int8_linear"}
OP = ir.OPS["int8_linear"]


def torch_int8_linear(x: np.ndarray, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray | None,
                      threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """LLM.int8() as bitsandbytes writes it, in torch: (result, a bound on |result| for tolerances)."""
    n_out, n_in = wq.shape
    X = torch.from_numpy(x).float().reshape(-1, n_in)
    W, s = torch.from_numpy(wq), torch.from_numpy(ws).float()
    on = 0 < threshold < math.inf
    cols = (X.abs() >= threshold).any(dim=0) if on else torch.zeros(n_in, dtype=torch.bool)
    Xr = X.masked_fill(cols, 0.0)
    sx = Xr.abs().amax(dim=1) / 127 if X.shape[0] else torch.zeros(0)
    xq = torch.round(Xr / torch.where(sx > 0, sx, torch.ones_like(sx))[:, None]).clamp(-127, 127)
    acc = xq.to(torch.int64) @ W.to(torch.int64).T  # an integer matmul: exact by construction
    y = (acc.double() * sx.double()[:, None] * s.double()[None, :] / 127).float()
    Xo, Wo = X[:, cols].half().float(), (W[:, cols].float() * s[:, None] / 127).half().float()
    y = y + Xo @ Wo.T
    mag = y.abs() + Xo.abs() @ Wo.abs().T
    if bias is not None:
        y = y + torch.from_numpy(bias)
        mag = mag + torch.from_numpy(bias).abs()
    shape = x.shape[:-1] + (n_out,)
    return y.reshape(shape).numpy(), mag.reshape(shape).numpy()


def run_op(x, wq, ws, bias, threshold):
    attrs = OP.normalize_attrs({"threshold": threshold})
    ins = [x, wq, ws] + ([bias] if bias is not None else [])
    t = OP.infer([ir.TensorType(from_numpy(a.dtype), a.shape) for a in ins], attrs)
    y = OP.reference(ins, attrs)
    assert y.shape == t.shape and y.dtype == t.dtype.np
    return y


@st.composite
def cases(draw: st.DrawFn):
    """Ragged shapes (0 to 3 leading dims, T may be 0), random int8 weights, and inputs with some
    outlier columns, all-zero rows and all-zero weight rows injected."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    n_in, n_out = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    x = (rng.standard_normal(lead + (n_in,)) * draw(st.sampled_from([0.01, 1.0, 3.0]))).astype(np.float32)
    X = x.reshape(-1, n_in)
    for j in draw(st.sets(st.integers(0, n_in - 1), max_size=4)):  # outlier features: a few tokens, large
        rows = rng.random(X.shape[0]) < 0.5
        X[rows, j] *= draw(st.sampled_from([10.0, 60.0, 500.0]))
    if X.shape[0] and draw(st.booleans()):
        X[rng.integers(0, X.shape[0])] = 0.0
    wq = rng.integers(-127, 128, (n_out, n_in)).astype(np.int8)
    if draw(st.booleans()):
        wq[rng.integers(0, n_out)] = 0
    ws = (rng.random(n_out) * draw(st.sampled_from([0.01, 1.0]))).astype(np.float32)
    ws[rng.random(n_out) < 0.2] = 0.0
    bias = rng.standard_normal(n_out).astype(np.float32) if draw(st.booleans()) else None
    threshold = draw(st.sampled_from([6.0, 2.5, 0.0, -1.0, math.inf]))
    return X.reshape(x.shape), wq, ws, bias, threshold


@settings(max_examples=150, deadline=None)
@given(cases())
def test_int8_linear_matches_torch(case) -> None:
    x, wq, ws, bias, threshold = case
    got = run_op(x, wq, ws, bias, threshold)
    want, mag = torch_int8_linear(x, wq, ws, bias, threshold)
    assert np.isfinite(got).all()
    # The int8 part is exact on both sides; only the f32 sums of the outlier part (and of the
    # bias) may round in another order.
    np.testing.assert_array_less(np.abs(got - want), 1e-6 * mag + 1e-30)
    X = x.reshape(-1, wq.shape[1])
    if not (0 < threshold < math.inf) or not (np.abs(X) >= threshold).any():
        np.testing.assert_array_equal(got, want)  # no outlier path: the same operations, bit for bit


def test_outlier_columns_take_the_16_bit_path() -> None:
    """A large feature wrecks per-token int8 (it sets every token's scale); LLM.int8() isolates it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    x[:, 5] *= 80.0
    wq = rng.integers(-127, 128, (32, 64)).astype(np.int8)
    ws = rng.random(32).astype(np.float32)
    exact = x.astype(np.float64) @ (wq * ws[:, None].astype(np.float64) / 127).T
    err = {t: np.abs(run_op(x, wq, ws, None, t) - exact).max() for t in (6.0, 0.0, math.inf)}
    assert err[0.0] == err[math.inf]  # both switch the outlier path off
    assert err[6.0] < err[0.0] / 20


def test_zero_rows_no_tokens_and_zero_scales() -> None:
    wq = np.full((3, 5), 127, np.int8)
    ws = np.array([1.0, 0.0, 2.0], np.float32)
    b = np.array([0.5, -1.0, 0.0], np.float32)
    y = run_op(np.zeros((2, 5), np.float32), wq, ws, b, 6.0)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 3)))
    assert run_op(np.zeros((0, 5), np.float32), wq, ws, b, 6.0).shape == (0, 3)
    assert run_op(np.zeros((2, 0, 5), np.float32), wq, ws, None, 6.0).shape == (2, 0, 3)
    y = run_op(np.ones((1, 5), np.float32), wq, ws, None, 6.0)
    np.testing.assert_array_equal(y, [[5.0, 0.0, 10.0]])


@pytest.mark.parametrize("dt", ["f16", "bf16"])
def test_16_bit_inputs_give_16_bit_results(dt: str) -> None:
    d = DTYPES[dt]
    x = ir.TensorType(d, ("s0", 4))
    t = OP.infer([x, ir.TensorType(DTYPES["i8"], (3, 4)), ir.TensorType(DTYPES["f32"], (3,)),
                  ir.TensorType(d, (3,))], OP.normalize_attrs({}))
    assert t == ir.TensorType(d, ("s0", 3))
    y = OP.reference([np.ones((2, 4), d.np), np.ones((3, 4), np.int8), np.ones(3, np.float32), np.zeros(3, d.np)],
                     OP.normalize_attrs({}))
    assert y.dtype == d.np


@pytest.mark.parametrize("bad, msg", [
    (("f32", (2, 4), "i4", (3, 4), "f32", (3,)), "static i8"),
    (("f32", (2, 5), "i8", (3, 4), "f32", (3,)), "does not match"),
    (("f32", (2, 4), "i8", (3, 4), "f32", (4,)), "wscale"),
    (("i32", (2, 4), "i8", (3, 4), "f32", (3,)), "floating point"),
])
def test_type_errors_name_the_operand(bad, msg) -> None:
    types = [ir.TensorType(DTYPES[bad[i]], bad[i + 1]) for i in (0, 2, 4)]
    with pytest.raises(ValueError, match=msg):
        OP.infer(types, OP.normalize_attrs({}))
