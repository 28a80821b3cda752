"""fold_transposes: golden rewrite of GPT-2-style matmul + bias add; exact equality on integer-valued
graphs of random shapes (ragged, empty); shared weights stay; tiny GPT-2 becomes linears that the
quantization passes rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import PASSES, Pass, parse_pipeline
from passes.fold_transposes import FoldTransposes


@dataclass(frozen=True)
class Bound(Pass):
    """fold_transposes after binding weights (it only rewrites weights it has data for)."""

    name = "fold_transposes_bound"  # not registered
    seed: int = 0

    def run(self, g: ir.Graph) -> ir.Graph:
        return FoldTransposes().run(bind(g.copy(), self.seed))


def bind(g: ir.Graph, seed: int = 0) -> ir.Graph:
    rng = np.random.default_rng(seed)
    for k, t in g.params.items():
        g.weights.setdefault(k, rng.integers(-3, 4, t.shape).astype(t.dtype.np))  # small integers: exact sums
    return g


BEFORE = """graph @gpt2(%x: f32[s0, 4]) {
  param @c_attn.weight: f32[4, 6]
  param @c_attn.bias: f32[6]
  param @proj.weight: f32[3, 6]
  param @shared: f32[6, 6]
  %mm: f32[s0, 6] = matmul(%x, @c_attn.weight)
  %h: f32[s0, 6] = add(%mm, @c_attn.bias)
  %t: f32[6, s0] = permute(%h) {perm = [1, 0]}
  %tt: f32[s0, 6] = permute(%t) {perm = [1, 0]}
  %pw: f32[6, 3] = permute(@proj.weight) {perm = [1, 0]}
  %y: f32[s0, 3] = matmul(%tt, %pw)
  %s1: f32[s0, 6] = matmul(%h, @shared)
  %r: f32[6, 6] = relu(@shared)
  return %y, %s1, %r
}
"""
AFTER = """graph @gpt2(%x: f32[s0, 4]) {
  param @c_attn.weight: f32[6, 4]
  param @c_attn.bias: f32[6]
  param @proj.weight: f32[3, 6]
  param @shared: f32[6, 6]
  %h: f32[s0, 6] = linear(%x, @c_attn.weight, @c_attn.bias)
  %y: f32[s0, 3] = linear(%h, @proj.weight)
  %s1: f32[s0, 6] = matmul(%h, @shared)
  %r: f32[6, 6] = relu(@shared)
  return %y, %s1, %r
}
"""


def test_golden(golden) -> None:
    """The bias add folds; the permute pair composes to the identity; proj's transpose and then its
    matmul fold back to the stored weight; @shared has another use, so its matmul stays."""
    out = golden(Bound(), BEFORE, AFTER)
    g = bind(ir.parse(BEFORE))
    np.testing.assert_array_equal(out.weights["c_attn.weight"], g.weights["c_attn.weight"].T)
    np.testing.assert_array_equal(out.weights["proj.weight"], g.weights["proj.weight"])  # transposed twice
    x = np.random.default_rng(1).integers(-3, 4, (5, 4)).astype(np.float32)
    for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):
        np.testing.assert_array_equal(a, b)


def test_registered_and_leaves_unbound_weights() -> None:
    assert PASSES["fold_transposes"] is FoldTransposes
    assert parse_pipeline("fold_transposes")[0] == FoldTransposes()
    g = ir.parse(BEFORE)  # no weights: nothing stored can change; the permute pair still composes
    out = FoldTransposes().run(g)
    assert sum(n.op == "matmul" for n in out.nodes) == 3 and sum(n.op == "permute" for n in out.nodes) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.integers(0, 6), st.integers(0, 6), st.integers(0, 5), st.booleans(), st.booleans(),
       st.sampled_from(["f32", "f64", "f16"]), st.integers(0, 2**31 - 1))
def test_exactly_equal(lead: int, k: int, n: int, s: int, bias_first: bool, via_permute: bool, dt: str,
                       seed: int) -> None:
    """x [lead..., s, k] @ W [k, n] (+ b): any sizes, empty ones included; integer values keep sums exact."""
    shape = ", ".join(map(str, [2] * lead + [s, k]))
    out_shape = ", ".join(map(str, [2] * lead + [s, n]))
    w = "%wt" if via_permute else "@w"
    add = "add(@b, %mm)" if bias_first else "add(%mm, @b)"
    text = f"""graph @g(%x: {dt}[{shape}]) {{
  param @w: {dt}[{n if via_permute else k}, {k if via_permute else n}]
  param @b: {dt}[{n}]
""" + (f"  %wt: {dt}[{k}, {n}] = permute(@w) {{perm = [1, 0]}}\n" if via_permute else "") + f"""  %mm: {dt}[{out_shape}] = matmul(%x, {w})
  %y: {dt}[{out_shape}] = {add}
  return %y
}}
"""
    g = bind(ir.parse(text), seed)
    out = FoldTransposes().run(g)
    ir.verify(out)
    assert [m.op for m in out.nodes] == (["linear"] if dt != "f16" else ["linear", "add"])
    x = np.random.default_rng(seed).integers(-3, 4, [2] * lead + [s, k]).astype(ir.dtype(dt).np)
    np.testing.assert_array_equal(ir.run(g, [x])[0], ir.run(out, [x])[0])
    assert FoldTransposes().run(out) == out


def test_tiny_gpt2_becomes_linears_that_quantize() -> None:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    g = export(tiny("gpt2"), (ids,)).graph
    out = FoldTransposes().run(g)
    mm = lambda h: sum(n.op == "matmul" and n.operands[1][0] == "@" for n in h.nodes)  # noqa: E731
    assert mm(g) > 0 and mm(out) == 0
    want = ir.run(g, [ids.numpy()])[0]
    assert np.abs(ir.run(out, [ids.numpy()])[0] - want).max() <= 1e-5 * np.abs(want).max()
    q = parse_pipeline("rtn{bits=8}")[0].run(out)
    assert sum(n.op == "dequant_affine" for n in q.nodes) == sum(n.op == "linear" for n in out.nodes) - 1  # not the head
