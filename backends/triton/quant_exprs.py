"""Weight decoders of the other quantization methods, as Triton expressions at coordinates.

Like `dequant_planes` (exprs.py), each one is inlined into its users' weight loads (the matmul's K
loop), so the codes are decoded in registers tile by tile and the f32 weight never exists in memory.
Each follows its op's NumPy reference (ir/ops/quant/*.py) step by step, in the same f32 arithmetic:

    dequant_affine    (q - zero[o, g]) * scale[o, g]                  g = i // group
    dequant_codebook  book[o, codes[o, i]]                            a load at a computed column
    dequant_shift     (sign == 1 ? -scale : scale) * 2^-p             sign = code >> (bits - 1)
    dequant_pow       sign(q) |q|^alpha (rounded to f32) * scale
    dequant_bfp       mant * 2^exp[o, i // block]

Powers of two are built from their bits (exact for every exponent down to the subnormal 2^-149,
on any hardware), so `x * 2^e` is one correctly rounded multiply: np.ldexp's result. Group indices
use `//` only on coordinates (never negative); codes are widened to i32 before any shift or mask.
Every decoder is bit-exact against its reference, except dequant_pow's levels for codes wider than
5 bits with a non-integer alpha: exp2(alpha * log2|q|) in f32, a few f32 ulps (< 4e-6 relative) from
the reference's f64 pow (narrower codes pick the reference's own f32 levels from a short table).

`add_sparse` is not here: an element's value depends on whether its flat index is in a sorted
sparse list, which is a search per element, not a value at coordinates.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ir.dtypes import DType

from .exprs import _round_to, compute_type, emitter

if TYPE_CHECKING:
    from .builder import KernelBuilder


def _finish(b: "KernelBuilder", v: str, dt: DType) -> str:
    """An f32 value as the reference's `.astype(dt)` gives it, in dt's compute type."""
    if dt.name == "f16":
        return _round_to(b, v, dt)
    if dt.name == "bf16":
        return _round_bf16(b, v)
    if dt.name == "f32":
        return v
    if dt.name == "f64":
        return b.t(f"{v}.to(tl.float64)")
    if dt.kind == "bool":
        return b.t(f"{v} != 0")
    if dt.bits < 32:  # NumPy's float -> narrow int goes through int32 and wraps
        return b.t(f"{v}.to(tl.int32).to({compute_type(dt)})")
    return b.t(f"{v}.to({compute_type(dt)})")


def _round_bf16(b: "KernelBuilder", v: str) -> str:
    """f32 -> bf16 -> f32, rounding to nearest even on the bits (as ml_dtypes and cvt.rn.bf16.f32 do).
    Not `.to(tl.bfloat16)`: Triton's interpreter truncates there, so its results would differ from
    the reference by an ulp; this form is exact on both. NaN stays NaN; the largest values round to inf."""
    u = b.t(f"{v}.to(tl.int32, bitcast=True)")
    r = b.t(f"(({u} + (0x7FFF + (({u} >> 16) & 1))) & -65536).to(tl.float32, bitcast=True)")
    return b.t(f"tl.where({v} != {v}, {v}, {r})")


def _to_f32(b: "KernelBuilder", q: str) -> str:
    """Integer codes as float32, rounded once as NumPy's astype(float32)."""
    return b.t(f"{q}.to(tl.float32)")


def _f32(b: "KernelBuilder", ref: str, coords: list[str], mask: str) -> str:
    """A float operand (scale, zero, table) as the reference reads it: astype(float32). f16 / bf16
    load widened already (exactly); f64 rounds."""
    v = b.value(ref, coords, mask)
    return b.t(f"{v}.to(tl.float32)") if b.type_of(ref).dtype.name == "f64" else v


def _group(coord: str, group: int) -> str:
    """The column group of input column `coord` (>= 0). A group wider than the row is group 0, which
    `i // group` gives too (expand_groups repeats its one value over the row)."""
    return coord if group == 1 else f"({coord} // {group})"


def _pow2(b: "KernelBuilder", e: str) -> str:
    """2^e as an exact f32, for an int32 tensor e in [-149, 127]: the exponent field for normal
    numbers, the mantissa bit for subnormals (e < -126). Shift counts are clamped, never UB."""
    normal = f"(({e} + 127) << 23)"
    sub = f"(1 << tl.minimum(tl.maximum({e} + 149, 0), 22))"
    return b.t(f"tl.where({e} >= -126, {normal}, {sub}).to(tl.float32, bitcast=True)")


@emitter("dequant_affine")
def _dequant_affine(b, n, coords, mask):
    """W[o, i] = (f32(q[o, i]) - zero[o, g]) * scale[o, g] in f32, then dtype (affine.py)."""
    g = _group(coords[1], n.attrs["group"])
    q = _to_f32(b, b.value(n.operands[0], coords, mask))
    s = _f32(b, n.operands[1], [coords[0], g], mask)
    if len(n.operands) == 3:
        z = _f32(b, n.operands[2], [coords[0], g], mask)
        w = b.t(f"({q} - {z}) * {s}")
    else:
        w = b.t(f"{q} * {s}")
    return _finish(b, w, n.type.dtype)


@emitter("dequant_codebook")
def _dequant_codebook(b, n, coords, mask):
    """W[o, i] = book[o, codes[o, i]] (codebook.py): the code is the column of a second load."""
    c_t, book_t = b.type_of(n.operands[0]), b.type_of(n.operands[1])
    code = b.t(f"{b.value(n.operands[0], coords, mask)}.to(tl.int32)")
    size = book_t.shape[1]
    # a sub-byte code lives in a whole byte: never read past its row's table (the reference raises there)
    m = mask if 2 ** c_t.dtype.bits >= 256 else f"({mask}) & ({code} < {size})"
    w = _f32(b, n.operands[1], [coords[0], code], m)
    return _finish(b, w, n.type.dtype)


@emitter("dequant_shift")
def _dequant_shift(b, n, coords, mask):
    """W[o, i] = ldexp(sign == 1 ? -s : s, -p), sign = c >> (bits-1), p = c & (2^(bits-1) - 1) with
    c = int32(code) (shift.py). A code with bits set above `bits` has sign > 1: positive, as there."""
    bits = n.attrs["bits"]
    c = b.t(f"{b.value(n.operands[0], coords, mask)}.to(tl.int32)")
    sign = b.t(f"{c} >> {bits - 1}")
    p = b.t(f"{c} & {(1 << (bits - 1)) - 1}")  # 0 .. 127: 2^-p is at least the subnormal 2^-127
    s = _f32(b, n.operands[1], [coords[0], _group(coords[1], n.attrs["group"])], mask)
    w = b.t(f"tl.where({sign} == 1, -{s}, {s}) * {_pow2(b, f'(-{p})')}")
    return _finish(b, w, n.type.dtype)


def _levels(b: "KernelBuilder", q: str, dt: DType, alpha: float) -> str:
    """sign(q) * |q|^alpha as power.py's pow_levels gives it (f64, rounded to f32)."""
    from ir.ops.quant.power import pow_levels

    qf = _to_f32(b, q)
    if alpha == 1.0:  # pow_levels is f32(q) exactly
        return qf
    lo, hi = (dt.lo, dt.hi) if dt.packed else (-(1 << (dt.bits - 1)), (1 << (dt.bits - 1)) - 1)
    top = max(-lo, hi)  # the largest |q|
    m = b.t(f"tl.abs({qf})")  # exact: |q| <= 2^(bits-1) is an f32 integer for bits <= 24
    if alpha.is_integer() and alpha <= 8 and dt.bits <= 16 and float(top) ** alpha < 2**24:
        # every partial product is an integer below 2^24: exact in f32, as f64 rounded to f32
        mag = b.t(" * ".join([m] * int(alpha)))
    elif top <= 16:
        # few levels (2..5-bit codes): the reference's own values, picked by |q|
        lv = pow_levels(np.arange(top + 1), alpha)
        mag = "0.0"
        for k in range(1, top + 1):
            mag = f"tl.where({m} == {k}.0, {float(lv[k])!r}, {mag})"
        mag = b.t(mag)
    else:
        # wider codes: exp2(alpha * log2|q|) in f32, within a few ulps of the reference's levels
        mag = b.t(f"tl.where({m} == 0.0, 0.0, tl.exp2({alpha!r} * tl.log2(tl.maximum({m}, 1.0))))")
    return b.t(f"tl.where({qf} < 0.0, -{mag}, {mag})")


@emitter("dequant_pow")
def _dequant_pow(b, n, coords, mask):
    """W[o, i] = f32(sign(q) |q|^alpha) * scale[o, g] (power.py)."""
    q_t = b.type_of(n.operands[0])
    lv = _levels(b, b.value(n.operands[0], coords, mask), q_t.dtype, n.attrs["alpha"])
    s = _f32(b, n.operands[1], [coords[0], _group(coords[1], n.attrs["group"])], mask)
    return _finish(b, b.t(f"{lv} * {s}"), n.type.dtype)


@emitter("dequant_bfp")
def _dequant_bfp(b, n, coords, mask):
    """W[o, i] = ldexp(f32(mant[o, i]), exp[o, i // block]) (bfp.py); exp is i8, so 2^exp is exact."""
    m = _to_f32(b, b.value(n.operands[0], coords, mask))
    e = b.t(f"{b.value(n.operands[1], [coords[0], _group(coords[1], n.attrs['block'])], mask)}.to(tl.int32)")
    return _finish(b, b.t(f"{m} * {_pow2(b, e)}"), n.type.dtype)
