"""dfloat11_decode: encode -> decode is the identity on bf16 bit patterns (NaN payloads, infinities,
±0, subnormals, one or two or all 256 exponents, ragged and empty tensors); the length-limited code
against Huffman and brute force; corrupt inputs raise."""
from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES
from ir.ops.quant.dfloat11 import BF16, canonical, code_lengths, decode, encode, split

TESTED_OPS = {"dfloat11_decode"}
OP = ir.OPS["dfloat11_decode"]
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 3e38, 1.0, -2.5], np.float32).astype(BF16)


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint16)


def roundtrip(x: np.ndarray, block: int, **kw) -> np.ndarray:
    """Encode, type-check and decode through the op; the result must be x, bit for bit."""
    stream, offsets, lengths, sm = encode(x, block, **kw)
    u8 = DTYPES["u8"]
    types = [ir.TensorType(u8, stream.shape), ir.TensorType(DTYPES["i64"], offsets.shape),
             ir.TensorType(u8, lengths.shape), ir.TensorType(u8, sm.shape)]
    attrs = OP.normalize_attrs({"block": block})
    assert OP.infer(types, attrs) == ir.TensorType(DTYPES["bf16"], x.shape)
    got = OP.reference([stream, offsets, lengths, sm], attrs)
    assert got.dtype == BF16 and got.shape == x.shape
    np.testing.assert_array_equal(bits(got), bits(x))
    return lengths


@st.composite
def bf16_arrays(draw: st.DrawFn) -> np.ndarray:
    shape = (draw(st.integers(0, 6)), draw(st.integers(0, 300)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["any bits", "normal", "specials", "one value", "two exponents", "mixed"]))
    n = shape[0] * shape[1]
    if kind == "any bits":  # every exponent, NaNs with payloads, infinities, subnormals
        x = rng.integers(0, 1 << 16, n).astype(np.uint16).view(BF16)
    elif kind == "normal":
        x = (rng.standard_normal(n) * draw(st.sampled_from([0.02, 1.0, 1e-30]))).astype(BF16)
    elif kind == "specials":
        x = rng.choice(SPECIALS, n)
    elif kind == "one value":  # a single symbol: the degenerate tree
        x = np.full(n, draw(st.sampled_from(list(SPECIALS))), BF16)
    elif kind == "two exponents":
        x = (rng.choice([1.0, -1.5, 4.0], n) * (1 + rng.random(n) / 2)).astype(BF16)
    else:
        x = (rng.standard_normal(n) * 0.02).astype(BF16)
        some = rng.random(n) < 0.05
        x[some] = rng.choice(SPECIALS, int(some.sum()))
    return x.reshape(shape)


@settings(max_examples=150, deadline=None)
@given(bf16_arrays(), st.sampled_from([1, 3, 7, 64, 1024]), st.sampled_from([5, 1 << 18]))
def test_decode_inverts_encode(x: np.ndarray, block: int, chunk: int) -> None:
    roundtrip(x, block, chunk=chunk)  # the encoder's chunks must not show in the stream


def test_every_bf16_bit_pattern_and_all_256_exponents() -> None:
    x = np.arange(1 << 16, dtype=np.uint16).view(BF16).reshape(256, 256)
    lengths = roundtrip(x, 1024)
    assert (lengths == 8).all()  # a flat histogram: a fixed 8-bit code


@pytest.mark.parametrize("values,want", [([1.0], 1), ([1.0, 2.0], 2)])
def test_one_and_two_symbols_take_one_bit(values: list[float], want: int) -> None:
    x = np.resize(np.array(values, np.float32).astype(BF16), (5, 7))
    lengths = roundtrip(x, 4)
    assert (lengths > 0).sum() == want and lengths.max() == 1
    assert len(encode(x, 4)[0]) == 5  # 35 bits


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 5]), st.integers(9, 16))
def test_long_codes_take_the_canonical_path(seed: int, lut_bits: int, max_len: int) -> None:
    """Geometric exponent frequencies make codes longer than the first-level table."""
    rng = np.random.default_rng(seed)
    e = np.minimum(rng.geometric(0.5, 3000) + 100, 254)
    x = ((e.astype(np.uint16) << 7) | rng.integers(0, 1 << 16, 3000).astype(np.uint16) & 0x807F).view(BF16)
    stream, offsets, lengths, sm = encode(x.reshape(30, 100), 128, max_len=max_len)
    assert lengths.max() <= max_len
    got = decode(stream, offsets, lengths, sm, 128, lut_bits=lut_bits)
    np.testing.assert_array_equal(bits(got).reshape(-1), bits(x))


def test_ir_file_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_dfloat11.ir").read_text())
    rng = np.random.default_rng(0)
    w = (rng.choice([1.0, -1.0], (4, 10)) * rng.uniform(1, 1.9, (4, 10))).astype(BF16)  # exponent 127
    w[0, 0] = 3.0  # and 128: two 1-bit codes, 40 bits in 5 bytes
    e = np.zeros((0, 10), BF16)
    for name, a, block in (("w", w, 16), ("e", e, 1024)):
        g.weights.update(zip((f"{name}.stream", f"{name}.offsets", f"{name}.lengths", f"{name}.sm"), encode(a, block)))
    ir.verify(g)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y, got_e = ir.run(g, [x])
    np.testing.assert_array_equal(y, x @ w.astype(np.float32).T)
    assert got_e.shape == (0, 10) and got_e.dtype == BF16


# -- the code ---------------------------------------------------------------------------------
def huffman_cost(w: list[int]) -> int:
    """Cost (sum of weight * length) of an unconstrained Huffman code: the sum of merged weights."""
    h, cost = list(w), 0
    heapq.heapify(h)
    while len(h) > 1:
        s = heapq.heappop(h) + heapq.heappop(h)
        cost += s
        heapq.heappush(h, s)
    return cost


def kraft_ok(lengths: np.ndarray) -> bool:
    used = lengths[lengths > 0].astype(np.int64)
    return sum(1 << (40 - int(n)) for n in used) <= 1 << 40


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=2, max_size=256))
def test_code_lengths_are_huffman_optimal_without_a_binding_cap(w: list[int]) -> None:
    hist = np.zeros(256, np.int64)
    hist[: len(w)] = w
    n = code_lengths(hist, max_len=32)
    assert kraft_ok(n) and (n[: len(w)] > 0).all() and not n[len(w):].any()
    assert int((n.astype(np.int64) * hist).sum()) == huffman_cost(w)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=5), st.integers(1, 4))
def test_length_limited_code_is_optimal_by_brute_force(w: list[int], cap: int) -> None:
    if (1 << cap) < len(w):
        with pytest.raises(ValueError, match="need codes longer"):
            code_lengths(np.array(w), cap)
        return
    n = code_lengths(np.array(w), cap)
    best = min(sum(a * b for a, b in zip(w, ls)) for ls in itertools.product(range(1, cap + 1), repeat=len(w))
               if sum(2.0 ** -x for x in ls) <= 1)
    assert n.max() <= cap and kraft_ok(n) and int((n.astype(np.int64) * np.array(w)).sum()) == best


def test_fibonacci_frequencies_are_capped() -> None:
    """Fibonacci weights make the deepest Huffman tree (depth n - 1); the cap holds at 24."""
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    n = code_lengths(np.array(fib), 24)
    assert n.max() == 24 and kraft_ok(n)
    assert code_lengths(np.array(fib), 64).max() == 39


def test_canonical_codes_are_prefix_free_and_ordered() -> None:
    n = code_lengths(np.bincount(np.random.default_rng(0).geometric(0.3, 5000), minlength=256))
    codes, syms, _, _ = canonical(n)
    words = [format(int(codes[s]), f"0{n[s]}b") for s in syms]
    assert words == sorted(words)  # canonical: ordered by (length, symbol) and by code
    assert not any(b.startswith(a) for a, b in itertools.combinations(words, 2))


def test_split_and_sign_mantissa_byte() -> None:
    e, sm = split(np.array([-1.5, 2.0**-130], np.float32).astype(BF16))
    assert e.tolist() == [127, 0] and sm.tolist() == [0x80 | 0x40, 0x08]


# -- errors -----------------------------------------------------------------------------------
def test_corrupt_inputs_raise() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 100)) * 0.02).astype(BF16)
    stream, offsets, lengths, sm = encode(x, 64)
    with pytest.raises(ValueError, match="Kraft"):
        decode(stream, offsets, np.full(256, 1, np.uint8), sm, 64)
    with pytest.raises(ValueError, match="at most 32"):
        decode(stream, offsets, np.full(256, 40, np.uint8), sm, 64)
    with pytest.raises(ValueError, match="offsets"):
        decode(stream, offsets[:-1], lengths, sm, 64)
    with pytest.raises(ValueError, match="outside the stream"):
        decode(stream, offsets + 10**9, lengths, sm, 64)
    with pytest.raises(ValueError, match="corrupt"):
        decode(stream[: len(stream) // 2], np.minimum(offsets, 8 * (len(stream) // 2)), lengths, sm, 64)
    with pytest.raises(ValueError, match="corrupt"):
        decode(stream, np.roll(offsets, 1), lengths, sm, 64)


def test_infer_names_the_mismatch() -> None:
    u8, i64 = DTYPES["u8"], DTYPES["i64"]
    t = lambda dt, *s: ir.TensorType(dt, s)  # noqa: E731
    attrs = OP.normalize_attrs({"block": 4})
    with pytest.raises(ValueError, match=r"offsets i64\[2\] must be i64\[3\]"):
        OP.infer([t(u8, 9), t(i64, 2), t(u8, 256), t(u8, 2, 5)], attrs)
    with pytest.raises(ValueError, match=r"lengths must be u8\[256\]"):
        OP.infer([t(u8, 9), t(i64, 3), t(u8, 255), t(u8, 2, 5)], attrs)
    with pytest.raises(ValueError, match=r"block = 0 is outside \[1, "):
        OP.infer([t(u8, 9), t(i64, 3), t(u8, 256), t(u8, 2, 5)], OP.normalize_attrs({"block": 0}))
    with pytest.raises(ValueError, match="static u8"):
        OP.infer([t(u8, 9), t(i64, 3), t(u8, 256), t(u8, 2, "s0")], attrs)
