"""fuse_linears: golden rewrite (q/k/v-like linears with a bias on one part); the fused graph is
exactly equal for lut_linear (every table type), equal to float rounding for linear; parts that do not fill whole
tiles, or disagree, stay apart; tiny Llama after ptqtp + pack_lut."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import PASSES, Pass, parse_pipeline
from passes.fuse_linears import FuseLinears


@dataclass(frozen=True)
class Bound(Pass):
    name = "fuse_linears_bound"  # not registered

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        rng = np.random.default_rng(0)
        for k, t in g.params.items():
            g.weights.setdefault(k, rng.standard_normal(t.shape).astype(np.float32))
        return FuseLinears().run(g)


BEFORE = """graph @attn(%h: f32[s0, 8]) {
  param @q: f32[6, 8]
  param @k: f32[2, 8]
  param @v: f32[2, 8]
  param @vb: f32[2]
  param @o: f32[8, 6]
  %q: f32[s0, 6] = linear(%h, @q)
  %k: f32[s0, 2] = linear(%h, @k)
  %v: f32[s0, 2] = linear(%h, @v, @vb)
  %o: f32[s0, 8] = linear(%q, @o)
  return %o, %k, %v
}
"""
AFTER = """graph @attn(%h: f32[s0, 8]) {
  param @o: f32[8, 6]
  param @q.fused.0: f32[10, 8]
  param @q.bias.fused.0: f32[10]
  %q.fused: f32[s0, 10] = linear(%h, @q.fused.0, @q.bias.fused.0)
  %q: f32[s0, 6] = slice(%q.fused) {dim = -1, start = 0, end = 6, step = 1}
  %k: f32[s0, 2] = slice(%q.fused) {dim = -1, start = 6, end = 8, step = 1}
  %v: f32[s0, 2] = slice(%q.fused) {dim = -1, start = 8, end = 10, step = 1}
  %o: f32[s0, 8] = linear(%q, @o)
  return %o, %k, %v
}
"""


def test_golden_and_exact(golden) -> None:
    assert PASSES["fuse_linears"] is FuseLinears
    golden(Bound(), BEFORE, AFTER)
    rng = np.random.default_rng(0)
    g = ir.parse(BEFORE)
    for k, t in g.params.items():
        g.weights[k] = rng.standard_normal(t.shape).astype(np.float32)
    out = FuseLinears().run(g)
    np.testing.assert_array_equal(out.weights["q.bias.fused.0"][:8], 0)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):  # BLAS may block a larger matmul's sums differently
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def lut_graph(outs: list[int], cols: int, table: str, P: int = 2, group: int = 8) -> str:
    ng = -(-cols // group)
    tiles = lambda o: -(-o // 64)  # noqa: E731
    pairs = -(-(-(-cols // 4)) // 2)
    params = "".join(f"  param @w{i}.bits: u8[{P}, {tiles(o)}, {pairs}, 64]\n  param @w{i}.coef: f32[{P}, {ng}, {o}]\n"
                     f"  param @w{i}.offs: f32[{ng}, {o}]\n" for i, o in enumerate(outs))
    nodes = "".join(f"  %y{i}: f32[s0, {o}] = lut_linear(%x, @w{i}.bits, @w{i}.coef, @w{i}.offs) "
                    f"{{cols = {cols}, group = {group}, tgroup = {group}, table = \"{table}\"}}\n" for i, o in enumerate(outs))
    return (f"graph @g(%x: f32[s0, {cols}]) {{\n{params}{nodes}  return {', '.join(f'%y{i}' for i in range(len(outs)))}\n}}\n")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([64, 128, 70, 3]), min_size=2, max_size=3), st.integers(1, 40),
       st.sampled_from(["i8", "i16", "f32"]), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_lut_linear_fusion_is_exact(outs: list[int], cols: int, table: str, n: int, seed: int) -> None:
    g = ir.parse(lut_graph(outs, cols, table))
    rng = np.random.default_rng(seed)
    for k, t in g.params.items():
        g.weights[k] = (rng.integers(0, 256, t.shape).astype(np.uint8) if t.dtype.name == "u8"
                        else rng.standard_normal(t.shape).astype(np.float32))
    out = FuseLinears().run(g)
    ir.verify(out)
    fused = sum(n.op == "lut_linear" for n in out.nodes) == 1
    assert fused == all(o % 64 == 0 for o in outs[:-1])  # every part but the last fills whole tiles
    x = rng.standard_normal((n, cols)).astype(np.float32)
    for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):
        np.testing.assert_array_equal(a, b)


def test_parts_that_disagree_stay_apart() -> None:
    g = ir.parse(lut_graph([64, 64], 16, "i8"))
    g.nodes[1].attrs["table"] = "i16"
    for k, t in g.params.items():
        g.weights[k] = np.zeros(t.shape, t.dtype.np)
    assert FuseLinears().run(g) == g  # i8 and i16 tables


def test_tiny_llama_gate_up() -> None:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    g = export(tiny("llama"), (ids,)).graph
    for p in parse_pipeline("ptqtp{group=64},pack_lut"):
        g = p.run(g)
    out = FuseLinears().run(g)
    luts = lambda h: sum(n.op == "lut_linear" for n in h.nodes)  # noqa: E731
    assert luts(g) == 14 and luts(out) == 12  # gate+up fuse; k (32 rows: half a tile) keeps q, k, v apart
    want = ir.run(g, [ids.numpy()])[0]
    np.testing.assert_array_equal(ir.run(out, [ids.numpy()])[0], want)


def test_gguf_linears_of_one_type_fuse_exactly() -> None:
    """q/k/v as GGUF blocks: one gguf_linear over the stacked rows, each slice equal to its own layer's output."""
    gguf = pytest.importorskip("gguf")


    rng = np.random.default_rng(0)
    text = ("graph @g(%x: f32[3, 64]) {\n  param @q: u8[8, 40]\n  param @k: u8[4, 40]\n  param @o: u8[4, 36]\n"
            "  %a: f32[3, 8] = gguf_linear(%x, @q) {type = \"q4_1\", cols = 64}\n"
            "  %b: f32[3, 4] = gguf_linear(%x, @k) {type = \"q4_1\", cols = 64}\n"
            "  %c: f32[3, 4] = gguf_linear(%x, @o) {type = \"q4_0\", cols = 64}\n  return %a, %b, %c\n}\n")
    g = ir.parse(text)
    for name, t in (("q", "Q4_1"), ("k", "Q4_1"), ("o", "Q4_0")):
        W = rng.standard_normal((g.params[name].shape[0], 64)).astype(np.float32)
        g.weights[name] = gguf.quants.quantize(W, gguf.GGMLQuantizationType[t])
    out = FuseLinears().run(g)
    assert [n.op for n in out.nodes].count("gguf_linear") == 2 and [n.op for n in out.nodes].count("slice") == 2
    x = rng.standard_normal((3, 64)).astype(np.float32)
    for got, want in zip(ir.run(out, [x]), ir.run(g, [x])):
        np.testing.assert_array_equal(got, want)
