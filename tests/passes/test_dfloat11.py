"""dfloat11: golden rewrites, idempotence, the bit-exact contract (decoded weights == W.astype(bf16),
logits == the bf16-weight model's) and the size bar on a realistic weight distribution."""
from __future__ import annotations

import numpy as np
import pytest

import ir
from ir.ops.quant.dfloat11 import BF16
from passes import PASSES, parse_pipeline
from passes.dfloat11 import DFloat11

LINEAR = """graph @g(%x: f32[2, 4]) {
  param @w: f32[3, 4]
  %y: f32[2, 3] = linear(%x, @w)
  %r: f32[2, 3] = relu(%y)
  return %r
}
"""
LINEAR_AFTER = """graph @g(%x: f32[2, 4]) {
  param @w.stream: u8[2]
  param @w.offsets: i64[1]
  param @w.lengths: u8[256]
  param @w.sm: u8[3, 4]
  %w.dq: bf16[3, 4] = dfloat11_decode(@w.stream, @w.offsets, @w.lengths, @w.sm) {block = 1024}
  %w.f32: f32[3, 4] = cast(%w.dq) {dtype = f32}
  %y: f32[2, 3] = linear(%x, %w.f32)
  %r: f32[2, 3] = relu(%y)
  return %r
}
"""
TIED = """graph @lm(%ids: i64[2, 3]) {
  param @emb: f32[8, 4]
  %h: f32[2, 3, 4] = embedding(@emb, %ids)
  %y: f32[2, 3, 8] = linear(%h, @emb)
  return %y
}
"""
TIED_AFTER = """graph @lm(%ids: i64[2, 3]) {
  param @emb.stream: u8[4]
  param @emb.offsets: i64[4]
  param @emb.lengths: u8[256]
  param @emb.sm: u8[8, 4]
  %emb.dq: bf16[8, 4] = dfloat11_decode(@emb.stream, @emb.offsets, @emb.lengths, @emb.sm) {block = 10}
  %emb.f32: f32[8, 4] = cast(%emb.dq) {dtype = f32}
  %h: f32[2, 3, 4] = embedding(%emb.f32, %ids)
  %y: f32[2, 3, 8] = linear(%h, %emb.f32)
  return %y
}
"""


def two_exponents(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Weights in ±[1, 2) and ±[2, 4): exponents 127 and 128, 1-bit codes."""
    rng = np.random.default_rng(seed)
    w = rng.choice([1.0, -1.0, 2.5, -3.0], shape) * rng.uniform(1, 1.2, shape)
    w.flat[:2] = [1.0, 2.5]  # both exponents, always
    return w.astype(np.float32)


def sized(out: int, n: int) -> str:
    """LINEAR with a [out, n] weight."""
    text = LINEAR.replace("[3, 4]", f"[{out}, {n}]").replace("f32[2, 4]", f"f32[2, {n}]")
    return text.replace("f32[2, 3]", f"f32[2, {out}]")


def bound(text: str, weights: dict[str, np.ndarray]) -> ir.Graph:
    g = ir.parse(text)
    g.weights = dict(weights)
    return g


def check(p: DFloat11, before: str, after: str, weights: dict[str, np.ndarray]) -> ir.Graph:
    """Golden before/after with weights bound: verifies, round-trips, leaves its input alone, and a
    second run changes nothing."""
    g = bound(before, weights)
    text = str(g)
    out = p.run(g)
    assert str(g) == text and g.weights.keys() == weights.keys(), "dfloat11 mutated its input"
    ir.verify(out)
    assert out == ir.parse(after), f"{p} gave:\n{out}"
    assert ir.parse(str(out)) == out and set(out.weights) == set(out.params)
    again = p.run(out)
    assert again == out and again.same_weights(out), f"{p} is not idempotent"
    return out


def bf16_weights(g: ir.Graph, names: list[str]) -> ir.Graph:
    """The bf16-weight model: each named weight rounded to bf16 and widened back, the values
    layercast's `cast(@w: bf16) {dtype = f32}` feeds the linear."""
    b = g.copy()
    for w in names:
        b.weights[w] = g.weights[w].astype(BF16).astype(np.float32)
    return b


def decoded(g: ir.Graph, w: str) -> np.ndarray:
    parts = [g.weights[f"{w}.{p}"] for p in ("stream", "offsets", "lengths", "sm")]
    return ir.OPS["dfloat11_decode"].reference(parts, {"block": g.node(w + ".dq").attrs["block"]})


def test_golden_linear() -> None:
    w = two_exponents((3, 4))
    out = check(DFloat11(), LINEAR, LINEAR_AFTER, {"w": w})
    assert out.weights["w.lengths"].sum() == 2  # two 1-bit codes
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = ir.run(bf16_weights(bound(LINEAR, {"w": w}), ["w"]), [x])[0]
    np.testing.assert_array_equal(ir.run(out, [x])[0], want)


def test_golden_bf16_weight_needs_no_cast() -> None:
    before = """graph @g(%x: bf16[2, 4]) {
  param @w: bf16[3, 4]
  %y: bf16[2, 3] = linear(%x, @w)
  %r: bf16[2, 3] = relu(%y)
  return %r
}
"""
    after = """graph @g(%x: bf16[2, 4]) {
  param @w.stream: u8[2]
  param @w.offsets: i64[1]
  param @w.lengths: u8[256]
  param @w.sm: u8[3, 4]
  %w.dq: bf16[3, 4] = dfloat11_decode(@w.stream, @w.offsets, @w.lengths, @w.sm) {block = 1024}
  %y: bf16[2, 3] = linear(%x, %w.dq)
  %r: bf16[2, 3] = relu(%y)
  return %r
}
"""
    w = two_exponents((3, 4)).astype(BF16)
    out = check(DFloat11(), before, after, {"w": w})
    np.testing.assert_array_equal(decoded(out, "w").view(np.uint16), w.view(np.uint16))


def test_tied_head_feeds_the_embedding_too() -> None:
    w = two_exponents((8, 4))
    check(DFloat11(), TIED, TIED, {"emb": w})  # head=false: the head is the only linear
    out = check(DFloat11(block=10, head=True), TIED, TIED_AFTER, {"emb": w})  # 32 weights, 4 blocks
    ids = np.array([[0, 7, 3], [1, 1, 5]])
    want = ir.run(bf16_weights(bound(TIED, {"emb": w}), ["emb"]), [ids])[0]
    np.testing.assert_array_equal(ir.run(out, [ids])[0], want)


def test_decoded_weights_are_the_bf16_rounding_bit_for_bit() -> None:
    """Ties to even, NaN, ±inf, ±0, f32 subnormals, values that round to inf, both signs."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((37, 53)) * 0.02).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-40, 3.4e38, 1 + 2.0**-8, 1 + 3 * 2.0**-8,
                        2.0**-130, -(2.0**-126)], np.float32)
    w.flat[rng.choice(w.size, 60, replace=False)] = np.resize(special, 60)
    g = bound(sized(37, 53), {"w": w})
    out = DFloat11(block=64).run(g)
    got = decoded(out, "w")
    np.testing.assert_array_equal(got.view(np.uint16), w.astype(BF16).view(np.uint16))
    x = rng.standard_normal((2, 53)).astype(np.float32)
    np.testing.assert_array_equal(ir.run(out, [x])[0], ir.run(bf16_weights(g, ["w"]), [x])[0])


def test_size_under_72_percent_of_bf16_on_normal_weights() -> None:
    w = (np.random.default_rng(0).standard_normal((512, 512)) * 0.02).astype(np.float32)
    g = bound(sized(512, 512), {"w": w})
    out = DFloat11().run(g)
    ratio = out.param_bytes() / (2 * w.size)
    assert 0.6 < ratio <= 0.72, ratio  # ~2.6 exponent bits + 8 raw bits + offsets, of 16


def test_options_and_errors() -> None:
    assert "dfloat11" in PASSES
    p = DFloat11(block=256, layers="*.mlp.*", head=True)
    assert parse_pipeline(str(p)) == [p]
    with pytest.raises(ir.PassError, match="block must be >= 1"):
        DFloat11(block=0).run(ir.parse(LINEAR))


def test_layers_glob_selects_weights() -> None:
    two = (LINEAR.replace("  param @w: f32[3, 4]", "  param @w: f32[3, 4]\n  param @v: f32[3, 4]")
           .replace("  return %r", "  %z: f32[2, 3] = linear(%x, @v)\n  %s: f32[2, 3] = relu(%z)\n  return %r, %s"))
    out = DFloat11(layers="v").run(bound(two, {"w": two_exponents((3, 4)), "v": two_exponents((3, 4), 1)}))
    assert "w" in out.params and "v" not in out.params and "v.stream" in out.params


@pytest.fixture(scope="module")
def tiny_llama() -> ir.Graph:
    import torch

    from frontends.hf_models import tiny
    from frontends.torch_export import export

    return export(tiny("llama"), (torch.zeros(1, 8, dtype=torch.long),)).graph


@pytest.mark.parametrize("head", [False, True])
def test_tiny_llama_logits_equal_the_bf16_weight_model(tiny_llama: ir.Graph, head: bool) -> None:
    g = tiny_llama
    out = DFloat11(head=head).run(g)
    ir.verify(out)
    rounded = [n.operands[1][1:] for n in g.nodes if n.op == "linear" and (head or n.ref not in g.outputs)]
    assert len(rounded) == (15 if head else 14)
    ids = np.random.default_rng(0).integers(0, 128, (1, 16))
    got, want = ir.run(out, [ids])[0], ir.run(bf16_weights(g, rounded), [ids])[0]
    assert np.array_equal(got, want)
    assert not np.array_equal(got, ir.run(g, [ids])[0])  # bf16 rounding is visible in the logits
    if "layercast" in PASSES:  # the bf16 baseline pass, once it lands
        lc = parse_pipeline(f'layercast{{dtype="bf16",head={"true" if head else "false"}}}')[0].run(g)
        assert np.array_equal(got, ir.run(lc, [ids])[0])
