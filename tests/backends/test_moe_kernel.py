"""The native step's MoE lowerings (backends/cpu/native/moe.py) against the reference runtime: argtopk in
torch's order of ties (C transcription of libstdc++), the moe op's four phases over the selected experts
(GEMV sums: a tolerance), the router's softmax and gather; tests/ir/moe.ir whole, with no Python fallback."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import ir
from backends.cpu import native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler with OpenMP")
MOE_IR = Path(__file__).parent.parent / "ir" / "moe.ir"


def one_op(op: str, inputs: list[np.ndarray], attrs: dict) -> ir.Graph:
    g = ir.Graph("one")
    for i, a in enumerate(inputs):
        g.inputs.append((f"a{i}", ir.TensorType(ir.dtypes.from_numpy(a.dtype), a.shape)))
    at = ir.OPS[op].normalize_attrs(attrs)
    t = ir.OPS[op].infer([t for _, t in g.inputs], at)
    g.nodes.append(ir.Node("r", op, tuple(f"%a{i}" for i in range(len(inputs))), at, t))
    g.outputs = ["%r"]
    return ir.verify(g)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), n=st.sampled_from([2, 3, 8, 17, 40, 130]), kfrac=st.floats(0, 1), distinct=st.integers(1, 40),
       largest=st.booleans(), srt=st.booleans(), nan=st.booleans(), seed=st.integers(0, 999))
def test_argtopk_in_c_is_torchs_order(rows, n, kfrac, distinct, largest, srt, nan, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, distinct, (rows, n)).astype(np.float32)
    if nan:
        x[rng.random(x.shape) < 0.1] = np.nan
    k = int(kfrac * n)
    attrs = {"k": k, "dim": -1, "largest": largest, "sorted": srt}
    exe = native.build(one_op("argtopk", [x], attrs))
    assert not exe.fallbacks
    got = exe([x])[0]
    np.testing.assert_array_equal(got, torch.topk(torch.from_numpy(x), k, -1, largest, srt).indices.numpy())


@settings(max_examples=20, deadline=None)
@given(T=st.integers(0, 5), E=st.integers(1, 5), K=st.integers(1, 3), H=st.integers(1, 40), inner=st.integers(1, 40),
       gated=st.booleans(), act=st.sampled_from(["silu", "relu", "gelu", "gelu_tanh"]), seed=st.integers(0, 999))
def test_moe_in_c_matches_the_reference(T, E, K, H, inner, gated, act, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, T, H)).astype(np.float32)
    idx = rng.integers(0, E, (1, T, K))
    w = rng.random((1, T, K)).astype(np.float32)
    ex = [rng.standard_normal(((2 if gated else 1) * inner, H)).astype(np.float32) for _ in range(E)]
    ex += [rng.standard_normal((H, inner)).astype(np.float32) for _ in range(E)]
    g = one_op("moe", [x, idx, w, *ex], {"act": act, "gated": gated})
    exe = native.build(g)
    assert not exe.fallbacks
    got = exe([x, idx, w, *ex])[0]
    want = ir.run(g, [x, idx, w, *ex])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max(initial=0))))


def test_moe_index_out_of_range_is_an_error() -> None:
    x, idx, w = np.ones((1, 2, 4), np.float32), np.array([[[0], [3]]]), np.ones((1, 2, 1), np.float32)
    ex = [np.ones((2, 4), np.float32)] * 2 + [np.ones((4, 1), np.float32)] * 2
    exe = native.build(one_op("moe", [x, idx, w, *ex], {}))
    with pytest.raises(ir.RuntimeShapeError, match="= moe: an index is out of range"):
        exe([x, idx, w, *ex])


def test_router_and_experts_graph_runs_in_c() -> None:
    g = ir.parse(MOE_IR.read_text())
    rng = np.random.default_rng(0)
    for p, t in g.params.items():
        g.weights[p] = rng.standard_normal(t.shape).astype(np.float32)
    exe = native.build(g)
    assert not exe.fallbacks, exe.fallbacks
    for s0 in (1, 5):
        x = rng.standard_normal((2, s0, 8)).astype(np.float32)
        for got, want in zip(exe([x]), ir.run(g, [x])):
            if want.dtype.kind == "f":
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            else:
                np.testing.assert_array_equal(got, want)
