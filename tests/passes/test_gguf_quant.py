"""gguf_quant: f32 linears -> llama.cpp blocks (the gguf package's quantizer), decoded exactly as the format does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
import ir
from frontends.hf_models import tiny
from ir.errors import PassError
from passes import parse_pipeline

gguf = pytest.importorskip("gguf")

GRAPH = """graph @g(%x: f32[2, 64]) {
  param @w: f32[5, 64]
  param @v: f32[3, 40]
  param @b: f32[5]
  %y: f32[2, 5] = linear(%x, @w, @b)
  %z: f32[2, 3] = linear(%x, @v)
  return %y
}
"""


def graph() -> ir.Graph:
    g = ir.parse(GRAPH.replace("%z: f32[2, 3] = linear(%x, @v)", "%z: f32[2, 3] = linear(%u, @v)")
                 .replace("%x: f32[2, 64]) {", "%x: f32[2, 64], %u: f32[2, 40]) {")
                 .replace("return %y", "return %y, %z"))
    rng = np.random.default_rng(0)
    g.weights = {"w": rng.standard_normal((5, 64)).astype(np.float32), "v": rng.standard_normal((3, 40)).astype(np.float32),
                 "b": rng.standard_normal(5).astype(np.float32)}
    return g


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_blocks_are_the_formats_own_round_trip(qtype: str) -> None:
    g = graph()
    out = parse_pipeline(f"gguf_quant{{type={qtype},head=true}}")[0].run(g)
    ir.verify(out)
    assert [n.op for n in out.nodes] == ["dequant_gguf", "linear", "linear"]  # 40 columns: not a multiple of 32, kept
    assert "w" not in out.params and "v" in out.params
    dq = out.nodes[0]
    want = gguf.quants.dequantize(gguf.quants.quantize(g.weights["w"], gguf.GGMLQuantizationType[qtype.upper()]),
                                  gguf.GGMLQuantizationType[qtype.upper()])
    got = ir.OPS["dequant_gguf"].reference([out.weights[dq.operands[0][1:]]], dq.attrs)
    np.testing.assert_array_equal(got, want)
    assert ir.parse(str(out)) == out
    again = parse_pipeline(f"gguf_quant{{type={qtype},head=true}}")[0].run(out)  # idempotent: nothing float left to take
    assert [n.op for n in again.nodes] == [n.op for n in out.nodes]


def test_k_quants_are_refused_with_the_way_to_get_them() -> None:
    with pytest.raises(PassError, match="compile_gguf"):
        parse_pipeline("gguf_quant{type=q4_k}")[0].run(graph())


def test_an_8_bit_head_on_a_tiny_llama_runs_on_cpu() -> None:
    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(0))
    passes = "gguf_quant{type=q8_0,layers=lm_head*,head=true}"
    ref = compiler.compile(model, (ids,), target="reference", passes=passes)
    assert sum(n.op == "dequant_gguf" for n in ref.graph.nodes) == 1
    cpu = compiler.compile(model, (ids,), target="cpu", passes=passes)
    got, want = cpu(ids).logits.numpy(), ref(ids).logits.numpy()
    with torch.no_grad():
        eager = model(ids).logits.numpy()
    assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()  # the head's activations in 8 bits
    assert np.abs(want - eager).max() <= 2e-2 * np.abs(eager).max()  # the head's weights in 8 bits
