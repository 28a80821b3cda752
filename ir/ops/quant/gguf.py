"""GGUF (llama.cpp) block quantization: a weight's rows exactly as a .gguf file stores them.

A row of K weights is K / elements-per-block blocks laid end to end; every block holds its own f16
scale(s) and packed codes. `dequantize` is the decoder, bit-identical to `gguf.quants.dequantize`
(same f32 operations in the same order, so even NaN payloads agree); `unpack_blocks` gives the same
weights as integer codes and per-sub-block f32 scales for kernels that multiply by codes.

Layouts (little-endian; d, m, dmin are f16; "nibbles" = 16 bytes whose low nibbles are elements
0..15 of the 32 and high nibbles 16..31):
    q4_0  d, nibbles                                  w = d * (nibble - 8)
    q4_1  d, m, nibbles                               w = d * nibble + m
    q5_0  d, qh: u32 (bit j = 5th bit of element j), nibbles   w = d * ((nibble | bit << 4) - 16)
    q5_1  d, m, qh, nibbles                           w = d * (nibble | bit << 4) + m
    q8_0  d, 32 x i8                                  w = d * q
    q4_k  d, dmin, 12 bytes of 6-bit (sc, m) x 8, 4 x (32 bytes: low nibbles = sub-block 2i,
          high = 2i + 1)                              w = (d * sc) * q - (dmin * m)
    q5_k  as q4_k, plus qh: 32 bytes between the scales and the nibbles, bit j of byte l = 5th bit
          of element l of sub-block j                 w = (d * sc) * q - (dmin * m)
    q6_k  ql: 128 bytes, qh: 64 bytes, 16 x i8 scales, d; per half h of 128 elements, element p
          has low 4 bits from ql[64h + p % 64] >> 4 * (p // 64) and high 2 bits from
          qh[32h + p % 32] >> 2 * (p // 32)           w = (d * scale[p // 16]) * (q - 32)
"""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op

# type -> (elements per block, bytes per block)
BLOCKS: dict[str, tuple[int, int]] = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "q8_0": (32, 34),
    "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210),
}
# elements that share one scale (and offset): a sub-block. Q6_K scales 16 elements, the rest 32.
SUB_BLOCK: dict[str, int] = {t: 16 if t == "q6_k" else 32 for t in BLOCKS}
# types whose offset gguf *adds* (w = d * q + m); the K-quants subtract theirs (w = d*sc*q - dmin*m)
_ADDS_OFFSET = ("q4_1", "q5_1")


def check_blocks(qtype: str, cols: int, row_bytes: int) -> None:
    """ValueError unless `row_bytes` is exactly the bytes of `cols` elements of `qtype`."""
    need(qtype in BLOCKS, f"dequant_gguf: unknown GGUF type {qtype!r}; supported: {', '.join(BLOCKS)}")
    elems, nbytes = BLOCKS[qtype]
    need(cols > 0 and cols % elems == 0,
         f"dequant_gguf: cols = {cols} must be a positive multiple of {qtype}'s {elems} elements per block")
    need(row_bytes == cols // elems * nbytes,
         f"dequant_gguf: {cols} columns of {qtype} take {cols // elems} blocks of {nbytes} bytes = "
         f"{cols // elems * nbytes} bytes a row, got {row_bytes}")


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    """The f16 at byte `at` of every block, widened exactly to f32: [N, nb]."""
    return np.ascontiguousarray(b[..., at:at + 2]).view("<f2")[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., n] bytes -> [..., 2n] codes: the n low nibbles, then the n high ones."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh: np.ndarray, count: int) -> np.ndarray:
    """[..., n] bytes -> [..., count, n]: bit j of each byte in row j (0 or 1)."""
    return (qh[..., None, :] >> np.arange(count, dtype=np.uint8)[:, None]) & 1


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes -> the 8 sub-blocks' 6-bit (sc, m), each [..., 8] u8.
    Sub-blocks 0-3 sit in the low 6 bits of bytes 0-3 (sc) and 4-7 (m); 4-7 take their low 4
    bits from the nibbles of bytes 8-11 and their high 2 bits from the top of bytes 0-3 / 4-7."""
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, m


def unpack_blocks(blocks: np.ndarray, qtype: str, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """u8 [N, row_bytes] -> (q, scale, minus), every sub-block of S = SUB_BLOCK[qtype] elements as

        w[n, i] = q[n, i] * scale[n, i // S] - minus[n, i // S]      (in f32; no minus: q * scale)

    q: i8 [N, cols] (q4_0: nibble - 8, q5_0: 5 bits - 16, q8_0: as stored, q6_k: 6 bits - 32;
    q4_1/q5_1/q4_k/q5_k: the unsigned code). scale: f32 [N, cols / S], d (legacy types) or the f32
    product d * sc (K-quants), exactly the factor gguf multiplies q by. minus: f32 [N, cols / S]
    or None: dmin * m (K-quants, subtracted as gguf does) and -m (q4_1/q5_1, whose m gguf adds;
    q * scale - (-m) equals gguf's q * scale + m bit for bit except the sign of a NaN m).
    """
    check_blocks(qtype, cols, blocks.shape[-1])
    with np.errstate(all="ignore"):  # inf * 0 and NaN scales are IEEE results here, as in gguf
        return _unpack(blocks, qtype, cols)


def _unpack(blocks: np.ndarray, qtype: str, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    elems, nbytes = BLOCKS[qtype]
    N = blocks.shape[0]
    nb = cols // elems
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(N, nb, nbytes)
    minus = None
    if qtype == "q8_0":
        q, scale = b[..., 2:].view(np.int8), _f16(b, 0)
    elif qtype in ("q4_0", "q4_1"):
        off = 4 if qtype == "q4_1" else 2
        q, scale = _nibbles(b[..., off:]).view(np.int8), _f16(b, 0)
        if qtype == "q4_1":
            minus = -_f16(b, 2)
        else:
            q = q - np.int8(8)
    elif qtype in ("q5_0", "q5_1"):
        off = 4 if qtype == "q5_1" else 2
        high = _bits(b[..., off:off + 4], 8).transpose(0, 1, 3, 2).reshape(N, nb, 32)  # bit j of the LE u32
        q, scale = (_nibbles(b[..., off + 4:]) | (high << 4)).view(np.int8), _f16(b, 0)
        if qtype == "q5_1":
            minus = -_f16(b, 2)
        else:
            q = q - np.int8(16)
    elif qtype in ("q4_k", "q5_k"):
        sc, m = _k_scales(b[..., 4:16])
        qs = b[..., 16:] if qtype == "q4_k" else b[..., 48:]
        q = _nibbles(qs.reshape(N, nb, 4, 32)).reshape(N, nb, 8, 32)  # 4 x (low: 2i, high: 2i + 1)
        if qtype == "q5_k":
            q = q | (_bits(b[..., 16:48], 8) << 4)
        q = q.view(np.int8)
        scale = _f16(b, 0)[..., None] * sc.astype(np.float32)
        minus = _f16(b, 2)[..., None] * m.astype(np.float32)
    else:  # q6_k
        ql, qh = b[..., :128].reshape(N, nb, 2, 64), b[..., 128:192].reshape(N, nb, 2, 32)
        low = _nibbles(ql)  # [N, nb, 2, 128]
        high = ((qh[..., None, :] >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3).reshape(N, nb, 2, 128)
        q = (low | (high << 4)).view(np.int8) - np.int8(32)
        scale = _f16(b, 208)[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
    S = SUB_BLOCK[qtype]
    return (q.reshape(N, cols), scale.reshape(N, cols // S),
            None if minus is None else minus.reshape(N, cols // S))


def dequantize(blocks: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """u8 [N, row_bytes] GGUF rows -> f32 [N, cols], bit for bit `gguf.quants.dequantize`."""
    q, scale, minus = unpack_blocks(blocks, qtype, cols)
    N, S = q.shape[0], SUB_BLOCK[qtype]
    with np.errstate(all="ignore"):
        w = q.reshape(N, cols // S, S).astype(np.float32) * scale[..., None]
        if minus is not None:  # gguf's own operation: m added (-(-m) is m bit for bit), dmin * m subtracted
            w = w + (-minus)[..., None] if qtype in _ADDS_OFFSET else w - minus[..., None]
    return w.reshape(N, cols)


@register_op
class DequantGGUF(OpDef):
    name = "dequant_gguf"
    operands = ("blocks",)
    attrs = {"type": Attr("str"), "cols": Attr("int", bounds=COUNT)}
    doc = ("W[N, cols] from GGUF rows u8[N, row_bytes] stored as llama.cpp does, decoded bit for bit as "
           "gguf.quants.dequantize; type: " + ", ".join(BLOCKS))

    def infer(self, ins, attrs):
        t = ins[0]
        need(t.dtype.name == "u8" and t.rank == 2 and isinstance(t.shape[1], int),
             f"dequant_gguf: blocks must be u8[N, row_bytes] with a static row length, got {t}")
        check_blocks(attrs["type"], attrs["cols"], t.shape[1])  # type: ignore[arg-type]
        return TensorType(DTYPES["f32"], (t.shape[0], attrs["cols"]))

    def reference(self, ins, attrs):
        return dequantize(ins[0], attrs["type"], attrs["cols"])
