"""dequant_gguf against gguf-py's own decoder, bit for bit: random blocks whose f16 scales include
NaNs (quiet, signalling, with payloads, negative), infinities, subnormals and zeros, ragged row
counts and 1 to several blocks a row; unpack_blocks' codes and scales against the same weights;
the golden IR file; the type rule's errors; constant_fold leaving the blocks alone."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES
from ir.ops.quant.gguf import BLOCKS, SUB_BLOCK, dequantize, unpack_blocks

TESTED_OPS = {"dequant_gguf"}
IR_FILE = Path(__file__).parent / "quant_gguf.ir"

# Byte offsets of each type's f16 fields (d, m / dmin) inside a block: where the special values go.
F16_FIELDS = {"q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "q8_0": (0,),
              "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}
SPECIAL_F16 = np.array([0x7E00, 0xFE00, 0x7C01, 0x7D55, 0xFFFF, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0000, 0x8000,
                        0x7BFF, 0x0400], dtype=np.uint16)  # NaNs, +-inf, subnormals, +-0, max, min normal


def gguf_type(qtype: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[qtype.upper()]


def random_blocks(rng: np.random.Generator, qtype: str, rows: int, nblocks: int, special: float = 0.0,
                  scale: float = 0.0) -> np.ndarray:
    """u8 [rows, nblocks * bytes]: random bytes; each f16 field is a special value with probability
    `special`, and (with `scale` > 0) otherwise a finite value of about that size."""
    elems, nbytes = BLOCKS[qtype]
    b = rng.integers(0, 256, (rows, nblocks, nbytes), dtype=np.uint8)
    for at in F16_FIELDS[qtype]:
        f = b[..., at:at + 2].copy().view("<u2")
        if scale > 0:
            f[...] = (rng.uniform(0.1, 1.0, f.shape) * scale).astype("<f2").view("<u2")
        pick = rng.random(f.shape) < special
        f[pick] = rng.choice(SPECIAL_F16, int(pick.sum()))
        b[..., at:at + 2] = f.view(np.uint8)
    return b.reshape(rows, nblocks * nbytes)


def gguf_reference(blocks: np.ndarray, qtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(blocks, gguf_type(qtype))


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted(BLOCKS)), st.integers(1, 6), st.integers(1, 4), st.sampled_from([0.0, 0.3, 1.0]),
       st.integers(0, 2**32 - 1))
def test_dequantize_is_bit_identical_to_gguf(qtype: str, rows: int, nblocks: int, special: float, seed: int) -> None:
    blocks = random_blocks(np.random.default_rng(seed), qtype, rows, nblocks, special)
    cols = nblocks * BLOCKS[qtype][0]
    want = gguf_reference(blocks, qtype)
    got = ir.OPS["dequant_gguf"].reference([blocks], {"type": qtype, "cols": cols})
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # NaN payloads and signs too


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(BLOCKS)), st.integers(1, 4), st.integers(1, 3), st.sampled_from([0.0, 0.5]),
       st.integers(0, 2**32 - 1))
def test_unpacked_codes_and_scales_rebuild_the_weights(qtype: str, rows: int, nblocks: int, special: float,
                                                       seed: int) -> None:
    """w = q * scale - minus per sub-block, in f32: bit for bit, but for the sign of a NaN offset."""
    blocks = random_blocks(np.random.default_rng(seed), qtype, rows, nblocks, special)
    cols, S = nblocks * BLOCKS[qtype][0], SUB_BLOCK[qtype]
    q, scale, minus = unpack_blocks(blocks, qtype, cols)
    assert q.dtype == np.int8 and q.shape == (rows, cols)
    assert scale.dtype == np.float32 and scale.shape == (rows, cols // S)
    assert (minus is None) == (qtype in ("q4_0", "q5_0", "q8_0", "q6_k"))
    with np.errstate(all="ignore"):
        w = q.reshape(rows, -1, S).astype(np.float32) * scale[..., None]
        if minus is not None:
            assert minus.shape == scale.shape and minus.dtype == np.float32
            w = w - minus[..., None]
    w, want = w.reshape(rows, cols), gguf_reference(blocks, qtype)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(w), nan)
    np.testing.assert_array_equal(w[~nan].view(np.uint32), want[~nan].view(np.uint32))
    lo, hi = {"q4_0": (-8, 7), "q4_1": (0, 15), "q5_0": (-16, 15), "q5_1": (0, 31), "q8_0": (-128, 127),
              "q4_k": (0, 15), "q5_k": (0, 31), "q6_k": (-32, 31)}[qtype]
    assert lo <= q.min() and q.max() <= hi


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_gguf_quantized_weights_decode_close_to_the_originals(qtype: str) -> None:
    """gguf-py's quantizer and our decoder agree on the layout (the bit tests use random bytes)."""
    w = np.random.default_rng(0).standard_normal((3, 96)).astype(np.float32)
    blocks = gguf.quants.quantize(w, gguf_type(qtype))
    got = dequantize(blocks, qtype, 96)
    np.testing.assert_array_equal(got, gguf_reference(blocks, qtype))
    assert np.abs(got - w).max() < {"q8_0": 0.02, "q5_0": 0.2, "q5_1": 0.2}.get(qtype, 0.4)


def test_no_rows() -> None:
    for qtype, (elems, nbytes) in BLOCKS.items():
        assert dequantize(np.zeros((0, 2 * nbytes), np.uint8), qtype, 2 * elems).shape == (0, 2 * elems)


def test_the_ir_file_roundtrips_and_runs() -> None:
    import compiler

    text = IR_FILE.read_text()
    g = ir.parse(text)
    assert ir.parse(str(g)) == g and ir.print_graph(ir.parse(str(g))) == str(g)
    assert str(g) == "\n".join(line for line in text.splitlines() if not line.startswith("//")) + "\n"
    rng = np.random.default_rng(0)
    g.weights = {"w": gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf_type("q4_1")),
                 "v": random_blocks(rng, "q6_k", 2, 1, scale=0.01),
                 "emb": gguf.quants.quantize(rng.standard_normal((5, 64)).astype(np.float32), gguf_type("q8_0"))}
    x, ids = rng.standard_normal((3, 64)).astype(np.float32), np.array([4, 0, 2])
    y, v, h = ir.run(ir.verify(g), [x, ids], check=True)
    W, E = gguf_reference(g.weights["w"], "q4_1"), gguf_reference(g.weights["emb"], "q8_0")
    np.testing.assert_allclose(y, x @ W.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(v, gguf_reference(g.weights["v"], "q6_k"))
    np.testing.assert_allclose(h, E[ids] @ E.T, rtol=1e-5, atol=1e-5)
    c = compiler.compile(g, target="reference")  # the default pipeline keeps the blocks
    assert sum(n.op == "dequant_gguf" for n in c.graph) == 3
    for a, b in zip(c(x, ids), (y, v, h)):
        np.testing.assert_array_equal(a, b)
    # target=cpu decodes a weight that is an output bit for bit (its linears are the CPU lowering's business)
    np.testing.assert_array_equal(compiler.compile(g, target="cpu")(x, ids)[1], v)


def test_constant_fold_keeps_the_blocks() -> None:
    """Parameters are never constants to constant_fold, so the u8 blocks stay and are decoded at run time."""
    from passes.constant_fold import ConstantFold

    g = ir.parse(IR_FILE.read_text())
    folded = ConstantFold(max_elements=1 << 20).run(g)
    assert str(folded) == str(g)


def graph_with(dt: str, shape: tuple[int, ...], attrs: dict) -> ir.Graph:
    """@w: dt[shape] -> dequant_gguf(@w) {attrs}, built without checks (so the verifier sees it)."""
    g = ir.Graph("g")
    g.params["w"] = ir.TensorType(DTYPES[dt], shape)
    g.nodes.append(ir.Node("y", "dequant_gguf", ("@w",), attrs, ir.TensorType(DTYPES["f32"], (4, 64))))
    g.outputs = ["%y"]
    return g


@pytest.mark.parametrize("dt, shape, attrs, msg", [
    ("u8", (4, 40), {"type": "q2_k", "cols": 64},
     r"unknown GGUF type 'q2_k'; supported: q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k"),
    ("u8", (4, 40), {"type": "Q4_1", "cols": 64}, "unknown GGUF type 'Q4_1'"),
    ("u8", (4, 40), {"type": "q4_1", "cols": 48}, "cols = 48 must be a positive multiple of q4_1's 32 elements per block"),
    ("u8", (4, 0), {"type": "q4_1", "cols": 0}, r"cols = 0 is outside \[1, "),  # its declared bounds (ir/ops/base.py)
    ("u8", (4, 40), {"type": "q4_k", "cols": 64}, "cols = 64 must be a positive multiple of q4_k's 256"),
    ("u8", (4, 36), {"type": "q4_1", "cols": 64}, "64 columns of q4_1 take 2 blocks of 20 bytes = 40 bytes a row, got 36"),
    ("i8", (4, 40), {"type": "q4_1", "cols": 64}, r"blocks must be u8\[N, row_bytes\]"),
    ("u8", (160,), {"type": "q4_1", "cols": 64}, r"blocks must be u8\[N, row_bytes\]"),
])
def test_type_rule_errors(dt: str, shape: tuple[int, ...], attrs: dict, msg: str) -> None:
    g = graph_with(dt, shape, attrs)
    with pytest.raises(ir.VerifyError, match=msg):
        ir.verify(g)
    with pytest.raises(ir.ParseError, match=msg):  # the parser infers every node's type
        ir.parse(str(g))


def test_missing_attrs_are_rejected() -> None:
    with pytest.raises(ir.ParseError, match="missing required attribute cols"):
        ir.parse(str(graph_with("u8", (4, 40), {"type": "q4_1"})))


def test_symbolic_row_count_is_allowed() -> None:
    op = ir.OPS["dequant_gguf"]
    t = op.infer([ir.TensorType(DTYPES["u8"], ("s0", 40))], {"type": "q4_1", "cols": 64})
    assert str(t) == "f32[s0, 64]"
