"""fuse_rms_norm: golden rewrite of Hugging Face's spelled-out RMSNorm; bit-identical results on
random inputs (NaN/Inf included) and on tiny Llama; a chain whose parts are used elsewhere stays."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ir
from passes import PASSES
from passes.fuse_rms_norm import FuseRmsNorm

BEFORE = """graph @norm(%x: f32[s0, 6]) {
  param @w: f32[6]
  %two: f32[] = full() {value = 2.0, dtype = f32, shape = []}
  %eps: f32[] = full() {value = 1e-05, dtype = f32, shape = []}
  %p: f32[s0, 6] = pow(%x, %two)
  %m: f32[s0, 1] = mean(%p) {dims = [-1], keepdim = true}
  %a: f32[s0, 1] = add(%m, %eps)
  %r: f32[s0, 1] = rsqrt(%a)
  %n: f32[s0, 6] = mul(%x, %r)
  %y: f32[s0, 6] = mul(@w, %n)
  return %y
}
"""
AFTER = """graph @norm(%x: f32[s0, 6]) {
  param @w: f32[6]
  %two: f32[] = full() {value = 2.0, dtype = f32, shape = []}
  %eps: f32[] = full() {value = 1e-05, dtype = f32, shape = []}
  %y: f32[s0, 6] = rms_norm(%x, @w) {eps = 1e-05, axes = 1}
  return %y
}
"""


def test_golden(golden) -> None:
    assert PASSES["fuse_rms_norm"] is FuseRmsNorm
    golden(FuseRmsNorm(), BEFORE, AFTER)


def test_a_shared_part_keeps_the_chain() -> None:
    for part in ("%r", "%p"):  # the rsqrt, or the square, is also an output
        g = ir.parse(BEFORE.replace("return %y", f"return %y, {part}"))
        assert FuseRmsNorm().run(g) == g


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 4), st.just(6)),
                  elements=st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, np.nan, np.inf, -np.inf]))))
def test_bit_identical(x: np.ndarray) -> None:
    g = ir.parse(BEFORE)
    g.weights["w"] = np.linspace(-2, 2, 6, dtype=np.float32)
    out = FuseRmsNorm().run(g)
    np.testing.assert_array_equal(ir.run(g, [x])[0], ir.run(out, [x])[0])


def test_tiny_llama() -> None:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    g = export(tiny("llama"), (ids,)).graph
    out = FuseRmsNorm().run(g)
    assert sum(n.op == "rms_norm" for n in out.nodes) == 5 and not any(n.op == "rsqrt" for n in out.nodes)
    np.testing.assert_array_equal(ir.run(g, [ids.numpy()])[0], ir.run(out, [ids.numpy()])[0])
