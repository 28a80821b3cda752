"""gguf_linear and gguf_embedding against independent formulations.

* gguf_linear's reference, for every block type, equals the product of the *dequantized* activations
  (d * q, per 32 values) with dequant_gguf's weights to f32 rounding (1e-6 of the terms' scale): the
  integer decomposition (codes, sub-scales, D, Mc, s = d * sum(q)) adds nothing of its own. Against the
  exact x @ W^T + bias it stays within the activation-quantization bound: half a step d / 2 per value,
  sum_i |w_i| d_b / 2.
* quantize_acts: codes in +-127, round half to even of x / d, d = max|x| / 127, s = d sum(q); zeros
  and all-zero chunks give d = 0 and no NaN; a NaN or inf makes the chunk's d and s NaN.
* NaN / inf in a token: every output of that token is NaN; the other tokens are untouched.
* weight_codes rebuild dequant_gguf's weights bit for bit: D (S Q) + Mc.
* gguf_embedding is embedding(dequant_gguf(blocks), ids) bit for bit, negative ids included.
* infer() rejects bad operands and attributes with a message naming them; the golden IR file runs.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ir
from ir.ops.quant.gguf import BLOCKS, dequantize
from ir.ops.quant.gguf_linear import CHUNK, act_parts, quantize_acts, weight_codes

TESTED_OPS = {"gguf_linear", "gguf_embedding"}
OP = ir.OPS["gguf_linear"]
F32 = np.float32
SCALES = {"q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q8_0": (0,), "q4_k": (0, 2), "q5_k": (0, 2),
          "q6_k": (208,)}  # byte offsets of each block's f16 scales (d, and m or dmin)


def gguf_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator, zero_rows: float = 0.0) -> np.ndarray:
    """u8 [rows, row_bytes]: random codes, finite f16 scales of random sign and magnitude (1e-4 .. 1e-1);
    some rows with every scale 0 (all-zero weights, d = 0)."""
    per, nbytes = BLOCKS[qtype]
    b = rng.integers(0, 256, (rows, cols // per, nbytes), dtype=np.uint8)
    for at in SCALES[qtype]:
        v = rng.standard_normal(b.shape[:2]) * 10.0 ** rng.uniform(-4, -1, b.shape[:2])
        v[rng.random(rows) < zero_rows] = 0.0
        b[..., at:at + 2] = v.astype("<f2")[..., None].view(np.uint8)
    return b.reshape(rows, -1)


def activations(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian at a random scale, with exact zeros, outliers (x1000), all-zero chunks and tokens."""
    x = rng.standard_normal((rows, cols)) * 10.0 ** rng.integers(-3, 3)
    x[rng.random(x.shape) < rng.choice([0.0, 0.3])] = 0.0
    x[rng.random(x.shape) < 0.02] *= 1000.0
    x.reshape(rows, -1, CHUNK)[rng.random((rows, cols // CHUNK)) < 0.1] = 0.0
    x[rng.random(rows) < 0.2] = 0.0
    return x.astype(F32)


def decomposition_terms(w: np.ndarray, qtype: str, cols: int, parts: list) -> np.ndarray:
    """Each output's sum of |terms| the reference adds in f32-rounded factors: |D S Q| |d q| per value and
    |Mc| |s| per chunk, for every activation part. The f32 product D d is rounded once, so the reference
    matches the exact product to ~1e-7 of *these* (the code and min terms can cancel: q4_1's D Q and m of
    opposite signs make |w| far smaller than |D Q| + |m|)."""
    Q, S, D, Mc = weight_codes(w, qtype, cols)
    A = np.abs(np.repeat(D, CHUNK, 1).astype(np.float64) * np.repeat(S, 16, 1) * Q)
    t = 0
    for q, d, s in parts:
        t = t + np.abs(q * np.repeat(d, CHUNK, 1).astype(np.float64)) @ A.T
        if Mc is not None:
            t = t + np.abs(s.astype(np.float64)) @ np.abs(Mc.astype(np.float64)).T
    return t


def attrs(qtype: str, cols: int) -> dict:
    return OP.normalize_attrs({"type": qtype, "cols": cols})


# -- the reference against independent formulations ---------------------------------------------
@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(BLOCKS)), st.integers(1, 9), st.integers(1, 4), st.integers(1, 5), st.booleans(),
       st.integers(0, 2**31 - 1))
@example("q4_1", 4, 1, 3, False, 5)  # explore found it: D Q and m cancel to 0.99 from two terms of 57
def test_reference_is_the_quantized_activation_product(qtype: str, N: int, nblk: int, M: int, bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = nblk * BLOCKS[qtype][0]
    w = gguf_blocks(qtype, N, cols, rng, zero_rows=0.2)
    x = activations(M, cols, rng)
    b = [rng.standard_normal(N).astype(F32)] if bias else []
    y = OP.reference([x, w, *b], attrs(qtype, cols))
    assert y.dtype == F32 and y.shape == (M, N)
    W = dequantize(w, qtype, cols).astype(np.float64)
    q, d, s = quantize_acts(x)
    xhat = q.astype(np.float64) * np.repeat(d, CHUNK, axis=1)
    bb = b[0].astype(np.float64) if b else 0.0
    terms = decomposition_terms(w, qtype, cols, [(q, d, s)]) + np.abs(bb)
    np.testing.assert_array_less(np.abs(y - (xhat @ W.T + bb)), 1e-6 * terms + 1e-30)
    # against the exact product: at most half a step per activation
    bound = np.abs(W).reshape(N, -1, CHUNK).sum(-1) @ (d.astype(np.float64) / 2).T
    exact = x.astype(np.float64) @ W.T + bb
    np.testing.assert_array_less(np.abs(y - exact), bound.T * (1 + 1e-5) + 1e-6 * (np.abs(x) @ np.abs(W).T + np.abs(bb)) + 1e-30)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(BLOCKS)), st.integers(1, 9), st.integers(1, 3), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_q8x2_is_the_two_part_product(qtype: str, N: int, nblk: int, M: int, seed: int) -> None:
    """acts = q8x2: the reference is the product with the sum of both parts' dequantized activations, and
    against the exact product it errs by at most half the residual's step per value (d2 / 2, about d / 254)
    plus the residual's own f32 rounding: far inside q8's bound."""
    rng = np.random.default_rng(seed)
    cols = nblk * BLOCKS[qtype][0]
    w, x = gguf_blocks(qtype, N, cols, rng, zero_rows=0.2), activations(M, cols, rng)
    y = OP.reference([x, w], OP.normalize_attrs({"type": qtype, "cols": cols, "acts": "q8x2"}))
    W = dequantize(w, qtype, cols).astype(np.float64)
    (q1, d1, _), (q2, d2, _) = act_parts(x, "q8x2")
    xhat = sum(q.astype(np.float64) * np.repeat(d, CHUNK, axis=1) for q, d in ((q1, d1), (q2, d2)))
    terms = decomposition_terms(w, qtype, cols, act_parts(x, "q8x2"))
    np.testing.assert_array_less(np.abs(y - xhat @ W.T), 1e-6 * terms + 1e-30)
    assert (d2 <= d1 / 2 / 127 * (1 + 1e-5)).all()  # the residual is within half a step
    bound = np.abs(W).reshape(N, -1, CHUNK).sum(-1) @ (d2.astype(np.float64) / 2).T
    ulp = np.abs(x.astype(np.float64)) * 2.0**-23  # x - f32(d q) rounds once, f32(d q) once
    exact = x.astype(np.float64) @ W.T
    np.testing.assert_array_less(np.abs(y - exact), bound.T * (1 + 1e-5) + 2 * ulp @ np.abs(W).T
                                 + 1e-6 * (np.abs(x) @ np.abs(W).T) + 1e-30)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_quantize_acts(M: int, nb: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = activations(M, nb * CHUNK, rng)
    q, d, s = quantize_acts(x)
    assert q.dtype == np.int8 and d.dtype == F32 and s.dtype == F32 and d.shape == s.shape == (M, nb)
    xb = x.reshape(M, nb, CHUNK)
    np.testing.assert_array_equal(d, np.abs(xb).max(-1) / F32(127))
    safe = np.where(d > 0, d, 1)[..., None]
    np.testing.assert_array_equal(q.reshape(M, nb, CHUNK), np.where(d[..., None] > 0, np.rint(xb / safe), 0))
    assert np.abs(q.astype(int)).max(initial=0) <= 127
    np.testing.assert_array_equal(s, d * q.reshape(M, nb, CHUNK).sum(-1).astype(F32))
    assert np.isfinite(d).all() and np.isfinite(s).all()
    np.testing.assert_array_equal(s[d == 0], 0)


def test_tiny_chunks_do_not_overflow() -> None:
    """Subnormal maxima: d loses precision (codes clip at +-127) or rounds to 0 (codes 0); never NaN or wrap."""
    x = np.zeros((3, 32), F32)
    x[0, :2] = [1e-44, -3e-45]  # d = amax / 127 rounds to 0
    x[1, :2] = [1e-39, -1e-40]  # subnormal d
    x[2, :2] = [3e38, -3e38]  # the largest floats
    q, d, s = quantize_acts(x)
    assert d[0, 0] == 0 and not q[0].any() and s[0, 0] == 0
    assert q[1, 0] == 127 and np.isfinite(s).all()
    assert list(q[2, :2]) == [127, -127]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_token_gives_nan(bad: float) -> None:
    rng = np.random.default_rng(1)
    w = gguf_blocks("q4_1", 5, 64, rng)
    x = activations(3, 64, rng)
    x[1, 40] = bad
    y = OP.reference([x, w], attrs("q4_1", 64))
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(y[[0, 2]], OP.reference([x[[0, 2]], w], attrs("q4_1", 64)))
    _, d, s = quantize_acts(x)
    assert np.isnan(d[1, 1]) and np.isnan(s[1, 1]) and np.isfinite(d[1, 0])


def test_zeros_give_no_nan() -> None:
    rng = np.random.default_rng(2)
    for qtype in BLOCKS:
        cols = BLOCKS[qtype][0]
        w = gguf_blocks(qtype, 4, cols, rng, zero_rows=0.5)
        y = OP.reference([np.zeros((2, cols), F32), w, np.ones(4, F32)], attrs(qtype, cols))
        np.testing.assert_array_equal(y, 1.0)


@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_weight_codes_rebuild_the_weights(qtype: str) -> None:
    rng = np.random.default_rng(3)
    cols = 2 * BLOCKS[qtype][0]
    w = gguf_blocks(qtype, 7, cols, rng)
    Q, S, D, Mc = weight_codes(w, qtype, cols)
    assert Q.dtype == np.int8 and S.shape == (7, cols // 16) and D.shape == (7, cols // 32)
    assert (Mc is not None) == (qtype in ("q4_1", "q5_1", "q4_k", "q5_k"))
    # the f32 operations dequant_gguf does: (D * S) * Q (+ Mc)
    Wr = (np.repeat(D, 2, axis=1) * S.astype(F32)).repeat(16, axis=1) * Q.astype(F32)
    if Mc is not None:
        Wr = Wr + np.repeat(Mc, CHUNK, axis=1)
    np.testing.assert_array_equal(Wr, dequantize(w, qtype, cols))


# -- gguf_embedding -----------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_embedding_is_bit_identical(qtype: str) -> None:
    rng = np.random.default_rng(4)
    cols = BLOCKS[qtype][0]
    w = gguf_blocks(qtype, 9, cols, rng)
    ids = rng.integers(-9, 9, (2, 5))
    got = ir.OPS["gguf_embedding"].reference([w, ids], {"type": qtype, "cols": cols})
    want = ir.OPS["embedding"].reference([dequantize(w, qtype, cols), ids], {})
    assert got.dtype == F32 and got.shape == (2, 5, cols)
    np.testing.assert_array_equal(got, want)


# -- the golden IR file and type errors ---------------------------------------------------------
def test_quant_gguf_linear_ir_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_gguf_linear.ir").read_text())
    assert ir.parse(str(g)) == g
    rng = np.random.default_rng(5)
    g.weights = {"w": gguf_blocks("q4_1", 4, 64, rng), "b": rng.standard_normal(4).astype(F32),
                 "v": gguf_blocks("q6_k", 3, 256, rng), "emb": gguf_blocks("q8_0", 5, 64, rng)}
    ir.verify(g)
    x, ids = activations(6, 64, rng).reshape(2, 3, 64), np.array([4, 0, 2])
    xv = activations(2, 256, rng)
    y, z, e, h = ir.run(g, [x, xv, ids])
    np.testing.assert_array_equal(e, dequantize(g.weights["emb"], "q8_0", 64)[ids])
    for got, xx, (k, t, cols), b in ((y, x, ("w", "q4_1", 64), g.weights["b"]), (z, xv, ("v", "q6_k", 256), 0.0),
                                     (h, e, ("emb", "q8_0", 64), 0.0)):
        want = xx.astype(np.float64) @ dequantize(g.weights[k], t, cols).astype(np.float64).T + b
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max())


GOOD = dict(x="f32[3, 64]", blocks="u8[5, 40]", bias="f32[5]", type='"q4_1"', cols=64)


def text(**kw) -> str:
    a = {**GOOD, **kw}
    b = a["bias"] is not None
    return (f"graph @g(%x: {a['x']}) {{\n  param @w: {a['blocks']}\n" + (f"  param @b: {a['bias']}\n" if b else "")
            + f"  %y: f32[3, 5] = gguf_linear(%x, @w{', @b' if b else ''}) {{type = {a['type']}, cols = {a['cols']}}}\n"
            "  return %y\n}\n")


def test_good_operands_parse() -> None:
    assert ir.parse(text()).node("y").type == ir.TensorType(ir.dtype("f32"), (3, 5))
    assert ir.parse(text(bias=None, blocks="u8[5, 36]", type='"q4_0"'))


@pytest.mark.parametrize("kw, msg", [
    (dict(x="f16[3, 64]"), "x must be f32[..., 64], got f16[3, 64]"),
    (dict(x="f32[3, 32]"), "x must be f32[..., 64], got f32[3, 32]"),
    (dict(type='"q2_k"'), "unknown GGUF type 'q2_k'"),
    (dict(cols=48, x="f32[3, 48]"), "cols = 48 must be a positive multiple of q4_1's 32 elements per block"),
    (dict(blocks="u8[5, 41]"), "64 columns of q4_1 take 2 blocks of 20 bytes = 40 bytes a row, got 41"),
    (dict(blocks="i8[5, 40]"), "blocks must be u8[rows, row_bytes] with a static row length, got i8[5, 40]"),
    (dict(bias="f32[6]"), "bias must be f32[5], got f32[6]"),
    (dict(bias="f16[5]"), "bias must be f32[5], got f16[5]"),
])
def test_gguf_linear_rejects(kw: dict, msg: str) -> None:
    with pytest.raises(ir.ParseError, match="gguf_linear: " + re.escape(msg)):  # the parser verifies
        ir.parse(text(**kw))


def test_gguf_embedding_rejects() -> None:
    g = "graph @g(%i: {ids}) {{\n  param @w: u8[5, 34]\n  %y: f32[3, 32] = gguf_embedding(@w, %i) {{type = \"q8_0\", cols = 32}}\n  return %y\n}}\n"
    assert ir.parse(g.format(ids="i32[3]"))
    with pytest.raises(ir.ParseError, match=re.escape("gguf_embedding: ids must be an integer tensor, got f32[3]")):
        ir.parse(g.format(ids="f32[3]"))
