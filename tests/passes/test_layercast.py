"""layercast: golden IR, bit-exact bf16/f16 rounding against torch, a tiny Llama."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ir
from ir.dtypes import DTYPES
from passes import get_pass, parse_pipeline
from passes.layercast import layercast

LAYERCAST = get_pass("layercast")

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
  param @fc.weight.bf16: bf16[4, 8]
  %fc.weight.dq: f32[4, 8] = cast(@fc.weight.bf16) {dtype = f32}
  %h: f32[s0, 4] = linear(%x, %fc.weight.dq, @fc.bias)
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
    out = LAYERCAST().run(g)
    assert str(g) == text, "layercast mutated its input"
    ir.verify(out)
    assert out == ir.parse(AFTER), f"layercast gave:\n{out}"
    assert str(out) == str(ir.parse(AFTER)) and ir.parse(str(out)) == out
    again = LAYERCAST().run(out)
    assert again == out and again.same_weights(out)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    w16 = g.weights["fc.weight"].astype(DTYPES["bf16"].np).astype(np.float32)
    h = np.maximum(x @ w16.T + g.weights["fc.bias"], 0)  # fp32 compute on the rounded weight
    np.testing.assert_allclose(ir.run(out, [x])[0], h @ g.weights["head.weight"].T, rtol=1e-5, atol=1e-6)


def test_options_f16_head_and_bad_dtype() -> None:
    g = with_weights(BEFORE)
    p = parse_pipeline("layercast{dtype=f16, head=true}")[0]
    assert parse_pipeline(str(p)) == [p]
    out = ir.verify(p.run(g))
    assert {k: str(t) for k, t in out.params.items() if k.endswith(".f16")} == {
        "fc.weight.f16": "f16[4, 8]", "head.weight.f16": "f16[3, 4]"}
    assert ir.count_ops(out)["cast"] == 2
    with pytest.raises(ir.PassError, match="bf16, f16"):
        LAYERCAST(dtype="i8").run(g)


FLOATS = st.floats(width=32, allow_nan=False) | st.sampled_from(
    [0.0, -0.0, 1e-45, -1e-40, 1.00390625, 1.01171875, 3.389e38, 3.4028235e38, 65504.0, 65520.0, 6e-8])


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16)), elements=FLOATS), st.sampled_from(["bf16", "f16"]))
def test_rounding_is_bit_exact_with_torch(W: np.ndarray, dt: str) -> None:
    """Ŵ = round-to-nearest-even of W, including ties, subnormals and overflow to inf."""
    q = layercast(W, DTYPES[dt], DTYPES["f32"])
    (stored, sdt), = q.parts.values()
    assert sdt == DTYPES[dt] and stored.dtype == DTYPES[dt].np
    got = ir.OPS["cast"].reference([stored], {"dtype": DTYPES["f32"]})
    want = torch.from_numpy(W).to({"bf16": torch.bfloat16, "f16": torch.float16}[dt]).float().numpy()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_nan_stays_nan() -> None:
    W = np.array([[np.nan, -np.nan, np.inf, -np.inf]], np.float32)
    got = layercast(W, DTYPES["bf16"], DTYPES["f32"]).parts["bf16"][0].astype(np.float32)
    want = torch.from_numpy(W).bfloat16().float().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isfinite(got)], want[np.isfinite(want)])


def test_tiny_llama_end_to_end_close_to_fp32() -> None:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    g = export(model, (ids,)).graph
    out = ir.verify(LAYERCAST().run(g))
    assert ir.count_ops(out)["cast"] == 14 + 1  # 2 layers x 7 weights, and the frontend's own cast
    assert out.param_bytes() < g.param_bytes()
    ref, y = ir.run(g, [ids.numpy()])[0], ir.run(out, [ids.numpy()])[0]
    assert np.abs(y - ref).max() <= 0.01 * np.abs(ref).max()
    # LayerCast is fp32 on bf16-rounded weights: the same as torch with W.to(bf16).float() weights.
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(mod.weight.to(torch.bfloat16).float())
        want = model(ids).logits.numpy()
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)
