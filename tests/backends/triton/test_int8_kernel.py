"""The LLM.int8() kernels (backends/triton/kernels.py::int8_linear) against the op's reference
(ir/ops/quant/int8.py), in Triton's interpreter.

The kernel follows the op's arithmetic step by step, so it is bit for bit the reference wherever the
order of a sum cannot differ: the outlier columns, the token scales, the int8 codes, the exact int32
products and their f64 scaling. Only the f32 sum of the outlier (f16) products may round in another
order than the reference's BLAS; with no outlier column the output is identical.

Bit-exactness matters more here than for any other kernel: a code that rounds the other way moves a
product by a whole int8 step, and on a real model that difference grows layer by layer (issue 5's
whole-model int8 gap, see test_triton_models.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from interp import build

SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def graph(m: int, k: int, n: int, dt: str, bias: bool, threshold: float) -> ir.Graph:
    b = ", @b" if bias else ""
    g = ir.parse(f"graph @t(%x: {dt}[s, {k}]) {{\n param @wq: i8[{n}, {k}]\n param @ws: f32[{n}]\n"
                 f" param @b: {dt}[{n}]\n %y: {dt}[s, {n}] = int8_linear(%x, @wq, @ws{b}) {{threshold = {threshold!r}}}\n"
                 " return %y\n}")
    if not bias:
        del g.params["b"]
    return g


def run(g: ir.Graph, x: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g.weights.update({k: v for k, v in weights.items() if k in g.params})
    want = ir.run(g, [x])[0]
    got = build(g)([x.copy()])[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    return got, want


@SLOW
@given(m=st.integers(0, 40), k=st.integers(1, 300), n=st.integers(1, 90), dt=st.sampled_from(["f32", "f16"]),
       bias=st.booleans(), threshold=st.sampled_from([6.0, 2.5, 0.0, math.inf]), outliers=st.integers(0, 4),
       seed=st.integers(0, 2**31 - 1))
def test_int8_linear_is_the_reference(m, k, n, dt, bias, threshold, outliers, seed) -> None:
    """Ragged shapes (M, K, N not multiples of the tiles), a few large outlier columns, an all-zero token,
    an all-zero weight row and zero scales: identical to the reference when no column takes the f16
    path, else within the f32 rounding of the outlier sum."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)) * rng.choice([0.01, 1.0, 3.0])
    for j in rng.choice(k, min(outliers, k), replace=False):
        x[rng.random(m) < 0.5, j] *= rng.choice([10.0, 60.0, 500.0])
    if m:
        x[rng.integers(0, m)] = 0.0
    x = x.astype(np.float16 if dt == "f16" else np.float32)
    wq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    wq[rng.integers(0, n)] = 0
    ws = (rng.random(n) * rng.choice([0.01, 1.0])).astype(np.float32)
    ws[rng.random(n) < 0.2] = 0.0
    got, want = run(graph(m, k, n, dt, bias, threshold), x,
                    {"wq": wq, "ws": ws, "b": rng.standard_normal(n).astype(x.dtype)})
    X = x.astype(np.float32)
    if not (0 < threshold < math.inf) or not (np.abs(X) >= threshold).any():
        np.testing.assert_array_equal(got, want)
        return
    # the bound of an f32 sum's rounding in any order: a few eps times the sum of |products| (and f16's
    # own rounding of the result, one ulp, when the output is f16)
    mag = np.abs(X) @ (np.abs(wq.astype(np.float32)) * ws[:, None] / 127).T
    ulp = np.spacing(np.abs(want)).astype(np.float64) if dt == "f16" else 0.0
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), 1e-6 * mag + ulp + 1e-30)


def test_large_int32_sums_scale_exactly() -> None:
    """An int32 sum above 2^24 is not an f32: 1099 products of 127 x 127 make the odd 17,725,771, which the
    op scales in f64. An f32 epilogue rounds the sum first, and again at each product."""
    k = 1100
    x = np.full((2, k), 127.0, np.float32)  # scale 1, codes 127
    x[:, -1] = 0.0
    x[1, 0] = -127.0
    wq = np.full((20, k), 127, np.int8)
    ws = (np.random.default_rng(0).random(20) * 2).astype(np.float32)
    acc = np.float64(127 * 127 * 1099)
    in_f32 = np.float32(acc) * np.float32(1) * ws / np.float32(127)
    assert (in_f32 != (acc * ws.astype(np.float64) / 127).astype(np.float32)).any(), "no longer tells f32 from f64"
    got, want = run(graph(2, k, 20, "f32", False, 0.0), x, {"wq": wq, "ws": ws})
    np.testing.assert_array_equal(got, want)


def test_outlier_weights_round_to_f16_as_the_op_says() -> None:
    """The f16 path's weight is f16((wq * wscale) / 127). Computed as wq * (wscale / 127) instead, a few
    (code, scale) pairs round to the neighbouring f16, which moves the output by that weight's last bit
    times a large x: rows here are built from such pairs."""
    rng = np.random.default_rng(0)
    codes = np.arange(-127, 128, dtype=np.float32)
    rows = []
    for s in (rng.random(20000) * 3).astype(np.float32):
        differ = (codes * s / np.float32(127)).astype(np.float16) != (codes * (s / np.float32(127))).astype(np.float16)
        if differ.any():
            rows.append((s, int(codes[differ][0])))
        if len(rows) == 8:
            break
    assert len(rows) == 8, "no longer finds weights that tell the two orders apart"
    k = 16
    wq = rng.integers(-127, 128, (len(rows), k)).astype(np.int8)
    wq[:, 0] = [c for _, c in rows]
    ws = np.array([s for s, _ in rows], np.float32)
    x = np.zeros((1, k), np.float32)
    x[0, 0] = 1000.0  # an outlier column: its weights take the f16 path
    x[0, 1:] = rng.standard_normal(k - 1)
    got, want = run(graph(1, k, len(rows), "f32", False, 6.0), x, {"wq": wq, "ws": ws})
    np.testing.assert_array_equal(got, want)  # one outlier column: a sum of one product, no order to differ
