"""donate_state: golden rewrite (only an input read by one index_copy, not an output, is donated);
on target=cpu the donated input's buffer becomes the output and the values equal the reference."""
from __future__ import annotations

import numpy as np

import ir
from backends import get_backend
from passes import PASSES
from passes.donate_state import DonateState

BEFORE = """graph @step(%kv: f32[1, 2, 8, 4], %kv2: f32[1, 2, 8, 4], %new: f32[1, 2, 1, 4], %pos: i64[1]) {
  %k: f32[1, 2, 8, 4] = index_copy(%kv, %pos, %new) {axis = 2}
  %k2: f32[1, 2, 8, 4] = index_copy(%kv2, %pos, %new) {axis = 2}
  %s: f32[1, 2, 8, 4] = add(%kv2, %k2)
  return %k, %s
}
"""
AFTER = BEFORE.replace("index_copy(%kv, %pos, %new) {axis = 2}", "index_copy(%kv, %pos, %new) {axis = 2, inplace = true}")


def test_golden(golden) -> None:
    assert PASSES["donate_state"] is DonateState
    golden(DonateState(), BEFORE, AFTER)  # %kv2 is read again by the add: copied, not donated


def test_cpu_writes_into_the_donated_input() -> None:
    g = DonateState().run(ir.parse(BEFORE))
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((1, 2, 8, 4)).astype(np.float32) for _ in range(2)]
    args += [rng.standard_normal((1, 2, 1, 4)).astype(np.float32), np.array([5])]
    want = ir.run(g, [a.copy() for a in args])
    exe = get_backend("cpu").build(g)
    kv, kv2 = args[0], args[1].copy()
    got = exe(args)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert np.shares_memory(got[0], kv)  # written in place
    np.testing.assert_array_equal(args[1], kv2)  # not donated: untouched
