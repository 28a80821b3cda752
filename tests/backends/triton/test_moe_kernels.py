"""The MoE templates (backends/triton/moe.py) in Triton's interpreter against the reference: tests/ir/moe.ir
(router and two moe ops, one of whose expert weights is computed), argtopk over distinct values (its order
is torch's there; on ties it takes the lower index), and moe over ragged shapes, every activation, gated or
not, with a quantized expert's decoder inlined into the expert loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir

from interp import build, check

MOE_IR = Path(__file__).parent.parent.parent / "ir" / "moe.ir"
SLOW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def one_op(op: str, inputs: list[np.ndarray], attrs: dict, params: dict[str, np.ndarray] | None = None) -> ir.Graph:
    g = ir.Graph("one")
    for i, a in enumerate(inputs):
        g.inputs.append((f"a{i}", ir.TensorType(ir.dtypes.from_numpy(a.dtype), a.shape)))
    refs = [f"%a{i}" for i in range(len(inputs))]
    for name, w in (params or {}).items():
        g.params[name] = ir.TensorType(ir.dtypes.from_numpy(w.dtype), w.shape)
        g.weights[name] = w
        refs.append("@" + name)
    at = ir.OPS[op].normalize_attrs(attrs)
    t = ir.OPS[op].infer([g.types()[r] for r in refs], at)
    g.nodes.append(ir.Node("r", op, tuple(refs), at, t))
    g.outputs = ["%r"]
    return ir.verify(g)


def test_router_and_experts_graph() -> None:
    g = ir.parse(MOE_IR.read_text())
    rng = np.random.default_rng(0)
    for p, t in g.params.items():
        g.weights[p] = rng.standard_normal(t.shape).astype(np.float32)
    exe = build(g)
    for s0 in (1, 4):
        check(g, [rng.standard_normal((2, s0, 8)).astype(np.float32)], rtol=1e-4, atol=1e-4, exe=exe)


@SLOW
@given(shape=st.sampled_from([(3, 8), (2, 5, 4), (1, 70), (4, 1)]), dim=st.integers(-2, 1), k=st.integers(0, 4),
       largest=st.booleans(), nan=st.booleans(), dt=st.sampled_from([np.float32, np.float16, np.int64]), seed=st.integers(0, 99))
def test_argtopk_distinct_values(shape, dim, k, largest, nan, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    dim = dim % len(shape)
    k = min(k, shape[dim])
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(dt)  # distinct
    if nan and dt != np.int64:
        x.reshape(-1)[0] = np.nan  # one NaN per array: distinct still
    check(one_op("argtopk", [x], {"k": k, "dim": dim, "largest": largest}), [x])


def test_argtopk_unsorted_is_refused_by_name() -> None:
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ir.CompileError, match="argtopk.*sorted=False"):
        build(one_op("argtopk", [x], {"k": 3, "sorted": False}))


@SLOW
@given(T=st.integers(0, 3), E=st.integers(1, 4), K=st.integers(1, 3), H=st.integers(1, 80), inner=st.integers(1, 70),
       gated=st.booleans(), act=st.sampled_from(["silu", "relu", "gelu", "gelu_tanh"]), seed=st.integers(0, 99))
def test_moe_ragged(T, E, K, H, inner, gated, act, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, H)).astype(np.float32)
    idx = rng.integers(0, E, (T, K))
    w = rng.random((T, K)).astype(np.float32)
    params = {f"in{e}": rng.standard_normal(((2 if gated else 1) * inner, H)).astype(np.float32) for e in range(E)}
    params.update({f"out{e}": rng.standard_normal((H, inner)).astype(np.float32) for e in range(E)})
    check(one_op("moe", [x, idx, w], {"act": act, "gated": gated}, params), [x, idx, w], rtol=1e-4, atol=1e-4)


def test_quantized_expert_decodes_inside_the_expert_loop() -> None:
    """rtn experts: dequant_affine nodes feed moe; the fusion plan inlines them (no kernel of their own)."""
    from passes.rtn import Rtn

    rng = np.random.default_rng(1)
    x, idx, w = rng.standard_normal((3, 16)).astype(np.float32), rng.integers(0, 2, (3, 2)), rng.random((3, 2)).astype(np.float32)
    params = {"e.0.in": rng.standard_normal((8, 16)).astype(np.float32), "e.1.in": rng.standard_normal((8, 16)).astype(np.float32),
              "e.0.out": rng.standard_normal((16, 4)).astype(np.float32), "e.1.out": rng.standard_normal((16, 4)).astype(np.float32)}
    g = Rtn(bits=4, group=8).run(one_op("moe", [x, idx, w], {}, params))
    assert sum(n.op == "dequant_affine" for n in g.nodes) == 4
    exe = build(g)
    assert exe.launches == 1, exe.source  # the moe node alone (its two kernels): the decoders are inlined
    check(g, [x, idx, w], rtol=1e-4, atol=1e-4, exe=exe)
