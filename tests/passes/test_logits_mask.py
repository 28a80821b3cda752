"""logits_mask: golden rewrite, idempotent; masked tokens get -inf and the rest are unchanged."""
from __future__ import annotations

import numpy as np
import pytest

import ir
from passes import PASSES
from passes.logits_mask import LogitsMask

BEFORE = """graph @step(%h: f32[2, 8]) {
  param @head: f32[40, 8]
  %logits: f32[2, 40] = linear(%h, @head)
  return %h, %logits
}
"""
AFTER = """graph @step(%h: f32[2, 8], %token_bitmask: i32[2, 2]) {
  param @head: f32[40, 8]
  %logits: f32[2, 40] = linear(%h, @head)
  %masked_logits: f32[2, 40] = mask_logits(%logits, %token_bitmask)
  return %h, %masked_logits
}
"""


def test_golden(golden) -> None:
    assert PASSES["logits_mask"] is LogitsMask
    golden(LogitsMask(), BEFORE, AFTER)


def test_masked_tokens_are_minus_inf() -> None:
    g = LogitsMask().run(ir.parse(BEFORE))
    rng = np.random.default_rng(0)
    g.weights["head"] = rng.standard_normal((40, 8)).astype(np.float32)
    h = rng.standard_normal((2, 8)).astype(np.float32)
    allowed = rng.random((2, 40)) < 0.3
    words = np.zeros((2, 2), np.uint32)
    for b, j in zip(*np.nonzero(allowed)):
        words[b, j // 32] |= np.uint32(1) << np.uint32(j % 32)
    _, got = ir.run(g, [h, words.view(np.int32)])
    want = h @ g.weights["head"].T
    np.testing.assert_allclose(got[allowed], want[allowed], rtol=1e-5, atol=1e-6)
    assert (got[~allowed] == -np.inf).all()


def test_bad_output_is_a_pass_error() -> None:
    with pytest.raises(ir.PassError, match="no output 5"):
        LogitsMask(output=5).run(ir.parse(BEFORE))
    with pytest.raises(ir.PassError, match="static vocabulary"):
        LogitsMask().run(ir.parse(BEFORE.replace("f32[2, 8]) {", "f32[2, 8], %n: i64[2]) {").replace("return %h, %logits", "return %h, %logits, %n")))
