"""fold_repeat_kv: golden rewrite of Hugging Face's repeat_kv in front of sdpa; bit-identical results on
random grouped-query shapes (NaN/Inf, empty sequences, masks included) on the reference runtime and the
CPU backend, and on tiny Llama and Qwen3 (2 kv heads for 4 query heads); other expands stay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu import CpuExecutable, generate
from passes import PASSES
from passes.dce import Dce
from passes.fold_repeat_kv import FoldRepeatKv

BEFORE = """graph @attn(%q: f32[1, 6, s0, 4], %k: f32[1, 2, s1, 4], %v: f32[1, 2, s1, 4], %m: bool[1, 1, s0, s1]) {
  %ku: f32[1, 2, 1, s1, 4] = reshape(%k) {shape = [1, 2, 1, s1, 4]}
  %ke: f32[1, 2, 3, s1, 4] = expand(%ku) {shape = [1, 2, 3, s1, 4]}
  %kr: f32[1, 6, s1, 4] = reshape(%ke) {shape = [1, 6, s1, 4]}
  %vu: f32[1, 2, 1, s1, 4] = reshape(%v) {shape = [1, 2, 1, s1, 4]}
  %ve: f32[1, 2, 3, s1, 4] = expand(%vu) {shape = [1, 2, 3, s1, 4]}
  %vr: f32[1, 6, s1, 4] = reshape(%ve) {shape = [1, 6, s1, 4]}
  %a: f32[1, 6, s0, 4] = sdpa(%q, %kr, %vr, %m) {scale = 0.5, causal = false}
  return %a
}
"""
AFTER = """graph @attn(%q: f32[1, 6, s0, 4], %k: f32[1, 2, s1, 4], %v: f32[1, 2, s1, 4], %m: bool[1, 1, s0, s1]) {
  %a: f32[1, 6, s0, 4] = sdpa(%q, %k, %v, %m) {scale = 0.5, causal = false}
  return %a
}
"""


class FoldThenDce:
    def run(self, g: ir.Graph) -> ir.Graph:
        return Dce().run(FoldRepeatKv().run(g))


def test_golden(golden) -> None:
    assert PASSES["fold_repeat_kv"] is FoldRepeatKv
    golden(FoldThenDce(), BEFORE, AFTER)
    out = FoldRepeatKv().run(ir.parse(BEFORE))  # on its own it only redirects sdpa; dce drops the rest
    assert [n.op for n in out.nodes].count("expand") == 2 and out.nodes[-1].operands[1:3] == ("%k", "%v")


@pytest.mark.parametrize("change", [
    ("%ke: f32[1, 2, 3, s1, 4] = expand(%ku) {shape = [1, 2, 3, s1, 4]}\n  %kr: f32[1, 6, s1, 4] = reshape(%ke)",
     "%ke: f32[1, 2, 3, s1, 4] = expand(%ku) {shape = [1, 2, 3, s1, 4]}\n  %kr0: f32[1, 3, 2, s1, 4] = permute(%ke) "
     "{perm = [0, 2, 1, 3, 4]}\n  %kr: f32[1, 6, s1, 4] = reshape(%kr0)"),  # heads interleaved the other way
    ("%vr: f32[1, 6, s1, 4] = reshape(%ve) {shape = [1, 6, s1, 4]}",
     "%vr: f32[1, 6, s1, 4] = reshape(%q2) {shape = [1, 6, s1, 4]}"),  # v is not a repeat: k stays too
])
def test_other_patterns_stay(change: tuple[str, str]) -> None:
    text = BEFORE.replace(*change)
    if "%q2" in text:
        text = text.replace("%m: bool[1, 1, s0, s1])", "%m: bool[1, 1, s0, s1], %q2: f32[1, 6, s1, 4])")
    g = ir.parse(text)
    assert FoldRepeatKv().run(g) == g


def _graph(kv: int, rep: int, d: int) -> ir.Graph:
    """BEFORE with kv heads repeated rep times, head dim d."""
    h = kv * rep
    lines = [f"graph @attn(%q: f32[1, {h}, s0, {d}], %k: f32[1, {kv}, s1, {d}], %v: f32[1, {kv}, s1, {d}], "
             "%m: bool[1, 1, s0, s1]) {"]
    for x in "kv":
        lines += [f"  %{x}u: f32[1, {kv}, 1, s1, {d}] = reshape(%{x}) {{shape = [1, {kv}, 1, s1, {d}]}}",
                  f"  %{x}e: f32[1, {kv}, {rep}, s1, {d}] = expand(%{x}u) {{shape = [1, {kv}, {rep}, s1, {d}]}}",
                  f"  %{x}r: f32[1, {h}, s1, {d}] = reshape(%{x}e) {{shape = [1, {h}, s1, {d}]}}"]
    lines += [f"  %a: f32[1, {h}, s0, {d}] = sdpa(%q, %kr, %vr, %m) {{scale = 0.5, causal = false}}", "  return %a", "}"]
    return ir.parse("\n".join(lines) + "\n")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5), st.integers(0, 4), st.integers(0, 5),
       st.integers(0, 2**31 - 1), st.booleans())
def test_bit_identical(kv: int, rep: int, d: int, L: int, S: int, seed: int, special: bool) -> None:
    rng = np.random.default_rng(seed)
    g = _graph(kv, rep, d)
    out = FoldThenDce().run(g)
    assert not any(n.op == "expand" for n in out.nodes)
    q, k, v = (rng.standard_normal((1, h, n, d)).astype(np.float32) for h, n in ((kv * rep, L), (kv, S), (kv, S)))
    if special and k.size:
        k.flat[rng.integers(k.size)] = rng.choice([np.nan, np.inf, -np.inf])
    m = rng.random((1, 1, L, S)) < 0.7
    want = ir.run(g, [q, k, v, m])[0]
    np.testing.assert_array_equal(ir.run(out, [q, k, v, m])[0], want)
    got = CpuExecutable(out, generate(out, exact=True))([q, k, v, m])[0]  # the grouped template, no copies
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_models(arch: str) -> None:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    g = export(tiny(arch), (ids,)).graph
    out = FoldThenDce().run(g)
    assert sum(n.op == "expand" for n in g.nodes) >= 4 and not any(n.op == "expand" for n in out.nodes)
    np.testing.assert_array_equal(ir.run(g, [ids.numpy()])[0], ir.run(out, [ids.numpy()])[0])
