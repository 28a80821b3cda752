"""pack_sparse: golden rewrite (TEAL's shared sparsify read by two linears, WINA's with a scale and a bias,
a threshold, a weight read elsewhere too; a quantized weight and a sparsify read by a non-linear stay);
the rewritten graph computes the same values (to BLAS's summation order); unbound or non-f32 weights stay; the CPU
lowering of a tiny Llama under wina, teal, and wina then ptqtp (the LUT kernels keep their sparsify)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import ir
from compiler.pass_manager import PassManager
from passes import PASSES, Pass, PassContext
from passes.pack_sparse import PackSparse


def bind(g: ir.Graph, seed: int = 0) -> ir.Graph:
    rng = np.random.default_rng(seed)
    for k, t in g.params.items():
        d = t.dtype
        g.weights.setdefault(k, rng.standard_normal(t.shape).astype(d.np) if d.is_float
                             else rng.integers(d.lo, d.hi + 1, t.shape).astype(d.np))
    return g


@dataclass(frozen=True)
class Bound(Pass):
    """pack_sparse with random weights bound first (it leaves linears over unbound weights alone)."""

    name = "pack_sparse_bound"  # not registered

    def run(self, g: ir.Graph) -> ir.Graph:
        return PackSparse().run(bind(g.copy()))


BEFORE = """graph @g(%x: f32[s0, 8]) {
  param @q: f32[6, 8]
  param @k: f32[4, 8]
  param @up: f32[5, 8]
  param @up.colnorm: f32[8]
  param @up.bias: f32[5]
  param @down: f32[8, 5]
  param @z.q: i4[3, 8]
  param @z.scale: f16[3, 1]
  param @r: f32[2, 8]
  %s: f32[s0, 8] = sparsify(%x) {keep = 4, threshold = 0.0}
  %q: f32[s0, 6] = linear(%s, @q)
  %k: f32[s0, 4] = linear(%s, @k)
  %s2: f32[s0, 8] = sparsify(%x, @up.colnorm) {keep = 2, threshold = 0.0}
  %up: f32[s0, 5] = linear(%s2, @up, @up.bias)
  %a: f32[s0, 5] = relu(%up)
  %s3: f32[s0, 5] = sparsify(%a) {keep = -1, threshold = 0.5}
  %down: f32[s0, 8] = linear(%s3, @down)
  %down2: f32[s0, 8] = linear(%a, @down)
  %s4: f32[s0, 8] = sparsify(%x) {keep = -1, threshold = 0.1}
  %w: f32[3, 8] = dequant_affine(@z.q, @z.scale) {group = 8, dtype = f32}
  %z: f32[s0, 3] = linear(%s4, %w)
  %s5: f32[s0, 8] = sparsify(%x) {keep = 3, threshold = 0.0}
  %r: f32[s0, 2] = linear(%s5, @r)
  %n: f32[s0, 8] = relu(%s5)
  return %q, %k, %down, %down2, %z, %r, %n
}
"""
# q and k share one ones vector; @down stays for %down2; %z's weight is no parameter and %s5 feeds a relu
AFTER = """graph @g(%x: f32[s0, 8]) {
  param @up.colnorm: f32[8]
  param @up.bias: f32[5]
  param @down: f32[8, 5]
  param @z.q: i4[3, 8]
  param @z.scale: f16[3, 1]
  param @r: f32[2, 8]
  param @q.t: f32[8, 6]
  param @s.ones: f32[8]
  param @k.t: f32[8, 4]
  param @up.t: f32[8, 5]
  param @down.t: f32[5, 8]
  param @s3.ones: f32[5]
  %q: f32[s0, 6] = sparse_input_linear(%x, @s.ones, @q.t) {keep = 4, threshold = 0.0}
  %k: f32[s0, 4] = sparse_input_linear(%x, @s.ones, @k.t) {keep = 4, threshold = 0.0}
  %up: f32[s0, 5] = sparse_input_linear(%x, @up.colnorm, @up.t, @up.bias) {keep = 2, threshold = 0.0}
  %a: f32[s0, 5] = relu(%up)
  %down: f32[s0, 8] = sparse_input_linear(%a, @s3.ones, @down.t) {keep = -1, threshold = 0.5}
  %down2: f32[s0, 8] = linear(%a, @down)
  %s4: f32[s0, 8] = sparsify(%x) {keep = -1, threshold = 0.1}
  %w: f32[3, 8] = dequant_affine(@z.q, @z.scale) {group = 8, dtype = f32}
  %z: f32[s0, 3] = linear(%s4, %w)
  %s5: f32[s0, 8] = sparsify(%x) {keep = 3, threshold = 0.0}
  %r: f32[s0, 2] = linear(%s5, @r)
  %n: f32[s0, 8] = relu(%s5)
  return %q, %k, %down, %down2, %z, %r, %n
}
"""


def test_golden(golden) -> None:
    assert PASSES["pack_sparse"] is PackSparse
    golden(Bound(), BEFORE, AFTER)  # verifies, round-trips, idempotent


def test_same_values_and_weights() -> None:
    g = bind(ir.parse(BEFORE))
    out = PackSparse().run(g)
    assert str(g) == BEFORE and set(g.weights) == set(g.params), "pack_sparse mutated its input"
    assert set(out.weights) == set(out.params)
    np.testing.assert_array_equal(out.weights["q.t"], g.weights["q"].T)
    assert out.weights["q.t"].flags.c_contiguous and (out.weights["s.ones"] == 1).all()
    rng = np.random.default_rng(1)
    for n in (1, 5):
        x = rng.standard_normal((n, 8)).astype(np.float32)
        x[0, :3] = x[0, 3]  # ties
        for a, b in zip(ir.run(g, [x]), ir.run(out, [x])):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # the same masked x; BLAS may sum W.T in another order


def test_unbound_and_non_f32_weights_stay(golden) -> None:
    golden(PackSparse(), BEFORE, BEFORE)  # no weights bound
    g = bind(ir.parse(BEFORE.replace("f32", "f16")))
    assert PackSparse().run(g) == g


# -- the CPU lowering of a tiny Llama ------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    return export(tiny("llama"), (ids,)).graph, [ids.numpy()]


def lowered(g: ir.Graph, spec: str) -> tuple[ir.Graph, ir.Graph]:
    from backends.cpu import CpuBackend

    src = PassManager(f"fold_transposes,{spec},cse,dce", context=PassContext(progress=False)).run(g)
    return src, PassManager(CpuBackend.lowering).run(src)


@pytest.mark.parametrize("spec, sparse, fused", [
    ("wina{sparsity=0.5}", 12, 0),  # each of q/k/v, gate/up, down has its own scale: nothing fuses
    ("teal{sparsity=0.5}", 6, 4),  # q/k/v and gate/up share one sparsify each: fused first, then one kernel each
])
def test_tiny_llama_lowering(llama, spec: str, sparse: int, fused: int) -> None:
    g, args = llama
    src, low = lowered(g, spec)
    ops = [n.op for n in low]
    assert ops.count("sparse_input_linear") == sparse and "sparsify" not in ops
    assert sum(k.endswith(".fused.0.t") for k in low.params) == fused
    assert all("o_proj" in k for k in low.params if k.endswith(("_proj.weight", ".fused.0")))  # the rest: transposed
    assert ops.count("linear") == 3  # o_proj twice and the head
    assert ir.parse(str(low)) == low
    np.testing.assert_allclose(ir.run(low, args)[0], ir.run(src, args)[0], rtol=1e-5, atol=1e-5)
    # pack_sparse before fuse_linears: nothing for fuse_linears to fuse, the same function
    early = PassManager("pack_sparse,fuse_rms_norm,pack_lut,fuse_linears,dce").run(src)
    assert [n.op for n in early].count("sparse_input_linear") == 12
    np.testing.assert_allclose(ir.run(early, args)[0], ir.run(src, args)[0], rtol=1e-5, atol=1e-5)


def test_tiny_llama_quantized_keeps_its_sparsify(llama) -> None:
    """wina then ptqtp: the weights are trit-planes, not parameters: pack_lut makes lut_linears that read
    the sparsify, and pack_sparse leaves them alone."""
    g, args = llama
    src, low = lowered(g, "wina{sparsity=0.5},ptqtp{group=64,iters=5}")
    ops = [n.op for n in low]
    assert ops.count("sparsify") == 12 and ops.count("lut_linear") == 14 and "sparse_input_linear" not in ops
    prod = {n.ref: n.op for n in low}
    assert sum(prod.get(n.operands[0]) == "sparsify" for n in low if n.op == "lut_linear") == 12  # all but o_proj
