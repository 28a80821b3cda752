"""int8 (LLM.int8()): golden IR, the weight error contract, exactness against the op, a tiny Llama."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import get_pass, parse_pipeline
from passes.int8 import int8_rowwise

INT8 = get_pass("int8")

BEFORE = """
graph @main(%x: f32[s0, 8]) {
  param @fc.weight: f32[4, 8]
  param @fc.bias: f32[4]
  param @head.weight: f32[3, 4]
  %h: f32[s0, 4] = linear(%x, @fc.weight, @fc.bias)
  %r: f32[s0, 4] = relu(%h)
  %y: f32[s0, 3] = linear(%r, @head.weight)
  return %y
}"""

AFTER = """
graph @main(%x: f32[s0, 8]) {
  param @fc.bias: f32[4]
  param @head.weight: f32[3, 4]
  param @fc.weight.q: i8[4, 8]
  param @fc.weight.scale: f32[4]
  %h: f32[s0, 4] = int8_linear(%x, @fc.weight.q, @fc.weight.scale, @fc.bias) {threshold = 6.0}
  %r: f32[s0, 4] = relu(%h)
  %y: f32[s0, 3] = linear(%r, @head.weight)
  return %y
}"""


def with_weights(text: str, seed: int = 0) -> ir.Graph:
    g = ir.parse(text)
    rng = np.random.default_rng(seed)
    g.weights = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in g.params.items()}
    return g


def test_golden_verifies_round_trips_and_is_idempotent() -> None:
    g = with_weights(BEFORE)
    text = str(g)
    out = INT8().run(g)
    assert str(g) == text, "int8 mutated its input"
    ir.verify(out)
    assert out == ir.parse(AFTER), f"int8 gave:\n{out}"
    assert str(out) == str(ir.parse(AFTER)) and ir.parse(str(out)) == out
    again = INT8().run(out)
    assert again == out and again.same_weights(out)


def test_options_head_layers_and_threshold() -> None:
    g = with_weights(BEFORE)
    p = parse_pipeline("int8{threshold=0.0, head=true}")[0]
    assert str(p) == 'int8{threshold=0.0,layers="*",head=true}' and parse_pipeline(str(p)) == [p]
    out = p.run(g)
    assert ir.count_ops(out) == {"int8_linear": 2, "relu": 1}
    assert all(n.attrs["threshold"] == 0.0 for n in out if n.op == "int8_linear")
    assert "head.weight" not in out.params and "fc.weight" not in out.params
    assert INT8(layers="nothing.*").run(g) == g


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.sampled_from([1e-30, 1e-3, 1.0, 1e30]), st.integers(0, 2**32 - 1))
def test_weight_error_contract_and_exact_output(out: int, n: int, scale: float, seed: int) -> None:
    """|W - wq * wscale / 127| <= absmax_row / 254, and the graph computes the op's reference exactly."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((out, n)) * scale * rng.random((out, 1))).astype(np.float32)
    W[rng.random((out, n)) < 0.1] = 0.0
    W[rng.integers(0, out)] *= 0  # an all-zero row (also -0.0 entries)
    q = int8_rowwise(W)
    wq, ws = q.parts["q"][0], q.parts["scale"][0]
    assert wq.dtype == np.int8 and ws.dtype == np.float32 and np.abs(wq).max(initial=0) <= 127
    absmax = np.abs(W).max(axis=1).astype(np.float64)
    err = np.abs(W.astype(np.float64) - wq.astype(np.float64) * ws.astype(np.float64)[:, None] / 127)
    assert (err <= (absmax / 254 * (1 + 1e-12))[:, None]).all()
    np.testing.assert_array_equal(ws, absmax.astype(np.float32))  # the scale is the row's absmax, exactly
    assert (wq[absmax == 0] == 0).all()

    g = ir.Graph("g", [("x", ir.TensorType(ir.dtype("f32"), (3, n)))], {"w": ir.TensorType(ir.dtype("f32"), (out, n))})
    g.weights["w"] = W
    g.nodes.append(ir.Node("y", "linear", ("%x", "@w"), {}, ir.TensorType(ir.dtype("f32"), (3, out))))
    g.outputs = ["%y"]
    gq = ir.verify(INT8(threshold=1.5, head=True).run(g))  # %y is an output: a "head"
    assert ir.count_ops(gq) == {"int8_linear": 1}
    x = rng.standard_normal((3, n)).astype(np.float32)
    with np.errstate(all="ignore"):  # a 1e30 weight is inf on the f16 outlier path, as ir.run allows
        want = ir.OPS["int8_linear"].reference([x, wq, ws], {"threshold": 1.5})
    np.testing.assert_array_equal(ir.run(gq, [x])[0], want)


@pytest.fixture(scope="module")
def tiny_llama():
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    g = export(tiny("llama"), (ids,)).graph
    return g, ids.numpy(), ir.run(g, [ids.numpy()])[0]


def test_tiny_llama_end_to_end_close_to_fp32(tiny_llama) -> None:
    g, ids, ref = tiny_llama
    out = ir.verify(INT8().run(g))
    counts = ir.count_ops(out)
    assert counts["int8_linear"] == 14 and counts["linear"] == 1  # 2 layers x 7; the LM head stays fp32
    assert ir.parse(str(out)) == out
    y = ir.run(out, [ids])[0]
    assert np.abs(y - ref).max() <= 0.03 * np.abs(ref).max()
    assert (y.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_report_sees_the_int8_weight() -> None:
    """The report reads int8_linear's weight through the op's own `weight()`."""
    from compiler.report import quantization_report

    g = ir.parse("""graph @g(%x: f32[2, 8]) {
  param @fc.weight: f32[3, 8]
  %y: f32[2, 3] = linear(%x, @fc.weight)
  %z: f32[2, 3] = relu(%y)
  return %z
}
""")
    g.weights["fc.weight"] = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    rows, totals = quantization_report(g, parse_pipeline("int8")[0].run(g))
    assert [r.method for r in rows] == ["int8_linear"] and rows[0].rel_error < 0.01
    assert rows[0].bits_per_weight == (8 * 8 + 32) / 8
