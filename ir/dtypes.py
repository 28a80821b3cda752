"""Element types. A dtype is a frozen value; adding a weight encoding is one `DType(...)` line.

Sub-byte dtypes (`bits < 8`) are *storage* encodings: the reference runtime holds their logical
values unpacked in an int8/uint8 array, and `pack`/`unpack` define the byte layout (little-endian
within a byte, packed along the last axis, the last byte zero-padded). Trits are the exception:
five per byte in base 3 (3^5 = 243 <= 256), 1.6 bits each instead of 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    kind: str  # "float", "int", "uint", "bool"
    np_name: str  # numpy dtype that holds the logical values
    lo: int = 0  # value range of sub-byte integer codes (inclusive)
    hi: int = 0

    def __str__(self) -> str:
        return self.name

    @property
    def np(self) -> np.dtype:
        return np.dtype(ml_dtypes.bfloat16) if self.np_name == "bfloat16" else np.dtype(self.np_name)

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def packed(self) -> bool:
        return self.bits < 8


_ALL = [
    DType("f32", 32, "float", "float32"),
    DType("f16", 16, "float", "float16"),
    DType("bf16", 16, "float", "bfloat16"),
    DType("f64", 64, "float", "float64"),
    DType("i64", 64, "int", "int64"),
    DType("i32", 32, "int", "int32"),
    DType("i16", 16, "int", "int16"),
    DType("i8", 8, "int", "int8"),
    DType("u8", 8, "uint", "uint8"),
    DType("bool", 8, "bool", "bool"),
    # Low-bit weight storage. Logical values live in int8/uint8; pack() defines the bytes.
    *(DType(f"i{b}", b, "int", "int8", -(1 << (b - 1)), (1 << (b - 1)) - 1) for b in (7, 6, 5)),
    *(DType(f"u{b}", b, "uint", "uint8", 0, (1 << b) - 1) for b in (7, 6, 5)),
    DType("i4", 4, "int", "int8", -8, 7),
    DType("u4", 4, "uint", "uint8", 0, 15),
    DType("i3", 3, "int", "int8", -4, 3),
    DType("u3", 3, "uint", "uint8", 0, 7),
    DType("i2", 2, "int", "int8", -2, 1),
    DType("u2", 2, "uint", "uint8", 0, 3),
    DType("tern", 2, "int", "int8", -1, 1),  # a trit {-1, 0, 1}, stored five to a byte (see pack)
]
DTYPES: dict[str, DType] = {d.name: d for d in _ALL}
globals().update({f"{d.name}": d for d in _ALL if d.name != "bool"})
bool_ = DTYPES["bool"]


def dtype(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None


def from_numpy(d: np.dtype) -> DType:
    for t in _ALL:
        if not t.packed and t.np == np.dtype(d):
            return t
    raise KeyError(f"numpy dtype {d} has no Tritium dtype")


def pack(values: np.ndarray, dt: DType) -> np.ndarray:
    """Pack logical sub-byte codes along the last axis into uint8, as a little-endian bit stream
    per row (code i occupies bits [i*b, (i+1)*b)); rows are padded to whole bytes. Any width 1..7
    packs this way (3-bit codes too). Exact inverse of `unpack`."""
    assert dt.packed, dt
    v = np.asarray(values)
    if v.size and (v.min() < dt.lo or v.max() > dt.hi):
        raise ValueError(f"values outside [{dt.lo}, {dt.hi}] cannot be stored as {dt}")
    v = v.reshape(v.shape if v.ndim else (1,))
    if dt.name == "tern":
        return _pack_trits(v)
    codes = ((v.astype(np.int16) - (dt.lo if dt.name == "tern" else 0)) & ((1 << dt.bits) - 1)).astype(np.uint8)
    bits = np.unpackbits(codes[..., None], axis=-1, bitorder="little")[..., : dt.bits]  # (..., n, b)
    bits = bits.reshape(v.shape[:-1] + (v.shape[-1] * dt.bits,))
    return np.packbits(bits, axis=-1, bitorder="little")


def packed_len(n: int, dt: DType) -> int:
    """Bytes that `n` codes of `dt` take in one packed row."""
    return -(-n // TRITS_PER_BYTE) if dt.name == "tern" else -(-n * dt.bits // 8)


TRITS_PER_BYTE = 5


def _pack_trits(v: np.ndarray) -> np.ndarray:
    """Trits along the last axis -> bytes sum_i (t_i + 1) 3^i over each run of five (zero-padded)."""
    n = v.shape[-1]
    codes = np.ones(v.shape[:-1] + (packed_len(n, DTYPES["tern"]) * TRITS_PER_BYTE,), np.uint8)  # pad: trit 0
    codes[..., :n] = v + 1
    codes = codes.reshape(v.shape[:-1] + (codes.shape[-1] // TRITS_PER_BYTE, TRITS_PER_BYTE))
    return (codes * (3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint8))).sum(-1, dtype=np.uint8)


def _unpack_trits(data: np.ndarray, n: int) -> np.ndarray:
    data = np.asarray(data, np.uint8)
    if data.size and data.max() >= 3**TRITS_PER_BYTE:
        raise ValueError(f"byte {int(data.max())} is not five base-3 trits (bytes of tern data are < 243)")
    d = data[..., None] // (3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint8)) % 3
    return d.reshape(d.shape[:-2] + (d.shape[-2] * TRITS_PER_BYTE,))[..., :n].astype(np.int8) - 1


def unpack(data: np.ndarray, dt: DType, n: int) -> np.ndarray:
    """Unpack uint8 bytes into `n` logical codes along the last axis."""
    assert dt.packed, dt
    if dt.name == "tern":
        return _unpack_trits(data, n)
    bits = np.unpackbits(np.asarray(data, np.uint8), axis=-1, count=n * dt.bits, bitorder="little")
    bits = bits.reshape(data.shape[:-1] + (n, dt.bits)).astype(np.int16)
    codes = (bits << np.arange(dt.bits, dtype=np.int16)).sum(axis=-1, dtype=np.int16)
    if dt.name == "tern":
        codes = codes + dt.lo
    elif dt.kind == "int":  # two's complement sign extension
        codes = np.where(codes >= (1 << (dt.bits - 1)), codes - (1 << dt.bits), codes)
    return codes.astype(dt.np)
