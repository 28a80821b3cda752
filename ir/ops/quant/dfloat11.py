"""DFloat11 (Zhang et al. 2025): bf16 weights stored losslessly with Huffman-coded exponents.

A bf16 value is sign(1) | exponent(8) | mantissa(7). Trained weights use few exponents, so the
exponent byte carries about 2.6 bits of information. The format keeps sign and mantissa raw, one
byte per weight (`sm = sign << 7 | mantissa`), and codes the exponents with a canonical Huffman
code whose table is just the code length of each of the 256 exponents (`lengths`, 0 = unused).

The bit stream is MSB-first. Weights are coded in row-major order, in blocks of `block` symbols;
`offsets[b]` is the bit where block b starts, so blocks decode independently (in parallel: the
decoder below steps through the positions of a block, vectorised over all blocks, as a GPU kernel
gives each block a thread). Canonical code: symbols sorted by (length, exponent) take consecutive
codes, each code 1 + the previous one shifted left by the length difference (RFC 1951, 3.2.2).

This file is the whole format: `encode` / `decode` and the length-limited code construction. The
decoded weights are bit-identical to the encoded ones (NaN payloads, infinities, -0 and subnormals
included): `decode(*encode(x, block), block).view(u16) == x.view(u16)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op

MAX_LEN = 24  # longest code the encoder makes; the decoder reads any code of up to 32 bits
LUT_BITS = 12  # the decoder's first-level table: codes of up to 12 bits decode with one lookup
BF16 = np.dtype(ml_dtypes.bfloat16)


# -- the code ---------------------------------------------------------------------------------
def code_lengths(hist: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Optimal prefix-code lengths (u8, one per symbol) for a histogram, none longer than `max_len`.

    Package-merge (Larmore & Hirschberg 1990): the cheapest set of 2n - 2 "coins" taken from
    `max_len` denominations; a symbol's length is how many chosen items hold it. Without a binding
    cap this is Huffman's cost exactly. One used symbol gets a 1-bit code (a 0-bit code would need
    a special case in every decoder); no used symbol gives all zeros.
    """
    hist = np.asarray(hist, np.int64)
    used = np.flatnonzero(hist)
    out = np.zeros(len(hist), np.uint8)
    if len(used) <= 1:
        out[used] = 1
        return out
    if (1 << max_len) < len(used):
        raise ValueError(f"{len(used)} symbols need codes longer than max_len={max_len}")
    used = used[np.argsort(hist[used], kind="stable")]  # leaves, cheapest first
    leaf_w, leaf_c = hist[used], np.eye(len(used), dtype=np.int32)  # weight, how often each symbol is in it
    items_w, items_c = leaf_w, leaf_c
    for _ in range(max_len - 1):
        m = len(items_w) // 2 * 2  # package adjacent pairs of the cheapest items, merge with the leaves
        all_w = np.concatenate([leaf_w, items_w[0:m:2] + items_w[1:m:2]])
        all_c = np.concatenate([leaf_c, items_c[0:m:2] + items_c[1:m:2]])
        order = np.argsort(all_w, kind="stable")
        items_w, items_c = all_w[order], all_c[order]
    out[used] = items_c[: 2 * len(used) - 2].sum(axis=0)
    return out


def canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes u32[256], symbols by code, first code and symbols before, by length 0..max).

    Raises ValueError for lengths over 32 or over-full (Kraft sum > 1) tables."""
    lengths = np.asarray(lengths)
    need(lengths.shape == (256,), f"dfloat11: lengths must be u8[256], got shape {list(lengths.shape)}")
    top = int(lengths.max(initial=0))
    need(top <= 32, f"dfloat11: code lengths are at most 32 bits, got {top}")
    count = np.bincount(lengths, minlength=top + 1).astype(np.int64)
    count[0] = 0
    need(sum(int(c) << (top - n) for n, c in enumerate(count)) <= 1 << top,
         "dfloat11: code lengths over-full the code space (Kraft sum > 1); the table is corrupt")
    first = np.zeros(top + 1, np.int64)
    for n in range(1, top + 1):
        first[n] = (first[n - 1] + count[n - 1]) << 1
    syms = np.lexsort((np.arange(256), lengths))[256 - int(count.sum()):]  # used, by (length, symbol)
    before = np.concatenate([[0], np.cumsum(count)[:-1]])  # symbols with shorter codes
    codes = np.zeros(256, np.uint32)
    codes[syms] = first[lengths[syms]] + np.arange(len(syms)) - before[lengths[syms]]
    return codes, syms, first, before


# -- bf16 bits --------------------------------------------------------------------------------
def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bf16 array -> (exponent bytes, sign|mantissa bytes), both u8 of x's shape."""
    b = np.ascontiguousarray(x, BF16).view(np.uint16)
    return ((b >> 7) & 0xFF).astype(np.uint8), (((b >> 8) & 0x80) | (b & 0x7F)).astype(np.uint8)


def join(exp: np.ndarray, sm: np.ndarray) -> np.ndarray:
    sm16 = sm.astype(np.uint16)
    return (((sm16 & 0x80) << 8) | (exp.astype(np.uint16) << 7) | (sm16 & 0x7F)).view(BF16)


# -- encode / decode --------------------------------------------------------------------------
def encode(x: np.ndarray, block: int = 1024, lengths: np.ndarray | None = None,
           max_len: int = MAX_LEN, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """bf16 array -> (stream u8, offsets i64[nblocks], lengths u8[256], sm u8[x.shape]).
    The code is built from x's own exponent histogram unless `lengths` is given."""
    exp, sm = split(x)
    exp = exp.reshape(-1)
    if lengths is None:
        lengths = code_lengths(np.bincount(exp, minlength=256), max_len)
    codes, _, _, _ = canonical(lengths)
    n = lengths[exp].astype(np.int64)
    need(bool(n.all()), "dfloat11: the code has no entry for an exponent of the weights")
    starts = np.cumsum(n) - n
    bits = np.zeros(int(starts[-1] + n[-1]) if len(n) else 0, np.uint8)
    for lo in range(0, len(n), chunk):  # chunks keep the temporaries in cache
        s, m = starts[lo : lo + chunk], n[lo : lo + chunk]
        # every bit of the chunk: its code, left-aligned in 32 bits, shifted by the bit's place in it
        left = np.repeat(codes[exp[lo : lo + chunk]] << (32 - m).astype(np.uint32), m)
        place = (np.arange(len(left), dtype=np.int64) - np.repeat(s - s[0], m)).astype(np.uint32)
        bits[s[0] : s[0] + len(left)] = (left << place) >> np.uint32(31)
    return np.packbits(bits), starts[::block].copy(), lengths.astype(np.uint8), sm


@dataclass(frozen=True)
class Tables:
    """What a decoder needs besides the stream, from the code lengths alone: codes of up to k bits
    decode by one lookup in `lut` (2^k entries of length << 8 | symbol; length 0: a longer code);
    a longer code's length is the first n with limits[n - 1] > its top `top` bits, its symbol
    syms[before[n] + code - first[n]]."""
    top: int  # the longest code
    k: int  # min(top, lut_bits)
    lut: np.ndarray  # u16[2^k]
    limits: np.ndarray  # i64[top]: (first[n] + count[n]) << (top - n), by length n = 1..top
    syms: np.ndarray  # the used symbols by (length, symbol)
    first: np.ndarray  # i64[top + 1]: the first code of each length
    before: np.ndarray  # i64[top + 1]: how many symbols have shorter codes


def tables(lengths: np.ndarray, lut_bits: int = LUT_BITS) -> Tables:
    """The decoding tables of a code (ValueError for an empty or corrupt one)."""
    _, syms, first, before = canonical(lengths)
    top = len(first) - 1
    need(top > 0, "dfloat11: the code table is empty but there are weights to decode")
    k = min(top, lut_bits)
    short = syms[lengths[syms] <= k]
    reps = 1 << (k - lengths[short].astype(np.int64))
    lut = np.zeros(1 << k, np.uint16)  # canonical codes of up to k bits fill the table from 0
    lut[: reps.sum()] = np.repeat(short.astype(np.uint16) | (lengths[short].astype(np.uint16) << 8), reps)
    count = np.diff(np.append(before, len(syms)))
    limits = ((first + count) << np.arange(top, -1, -1))[1:]
    return Tables(top, k, lut, limits.astype(np.int64), syms, first, before.astype(np.int64))


def decode(stream: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, sm: np.ndarray, block: int,
           lut_bits: int = LUT_BITS) -> np.ndarray:
    """The inverse of `encode`: all blocks at once, one NumPy step per position within a block.

    Each step reads the `top` bits at every block's cursor (a 64-bit big-endian word at the
    cursor's byte, shifted by its bit). Codes of up to k = min(top, lut_bits) bits decode by one
    lookup in a 2^k table of (length << 8 | symbol); longer ones (length 0 in the table) by the
    canonical rule: the length is the first n whose limit (first[n] + count[n]) << (top - n)
    exceeds the window, the symbol syms[before[n] + code - first[n]]. Raises ValueError on a
    corrupt stream (an unassigned code, a block that does not end where the next one starts)."""
    size = sm.size
    nblocks = -(-size // block)
    need(offsets.shape == (nblocks,), f"dfloat11: {size} weights in blocks of {block} need {nblocks} offsets, "
                                      f"got {list(offsets.shape)}")
    if size == 0:
        return np.zeros(sm.shape, BF16)
    t = tables(lengths, lut_bits)
    top, k, lut, limits, syms, first, before = t.top, t.k, t.lut, t.limits, t.syms, t.first, t.before
    nbits = 8 * len(stream)
    need(bool(((offsets >= 0) & (offsets <= nbits)).all()), "dfloat11: a block offset lies outside the stream")
    padded = np.concatenate([np.asarray(stream, np.uint8), np.zeros(8, np.uint8)])
    words = np.zeros(len(stream) + 1, np.uint64)  # words[i]: the 8 bytes from byte i, big-endian
    for i in range(8):
        words = (words << np.uint64(8)) | padded[i : i + len(words)]
    limits = limits.astype(np.uint64)
    out = np.empty((block, nblocks), np.uint8)
    cur = offsets.astype(np.uint64)
    last = size - (nblocks - 1) * block  # the last block may be short
    u3, u7, u8, to_k, to_top = np.uint64(3), np.uint64(7), np.uint16(8), np.uint64(64 - k), np.uint64(64 - top)
    try:
        for j in range(block):
            lanes = nblocks if j < last else nblocks - 1
            if lanes == 0:
                break
            c = cur[:lanes]
            w = words[c >> u3] << (c & u7)
            e = lut[w >> to_k]
            n = e >> u8
            if not n.all():
                long_ = np.flatnonzero(n == 0)
                v = w[long_] >> to_top
                ln = np.searchsorted(limits, v, side="right") + 1
                need(bool((ln <= top).all()), "dfloat11: the stream holds a code the table does not; it is corrupt")
                e[long_] = syms[before[ln] + (v >> (top - ln).astype(np.uint64)).astype(np.int64) - first[ln]]
                n[long_] = ln
            out[j, :lanes] = e  # the low byte: the symbol
            c += n
    except IndexError:
        raise ValueError("dfloat11: a block runs off the end of the stream; stream or offsets are corrupt") from None
    need(bool((cur[:-1].astype(np.int64) == offsets[1:]).all()) and int(cur[-1]) <= nbits,
         "dfloat11: the blocks do not end where the offsets say; stream, offsets or lengths are corrupt")
    return join(out.T.reshape(-1)[:size].reshape(sm.shape), sm)


@register_op
class DFloat11Decode(OpDef):
    name = "dfloat11_decode"
    operands = ("stream", "offsets", "lengths", "sm")
    attrs = {"block": Attr("int", bounds=COUNT)}
    doc = ("bf16 W = sign|exponent|mantissa with sm = sign<<7|mantissa and the exponents canonical-Huffman "
           "coded (MSB first, code lengths per exponent in lengths) in blocks of `block` weights, row-major, "
           "block b starting at bit offsets[b]; lossless")

    def infer(self, ins, attrs):
        stream, offsets, lengths, sm = ins
        b = attrs["block"]
        need(b >= 1, f"dfloat11_decode: block must be >= 1, got {b}")
        u8 = DTYPES["u8"]
        need(stream.dtype == u8 and stream.rank == 1, f"dfloat11_decode: stream must be u8[nbytes], got {stream}")
        need(lengths.dtype == u8 and lengths.shape == (256,), f"dfloat11_decode: lengths must be u8[256], got {lengths}")
        need(sm.dtype == u8 and sm.is_static, f"dfloat11_decode: sm must be a static u8 tensor, got {sm}")
        nblocks = -(-int(sm.numel()) // b)
        need(offsets.dtype == DTYPES["i64"] and offsets.shape == (nblocks,),
             f"dfloat11_decode: offsets {offsets} must be i64[{nblocks}] for {sm} in blocks of {b}")
        return TensorType(DTYPES["bf16"], sm.shape)

    def reference(self, ins, attrs):
        return decode(*ins, attrs["block"])
