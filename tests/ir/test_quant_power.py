"""dequant_pow against a per-element loop; alpha = 1 is dequant_affine bit for bit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_pow"}
T = ir.TensorType


def codes(rng: np.random.Generator, dt: str, shape: tuple[int, int]) -> np.ndarray:
    d = DTYPES[dt]
    lo, hi = (d.lo, d.hi) if d.packed else (-128, 127)
    return rng.integers(lo, hi + 1, shape).astype(d.np)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 8), st.sampled_from(["i4", "i3", "i8", "i2"]),
       st.sampled_from([0.5, 0.75, 1.0, 1.3, 2.0, 3.7]), st.sampled_from(["f16", "f32"]), st.integers(0, 2**31 - 1))
def test_dequant_pow_matches_loop(out: int, n: int, group: int, dt: str, alpha: float, sdt: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ng = -(-n // group)
    q = codes(rng, dt, (out, n))
    s = rng.standard_normal((out, ng)).astype(DTYPES[sdt].np)
    op = ir.OPS["dequant_pow"]
    attrs = op.normalize_attrs({"group": group, "alpha": alpha})
    assert op.infer([T(DTYPES[dt], q.shape), T(DTYPES[sdt], s.shape)], attrs) == T(DTYPES["f32"], (out, n))
    got = op.reference([q, s], attrs)
    want = np.empty((out, n), np.float64)
    for o in range(out):
        for i in range(n):
            v = int(q[o, i])
            want[o, i] = float(s[o, i // group]) * (1 if v > 0 else -1 if v < 0 else 0) * abs(v) ** alpha
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 8), st.sampled_from(["i4", "i3", "i8"]), st.integers(0, 2**31 - 1))
def test_alpha_one_is_dequant_affine_exactly(out: int, n: int, group: int, dt: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = codes(rng, dt, (out, n))
    s = rng.standard_normal((out, -(-n // group))).astype(np.float16)
    pw = ir.OPS["dequant_pow"].reference([q, s], {"group": group, "alpha": 1.0, "dtype": DTYPES["f32"]})
    af = ir.OPS["dequant_affine"].reference([q, s], {"group": group, "dtype": DTYPES["f32"]})
    np.testing.assert_array_equal(pw, af)


@pytest.mark.parametrize("qt, alpha, msg", [
    (T(DTYPES["u4"], (2, 8)), 1.0, "signed integers"),
    (T(DTYPES["i4"], (2, 8)), 0.0, "positive finite"),
    (T(DTYPES["i4"], (2, 8)), float("nan"), "positive finite"),
    (T(DTYPES["i4"], (2, 8)), -1.5, "positive finite"),
])
def test_dequant_pow_type_errors(qt: ir.TensorType, alpha: float, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ir.OPS["dequant_pow"].infer([qt, T(DTYPES["f16"], (2, 2))], {"group": 4, "alpha": alpha, "dtype": DTYPES["f32"]})


def test_the_ir_file_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_power.ir").read_text())
    rng = np.random.default_rng(0)
    g.weights = {k: codes(rng, t.dtype.name, t.shape) if t.dtype.packed else rng.random(t.shape).astype(t.dtype.np)
                 for k, t in g.params.items()}
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y, z = ir.run(ir.verify(g), [x])
    wt = g.weights
    w = np.sign(wt["w.q"]) * np.abs(wt["w.q"]).astype(np.float64) ** 1.5 * np.repeat(wt["w.scale"].astype(np.float64), 4, 1)[:, :10]
    u = np.sign(wt["u.q"]) * np.abs(wt["u.q"]).astype(np.float64) ** 0.75 * wt["u.scale"].astype(np.float64)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, x @ u.T, rtol=1e-5, atol=1e-5)
