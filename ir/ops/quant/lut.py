"""Lookup-table linear layers (T-MAC): weights as 0/1 bit-planes, multiplied by table lookup.

A low-bit weight is rewritten (by the layout pass `pack_lut`) as a sum of bit-planes B_p in {0, 1}
with a coefficient per (plane, column group, row), plus an offset per (group, row):

    y[n, o] = sum_p sum_g coef[p, g, o] * (sum_{i in g} B_p[o, i] x[n, i])
            + sum_g offs[g, o] * (sum_{i in g} x[n, i]) + bias[o]

A trit-plane T = B+ - B- is two bit-planes with coefficients +alpha and -alpha; an unsigned b-bit
code q = sum_b 2^b B_b is b planes with coefficients scale * 2^b and offset -scale * zero.

The inner sums are read from tables: for every 4 activations x[4j..4j+3] (zero-padded past `cols`)
the 16 partial sums T_j[m] = sum_c bit_c(m) x[4j+c], so four weights' contribution is one lookup
T_j[nibble]. One table serves every plane and every row. With `table = "i8"` the tables are
quantized as T-MAC does: per block of `tgroup` activations, s = max|T| / 127 and qT = rint(T / s),
and a block's lookups are summed as integers before they are scaled (a relative error of about
1e-2 on a layer's output); `table = "i16"` does the same with 32767 levels (about 1e-5; the
kernels look its low and high bytes up separately); `table = "f32"` keeps the tables exact.

Packed layout (what the CPU kernels read, tiles of 64 rows, tables in pairs): bits[p, t, k, b] for
pair k (tables 2k and 2k+1; an odd last pair's second table is all zero) holds, for row
64t + b (b < 64), the nibble for table 2k in its low four bits and for table 2k+1 in its high
four; the nibble of (row o, table j) is sum_c B_p[o, 4j + c] << c. AVX2 looks both nibbles of 32
rows up with two `pshufb`s and adds the pair with one `pmaddubsw`. Rows and columns past the
matrix are 0 bits.
"""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, Cost, OpDef, need, reads, register_op

TILE = 64  # rows per packed tile: 32 bytes of nibbles, one AVX2 register
TABLES = ("i8", "i16", "f32")
QMAX = {"i8": 127, "i16": 32767}  # levels of the quantized tables


def tiles(out: int) -> int:
    return -(-out // TILE)


def n_tables(cols: int) -> int:
    return -(-cols // 4)


def pairs(cols: int) -> int:
    """Table pairs per row: the packed layout's third dimension."""
    return -(-n_tables(cols) // 2)


def pack_bitplanes(B: np.ndarray) -> np.ndarray:
    """0/1 planes [P, out, cols] -> packed u8 [P, tiles(out), pairs(cols), 64]."""
    P, out, cols = B.shape
    T, K = tiles(out), pairs(cols)
    full = np.zeros((P, T * TILE, K * 8), np.uint8)
    full[:, :out, :cols] = B
    nib = (full.reshape(P, T * TILE, 2 * K, 4) << np.arange(4, dtype=np.uint8)).sum(-1, dtype=np.uint8)
    byte = nib[..., 0::2] | (nib[..., 1::2] << 4)  # [P, rows, K]
    return np.ascontiguousarray(byte.reshape(P, T, TILE, K).transpose(0, 1, 3, 2))


def unpack_nibbles(bits: np.ndarray, out: int) -> np.ndarray:
    """Packed u8 [P, T, K, 64] -> nibbles [P, out, 2K] (row o's index into table j)."""
    P, T, K, _ = bits.shape
    rows = bits.transpose(0, 1, 3, 2).reshape(P, T * TILE, K)[:, :out]
    return np.stack([rows & 0x0F, rows >> 4], axis=-1).reshape(P, out, 2 * K)


def unpack_bitplanes(bits: np.ndarray, out: int, cols: int) -> np.ndarray:
    """The inverse of `pack_bitplanes`: [P, out, cols] of 0/1 (u8)."""
    nib = unpack_nibbles(bits, out)
    B = (nib[..., None] >> np.arange(4, dtype=np.uint8)) & 1  # [P, out, 2K, 4]
    return B.reshape(B.shape[0], out, -1)[:, :, :cols]


def build_tables(X: np.ndarray, cols: int) -> np.ndarray:
    """[N, cols] f32 -> [N, J, 16] f32 tables, T[m] = ((b0 x0 + b1 x1) + b2 x2) + b3 x3 summed
    left to right in f32 over the set bits (the kernels use this order, so int8 tables agree bit for bit)."""
    N, J = X.shape[0], n_tables(cols)
    Xp = np.zeros((N, J * 4), np.float32)
    Xp[:, :cols] = X
    Xp = Xp.reshape(N, J, 4)
    T = np.zeros((N, J, 16), np.float32)
    for m in range(1, 16):  # T[m] = T[m without its highest bit] + x[highest bit]
        high = m.bit_length() - 1
        rest = m ^ (1 << high)
        T[:, :, m] = T[:, :, rest] + Xp[:, :, high] if rest else Xp[:, :, high]
    return T


def quantize_tables(T: np.ndarray, tgroup: int, table: str = "i8") -> tuple[np.ndarray, np.ndarray]:
    """[N, J, 16] f32 -> (integer codes [N, J, 16], f32 scales [N, blocks]) per block of tgroup / 4
    tables: s = max|T| / qmax (1 for an all-zero block, NaN for one with a NaN or inf, whose codes
    are 0), q = clip(rint(T / s), -qmax, qmax); qmax = QMAX[table]."""
    N, J, _ = T.shape
    per = tgroup // 4
    nb = -(-J // per)
    Tp = np.zeros((N, nb * per, 16), np.float32)
    Tp[:, :J] = T
    amax = np.abs(Tp.reshape(N, nb, per * 16)).max(-1)
    with np.errstate(invalid="ignore"):
        s = np.where(amax > 0, amax / np.float32(QMAX[table]), np.float32(1)).astype(np.float32)
        s[~np.isfinite(amax)] = np.nan  # a NaN or inf activation: the block, so the token's outputs, are NaN
        q = np.rint(Tp.reshape(N, nb, per, 16) / s[:, :, None, None])
    q = np.where(np.isfinite(q), q, 0)  # (codes of a NaN block are 0)
    q = np.clip(q, -QMAX[table], QMAX[table]).astype(np.int8 if table == "i8" else np.int16)  # a subnormal s rounds past qmax
    return q.reshape(N, nb * per, 16)[:, :J], s


@register_op
class LutLinear(OpDef):
    name = "lut_linear"
    operands = ("x", "bits", "coef", "offs", "bias?")
    attrs = {"cols": Attr("int", bounds=COUNT), "group": Attr("int", bounds=COUNT), "tgroup": Attr("int", 64), "table": Attr("str", "i8")}
    doc = ("y = sum_p coef[p] * (B_p x) + offs * (group sums of x) + bias, B_p packed 0/1 bit-planes read by "
           "table lookup (T-MAC); table=i8/i16 quantize the tables per tgroup activations; see ir/ops/quant/lut.py")

    def infer(self, ins, attrs):
        x, bits, coef, offs = ins[:4]
        cols, group, tg = attrs["cols"], attrs["group"], attrs["tgroup"]
        need(x.dtype == DTYPES["f32"] and x.rank >= 1 and x.shape[-1] == cols,
             f"lut_linear: x must be f32[..., {cols}], got {x}")
        need(attrs["table"] in TABLES, f"lut_linear: table must be one of {TABLES}, got {attrs['table']!r}")
        need(tg >= 8 and tg % 8 == 0 and tg <= 1024, f"lut_linear: tgroup must be a multiple of 8 in 8..1024, got {tg}")
        need(attrs["table"] != "i16" or tg <= 512, f"lut_linear: i16 tables need tgroup <= 512 (int16 sums), got {tg}")
        need(group >= 1 and (group % tg == 0 or group >= cols),
             f"lut_linear: group {group} must be a multiple of tgroup {tg} (or cover the row, >= {cols})")
        need(bits.dtype == DTYPES["u8"] and bits.rank == 4 and bits.is_static and bits.shape[2:] == (pairs(cols), 64),
             f"lut_linear: bits must be u8[planes, tiles, {pairs(cols)}, 64], got {bits}")
        P, T = bits.shape[:2]
        ng = -(-cols // group)
        need(coef.dtype == DTYPES["f32"] and coef.rank == 3 and coef.shape[:2] == (P, ng),
             f"lut_linear: coef must be f32[{P}, {ng}, out], got {coef}")
        out = coef.shape[2]
        need(tiles(out) == T, f"lut_linear: {T} tiles of {TILE} rows cannot hold {out} rows")  # type: ignore[arg-type]
        need(offs.dtype == DTYPES["f32"] and offs.shape == (ng, out), f"lut_linear: offs must be f32[{ng}, {out}], got {offs}")
        if len(ins) == 5:
            need(ins[4].dtype == DTYPES["f32"] and ins[4].shape == (out,), f"lut_linear: bias must be f32[{out}], got {ins[4]}")
        return TensorType(DTYPES["f32"], (*x.shape[:-1], out))

    def reference(self, ins, attrs):
        x, bits, coef, offs = ins[:4]
        cols, group, tg = attrs["cols"], attrs["group"], attrs["tgroup"]
        P, out = coef.shape[0], coef.shape[2]
        X = x.reshape(-1, cols).astype(np.float32)
        N, J = X.shape[0], n_tables(cols)
        T = build_tables(X, cols)
        per = tg // 4
        nb = -(-J // per)
        blk_group = (np.arange(nb) * tg) // group  # the column group of each table block
        quantized = attrs["table"] in QMAX
        if quantized:
            q, s = quantize_tables(T, tg, attrs["table"])
            T = q.astype(np.float64)
        nib = unpack_nibbles(bits, out)[:, :, :J].astype(np.intp)  # [P, out, J]
        idx = np.arange(J) * 16 + nib
        y = np.zeros((N, out), np.float64)
        for n in range(N):  # per token, so memory stays P x out x J
            part = np.take(T[n].reshape(-1), idx).astype(np.float64)  # [P, out, J]
            part = np.pad(part, ((0, 0), (0, 0), (0, nb * per - J))).reshape(P, out, nb, per).sum(-1)  # [P, out, nb]
            if quantized:
                part = part * s[n]
            y[n] = np.einsum("pob,pbo->o", part, coef[:, blk_group, :].astype(np.float64))
        width = min(group, cols)  # a group wider than the row covers it once (and allocates no more than it)
        Xg = np.zeros((N, -(-cols // group) * width), np.float32)
        Xg[:, :cols] = X
        y += Xg.reshape(N, -1, width).sum(-1, dtype=np.float32).astype(np.float64) @ offs.astype(np.float64)
        if len(ins) == 5:
            y += ins[4]
        return y.astype(np.float32).reshape(*x.shape[:-1], out)

    def cost(self, ins, out, attrs):
        """The reference's work, N tokens, J = ceil(cols / 4) tables, P planes, O rows, nb table blocks of
        tgroup / 4 tables, ng column groups:
            tables      11 * N * J adds (the 15 entries past 0, less the 4 single activations)
            quantize    (i8/i16) 2 per entry (|T| max, T / s rounded): 32 * N * J, and 1 per block for s
            lookups     2 * N * P * O * J: a lookup and an add per (token, plane, row, table); integer
                        for i8/i16 tables, float for f32 ones
            blocks      per (token, plane, row, block): x s (quantized), x coef, + : 3 * N * P * O * nb (f32: 2)
            offsets     N * cols adds (group sums), then 2 * N * ng * O
            bias        N * O
        The packed bit-planes, coef, offs and bias are read once, at their stored bytes."""
        x, bits, coef = ins[0], ins[1], ins[2]
        cols, group, tg = attrs["cols"], attrs["group"], attrs["tgroup"]
        n = x.numel() // cols
        j = n_tables(cols)
        p, o = bits.shape[0], coef.shape[2]
        nb = -(-j // (tg // 4))
        ng = -(-cols // group)
        quantized = attrs["table"] in QMAX
        lookups = 2 * n * p * o * j
        flops = (11 * n * j + ((32 * n * j + n * nb) if quantized else 0) + (0 if quantized else lookups)
                 + (3 if quantized else 2) * n * p * o * nb + n * cols + 2 * n * ng * o + (n * o if len(ins) == 5 else 0))
        return Cost(flops=flops, int_ops=lookups if quantized else 0, reads=reads(ins), writes=out.nbytes())
