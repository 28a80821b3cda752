"""pack_gguf: golden rewrite (linears with and without bias, a tied embedding + head sharing one
dequant_gguf, an f16 linear over a cast of a decoded weight and a decoded graph output it must leave alone), idempotence, the CPU lowering runs it, and the rewritten
graph computes what the op references say (gguf_embedding bit for bit the decoded table's rows)."""
from __future__ import annotations

import numpy as np

import ir
from backends.cpu import CpuBackend
from ir.ops.quant.gguf import BLOCKS
from passes import parse_pipeline
from passes.pack_gguf import PackGguf

BEFORE = """graph @lm(%ids: i64[1, s0], %h16: f16[1, s0, 32]) {
  param @emb: u8[10, 34]
  param @fc.blocks: u8[6, 20]
  param @fc.bias: f32[6]
  param @k.blocks: u8[3, 144]
  param @w16: u8[4, 18]
  %emb.dq: f32[10, 32] = dequant_gguf(@emb) {type = "q8_0", cols = 32}
  %x: f32[1, s0, 32] = embedding(%emb.dq, %ids)
  %fc.dq: f32[6, 32] = dequant_gguf(@fc.blocks) {type = "q4_1", cols = 32}
  %h: f32[1, s0, 6] = linear(%x, %fc.dq, @fc.bias)
  %k.dq: f32[3, 256] = dequant_gguf(@k.blocks) {type = "q4_k", cols = 256}
  %w16.dq: f32[4, 32] = dequant_gguf(@w16) {type = "q4_0", cols = 32}
  %w16.h: f16[4, 32] = cast(%w16.dq) {dtype = f16}
  %z: f16[1, s0, 4] = linear(%h16, %w16.h)
  %logits: f32[1, s0, 10] = linear(%x, %emb.dq)
  return %h, %logits, %k.dq, %z
}
"""

AFTER = """graph @lm(%ids: i64[1, s0], %h16: f16[1, s0, 32]) {
  param @emb: u8[10, 34]
  param @fc.blocks: u8[6, 20]
  param @fc.bias: f32[6]
  param @k.blocks: u8[3, 144]
  param @w16: u8[4, 18]
  %x: f32[1, s0, 32] = gguf_embedding(@emb, %ids) {type = "q8_0", cols = 32}
  %h: f32[1, s0, 6] = gguf_linear(%x, @fc.blocks, @fc.bias) {type = "q4_1", cols = 32}
  %k.dq: f32[3, 256] = dequant_gguf(@k.blocks) {type = "q4_k", cols = 256}
  %w16.dq: f32[4, 32] = dequant_gguf(@w16) {type = "q4_0", cols = 32}
  %w16.h: f16[4, 32] = cast(%w16.dq) {dtype = f16}
  %z: f16[1, s0, 4] = linear(%h16, %w16.h)
  %logits: f32[1, s0, 10] = gguf_linear(%x, @emb) {type = "q8_0", cols = 32}
  return %h, %logits, %k.dq, %z
}
"""


def test_golden(golden) -> None:
    """The embedding and the tied head read @emb itself (its decoded table is gone); a dequant_gguf that is a
    graph output stays; an f16 linear over a cast of the decoded weight is not a dequant_gguf linear."""
    golden(PackGguf(), BEFORE, AFTER)


def test_cpu_lowering_runs_it() -> None:
    names = [p.name for p in parse_pipeline(CpuBackend.lowering)]
    assert "pack_gguf" in names and names.index("pack_gguf") < names.index("fuse_linears") < names.index("dce")


def blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random rows of blocks whose f16 scales (at byte 0, and 2 for the types with a second one) are small
    and finite."""
    per, nbytes = BLOCKS[qtype]
    b = rng.integers(0, 256, (rows, cols // per, nbytes), dtype=np.uint8)
    for at in {"q6_k": [208], "q4_0": [0], "q5_0": [0], "q8_0": [0]}.get(qtype, [0, 2]):
        b[..., at:at + 2] = (rng.standard_normal(b.shape[:2] + (1,)) * 1e-2).astype(np.float16).view(np.uint8)
    return b.reshape(rows, -1)


def test_rewritten_graph_computes_the_references() -> None:
    rng = np.random.default_rng(0)
    g = ir.parse(BEFORE.replace("return %h,", "return %x, %h,"))
    g.weights = {"emb": blocks("q8_0", 10, 32, rng), "fc.blocks": blocks("q4_1", 6, 32, rng),
                 "fc.bias": rng.standard_normal(6).astype(np.float32), "k.blocks": blocks("q4_k", 3, 256, rng),
                 "w16": blocks("q4_0", 4, 32, rng)}
    ids = rng.integers(0, 10, (1, 7))
    h16 = rng.standard_normal((1, 7, 32)).astype(np.float16)
    want = ir.run(g, [ids, h16])
    got = ir.run(PackGguf().run(g), [ids, h16])
    for i in (0, 3, 4):  # gguf_embedding decodes the same rows bit for bit; the rest is untouched
        np.testing.assert_array_equal(got[i], want[i])
    for i in (1, 2):  # int8 activations: ~1e-2 of the output's scale
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=1e-2 * np.abs(want[i]).max())


MLP = """graph @mlp(%x: f32[2, 32]) {
  param @gu: u8[64, 20]
  param @down: u8[6, 20]
  param @head: u8[4, 20]
  %gu.dq: f32[64, 32] = dequant_gguf(@gu) {type = "q4_1", cols = 32}
  %gu: f32[2, 64] = linear(%x, %gu.dq)
  %g: f32[2, 32] = slice(%gu) {dim = 1, start = 0, end = 32, step = 1}
  %u: f32[2, 32] = slice(%gu) {dim = 1, start = 32, end = 64, step = 1}
  %a: f32[2, 32] = silu(%g)
  %p: f32[2, 32] = mul(%a, %u)
  %down.dq: f32[6, 32] = dequant_gguf(@down) {type = "q4_1", cols = 32}
  %d: f32[2, 6] = linear(%p, %down.dq)
  %head.dq: f32[4, 32] = dequant_gguf(@head) {type = "q4_1", cols = 32}
  %y: f32[2, 4] = linear(%x, %head.dq)
  return %d, %y
}
"""


def test_acts_modes() -> None:
    """acts: q8 everywhere by default, q8x2 everywhere, or (mlp) where the input is an MLP's activation product;
    a bad mode is a PassError naming the choices."""
    import pytest

    g = ir.parse(MLP)

    def acts(p: PackGguf) -> dict[str, str]:
        return {n.name: n.attrs["acts"] for n in p.run(g).nodes if n.op == "gguf_linear"}
    assert acts(PackGguf()) == {"gu": "q8", "d": "q8", "y": "q8"}
    assert acts(PackGguf(acts="q8x2")) == {"gu": "q8x2", "d": "q8x2", "y": "q8x2"}
    assert acts(PackGguf(acts="mlp")) == {"gu": "q8", "d": "q8x2", "y": "q8"}
    assert str(PackGguf(acts="mlp")) == "pack_gguf{acts=mlp}"
    with pytest.raises(ir.PassError, match="acts must be one of mlp, q8, q8x2"):
        PackGguf(acts="q4")
