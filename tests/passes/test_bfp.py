"""bfp: golden rewrite, the half-step error contract, channel spaces, and the permutation folding:
a rearranged tiny Llama without quantization computes what the original computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from passes import PASSES, PassContext, parse_pipeline
from passes.bfp import Bfp, bfp, outlier_order, rearrange
from passes.fold_permutations import channel_spaces

# A Llama-like block: an embedding, a norm weight on the residual, gate/up/down, the residual add, a head.
def block(d: int = 8, f: int = 12) -> str:
    return f"""graph @g(%ids: i64[s0]) {{
  param @emb: f32[16, {d}]
  param @norm: f32[{d}]
  param @gate: f32[{f}, {d}]
  param @up: f32[{f}, {d}]
  param @down: f32[{d}, {f}]
  param @head.weight: f32[5, {d}]
  %x: f32[s0, {d}] = embedding(@emb, %ids)
  %c: f32[] = full() {{value = 2.0, dtype = f32, shape = []}}
  %sq: f32[s0, {d}] = pow(%x, %c)
  %ms: f32[s0, 1] = mean(%sq) {{dims = [-1], keepdim = true}}
  %r: f32[s0, 1] = rsqrt(%ms)
  %xn: f32[s0, {d}] = mul(%x, %r)
  %h: f32[s0, {d}] = mul(@norm, %xn)
  %g: f32[s0, {f}] = linear(%h, @gate)
  %a: f32[s0, {f}] = silu(%g)
  %u: f32[s0, {f}] = linear(%h, @up)
  %m: f32[s0, {f}] = mul(%a, %u)
  %d: f32[s0, {d}] = linear(%m, @down)
  %res: f32[s0, {d}] = add(%x, %d)
  %y: f32[s0, 5] = linear(%res, @head.weight)
  return %y
}}
"""


BEFORE = block()
AFTER = """graph @g(%ids: i64[s0]) {
  param @emb: f32[16, 8]
  param @norm: f32[8]
  param @head.weight: f32[5, 8]
  param @gate.mant: i4[12, 8]
  param @gate.exp: i8[12, 3]
  param @up.mant: i4[12, 8]
  param @up.exp: i8[12, 3]
  param @down.mant: i4[8, 12]
  param @down.exp: i8[8, 4]
  %x: f32[s0, 8] = embedding(@emb, %ids)
  %c: f32[] = full() {value = 2.0, dtype = f32, shape = []}
  %sq: f32[s0, 8] = pow(%x, %c)
  %ms: f32[s0, 1] = mean(%sq) {dims = [-1], keepdim = true}
  %r: f32[s0, 1] = rsqrt(%ms)
  %xn: f32[s0, 8] = mul(%x, %r)
  %h: f32[s0, 8] = mul(@norm, %xn)
  %gate.dq: f32[12, 8] = dequant_bfp(@gate.mant, @gate.exp) {block = 3, dtype = f32}
  %g: f32[s0, 12] = linear(%h, %gate.dq)
  %a: f32[s0, 12] = silu(%g)
  %up.dq: f32[12, 8] = dequant_bfp(@up.mant, @up.exp) {block = 3, dtype = f32}
  %u: f32[s0, 12] = linear(%h, %up.dq)
  %m: f32[s0, 12] = mul(%a, %u)
  %down.dq: f32[8, 12] = dequant_bfp(@down.mant, @down.exp) {block = 3, dtype = f32}
  %d: f32[s0, 8] = linear(%m, %down.dq)
  %res: f32[s0, 8] = add(%x, %d)
  %y: f32[s0, 5] = linear(%res, @head.weight)
  return %y
}
"""


def with_weights(text: str = BEFORE, seed: int = 0) -> ir.Graph:
    g = ir.parse(text)
    rng = np.random.default_rng(seed)
    g.weights = {k: rng.standard_normal(t.shape).astype(np.float32) for k, t in g.params.items()}
    return ir.verify(g)


def ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 16, n)


def dequant(g: ir.Graph, w: str) -> np.ndarray:
    n = g.node(f"{w}.dq")
    return ir.OPS[n.op].reference([g.weights[o[1:]] for o in n.operands], n.attrs)


@pytest.mark.parametrize("rearrange", [False, True])
def test_golden_rewrite_verifies_roundtrips_and_is_idempotent(rearrange: bool) -> None:
    g = with_weights()
    text, weights = str(g), dict(g.weights)
    p = Bfp(block=3, mbits=4, rearrange=rearrange)
    out = p.run(g)
    assert str(g) == text and all(g.weights[k] is weights[k] for k in weights), "the pass mutated its input"
    assert out == ir.parse(AFTER), f"got:\n{out}"
    ir.verify(out)
    assert ir.parse(str(out)) == out
    again = p.run(out)
    assert again == out and again.same_weights(out), "a second run changed the graph"
    want, got = ir.run(g, [ids(6)])[0], ir.run(out, [ids(6)])[0]
    assert np.linalg.norm(got - want) < 0.25 * np.linalg.norm(want)  # 4-bit mantissas: coarse, but the same map


def test_registered_and_options() -> None:
    assert PASSES["bfp"] is Bfp
    p = parse_pipeline("bfp{block=16, mbits=4, rearrange=false}")[0]
    assert parse_pipeline(str(p)) == [p] and (p.block, p.mbits, p.rearrange) == (16, 4, False)
    for bad in ("bfp{mbits=1}", "bfp{mbits=9}", "bfp{block=0}"):
        with pytest.raises(ir.PassError):
            parse_pipeline(bad)[0].run(with_weights())


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 16), st.integers(2, 8), st.integers(-40, 30),
       st.integers(0, 2**31 - 1))
def test_error_contract(out: int, n: int, block: int, mbits: int, mag: int, seed: int) -> None:
    """|W - Ŵ| <= 2^(exp-1); mantissas in range; each exponent is the smallest that fits its block."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((out, n)) * 2.0**mag
    W[rng.random((out, n)) < 0.1] *= 100  # outliers
    W[rng.random(out) < 0.3] = 0  # all-zero rows
    W = W.astype(np.float32)
    q = bfp(W, block, mbits)
    m, e = q.parts["mant"][0], q.parts["exp"][0]
    Wh = ir.OPS["dequant_bfp"].reference([m, e], {"block": block, "dtype": ir.dtype("f32")})
    ee = np.repeat(e.astype(np.int64), block, axis=1)[:, :n]
    assert (np.abs(W.astype(np.float64) - Wh) <= np.ldexp(0.5, ee)).all()
    qmax = 2 ** (mbits - 1) - 1
    assert np.abs(m).max(initial=0) <= qmax
    amax = np.abs(np.pad(W, ((0, 0), (0, -n % block))).reshape(out, -1, block)).max(-1).astype(np.float64)
    assert ((amax > np.ldexp(float(qmax), e.astype(np.int64) - 1)) | (e == -128)).all()  # no smaller e fits
    assert (e[amax == 0] == -128).all() and (Wh[(W == 0).all(axis=1)] == 0).all()
    assert q.parts["mant"][1] == ir.dtype(f"i{mbits}")  # mbits-bit storage, packed
    assert q.bits() == out * (-(-n * mbits // 8) * 8 + 8 * -(-n // block))


# -- the rearrangement (channel spaces and their folding: test_fold_permutations.py) ----------------
@pytest.fixture(scope="module")
def llama() -> ir.Graph:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    return export(tiny("llama"), (torch.randint(0, 128, (1, 8)),)).graph


def test_rearranged_llama_is_exact_and_bfp_on_it_is_idempotent(llama: ir.Graph) -> None:
    ids = np.random.default_rng(0).integers(0, 128, (1, 12))
    want = ir.run(llama, [ids])[0]
    weights = {w for w in llama.weights if w.endswith("proj.weight")}
    g = rearrange(llama, weights)
    assert np.abs(ir.run(g, [ids])[0] - want).max() <= 1e-6 * max(1.0, np.abs(want).max())
    out = Bfp(block=16, mbits=8).run(llama)
    assert Bfp(block=16, mbits=8).run(out) == out
    assert np.abs(ir.run(out, [ids])[0] - want).max() < 0.05 * np.abs(want).max()


def test_calibration_scores_run_and_fold_exactly(llama: ir.Graph) -> None:
    rng = np.random.default_rng(0)
    ctx = PassContext(calibration=[[rng.integers(0, 128, (1, 16))]], progress=False)
    q = Bfp(block=16, mbits=4).apply(llama, ctx)
    ids = rng.integers(0, 128, (1, 9))
    assert np.isfinite(ir.run(q, [ids])[0]).all()


def test_outliers_share_blocks_and_lower_the_error() -> None:
    """Four outlier input channels (|W| about 10 in every row), one in each block of 8: rearranged,
    they share one block, and the normal weights of the other blocks keep fine exponents."""
    g = with_weights(block(d=32, f=64))
    rng = np.random.default_rng(0)
    W = rng.standard_normal((64, 32)).astype(np.float32)
    W[:, [3, 12, 17, 30]] = 10 * np.sign(W[:, [3, 12, 17, 30]]) * rng.uniform(0.8, 1, (64, 4))
    g.weights["gate"] = W
    sp = next(sp for sp in channel_spaces(g) if sp.size == 32)
    order = outlier_order(g, sp, {"gate"})
    assert sorted(order[:4]) == [3, 12, 17, 30]
    err = {}
    for r in (False, True):
        out = Bfp(block=8, mbits=4, rearrange=r, layers="gate").run(g)
        err[r] = np.linalg.norm((W[:, order] if r else W) - dequant(out, "gate"))
        assert np.isfinite(ir.run(out, [ids(5)])[0]).all()
    assert err[True] < 0.7 * err[False], err
