"""Pointwise ops as Triton expressions at coordinates: the part of kernel generation that fuses.

Every op here is defined by *the value of its result at given coordinates*, computed from its
operands' values at coordinates it derives (broadcast, permuted, sliced, gathered). A kernel asks
`KernelBuilder.value(ref, coords, mask)`: a materialized value is loaded from its buffer; a value the
fusion plan inlined is computed right there by its op's emitter below, recursively. So a chain
`mul(silu(a), b)` becomes one expression, a `dequant_planes` feeding a linear becomes the decode of
each weight tile inside the matmul's K loop, and an `and` of comparisons feeding `sdpa` becomes its
mask, computed per score tile.

Coordinates are Triton integer tensor expressions (or literals), one per dimension of the value;
they may be 1-D blocks, 2-D tiles or scalars: Triton broadcasts them. Floats are computed in f32
(f16/bf16 are loaded and widened, and rounded only where the graph casts or stores them), which is
at least as accurate as the reference's per-op rounding.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import ir
from ir.dtypes import DType
from ir.errors import CompileError

if TYPE_CHECKING:
    from .builder import KernelBuilder

# IR dtype -> the Triton type values are computed in, and the one they are stored as
_COMPUTE = {"f32": "tl.float32", "f16": "tl.float32", "bf16": "tl.float32", "f64": "tl.float64",
            "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
            "bool": "tl.int1"}
_STORAGE = {"f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16", "f64": "tl.float64",
            "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
            "bool": "tl.int1"}


def compute_type(dt: DType) -> str:
    if dt.name in _COMPUTE:
        return _COMPUTE[dt.name]
    if dt.packed:  # sub-byte codes live unpacked in int8 / uint8 (see ir/dtypes.py)
        return "tl.int8" if dt.np_name == "int8" else "tl.uint8"
    raise CompileError(f"dtype {dt.name} has no Triton type (backends/triton/exprs.py)")


def storage_type(dt: DType) -> str:
    if dt.name in _STORAGE:
        return _STORAGE[dt.name]
    return compute_type(dt)


def literal(v: bool | int | float, dt: DType) -> str:
    """A scalar constant of dtype dt, as a 0-d Triton tensor (so `.to()` and broadcasting work). Values
    that may be Python scalars in the interpreter (an int param, a literal coordinate) are converted
    with `tl.cast(v, type)`, never `v.to(type)`."""
    if isinstance(v, bool) or dt.kind == "bool":
        return f"tl.full([], {1 if v else 0}, tl.int1)"
    if dt.is_float:
        f = float(v)
        text = 'float("nan")' if math.isnan(f) else f'float("{"-" if f < 0 else ""}inf")' if math.isinf(f) else repr(f)
        return f"tl.full([], {text}, {compute_type(dt)})"
    return f"tl.full([], {int(v)}, {compute_type(dt)})"


Emitter = Callable[["KernelBuilder", ir.Node, list[str], str], str]
EMITTERS: dict[str, Emitter] = {}
# Ops whose inlining costs (almost) nothing: they read at most one value per element. They are
# inlined even into matmul and attention operands, and wherever they have several users.
CHEAP = {"full", "arange", "expand", "permute", "slice", "cast",
         "dequant_planes", "dequant_affine", "dequant_shift", "dequant_codebook", "dequant_pow", "dequant_bfp"}


def emitter(*names: str) -> Callable[[Emitter], Emitter]:
    def deco(fn: Emitter) -> Emitter:
        for n in names:
            EMITTERS[n] = fn
        return fn
    return deco


def _types(b: "KernelBuilder", n: ir.Node) -> list[ir.TensorType]:
    return [b.type_of(o) for o in n.operands]


def broadcast_coords(coords: list[str], out: tuple, src: tuple) -> list[str]:
    """Coordinates into `src` for an element of `out` that src broadcasts to (NumPy rules)."""
    lead = len(out) - len(src)
    return ["0" if d == 1 and out[lead + i] != 1 else coords[lead + i] for i, d in enumerate(src)]


def _operands(b: "KernelBuilder", n: ir.Node, coords: list[str], mask: str) -> list[str]:
    return [b.value(o, broadcast_coords(coords, n.type.shape, t.shape), mask) for o, t in zip(n.operands, _types(b, n))]


# -- elementwise -----------------------------------------------------------------------------------
_UNARY = {
    "neg": "-{x}", "abs": "tl.abs({x})", "exp": "tl.exp({x})", "log": "tl.log({x})", "sqrt": "tl.sqrt({x})",
    "rsqrt": "1.0 / tl.sqrt({x})", "reciprocal": "1.0 / {x}", "sin": "tl.sin({x})", "cos": "tl.cos({x})",
    "erf": "tl.math.erf({x})", "sigmoid": "tl.sigmoid({x})", "silu": "{x} * tl.sigmoid({x})",
    # tanh from exp: exact limits (exp overflows to inf -> 1); libdevice's tanh has no interpreter form
    "tanh": "1.0 - 2.0 / (tl.exp(2.0 * {x}) + 1.0)",
    "logical_not": "{x} == 0",
}
_BINARY = {
    "add": "{a} + {b}", "sub": "{a} - {b}", "mul": "{a} * {b}", "div": "{a} / {b}",
    "eq": "{a} == {b}", "ne": "{a} != {b}", "lt": "{a} < {b}", "le": "{a} <= {b}", "gt": "{a} > {b}",
    "ge": "{a} >= {b}", "logical_and": "({a} != 0) & ({b} != 0)", "logical_or": "({a} != 0) | ({b} != 0)",
    # NaN-propagating, as np.maximum / np.minimum
    "maximum": "tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
    "minimum": "tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})",
}


@emitter(*_UNARY)
def _unary(b: "KernelBuilder", n: ir.Node, coords: list[str], mask: str) -> str:
    (x,) = _operands(b, n, coords, mask)
    if n.op == "abs" and n.type.dtype.kind == "bool":
        return x
    return b.t(_UNARY[n.op].format(x=x))


@emitter("relu")
def _relu(b, n, coords, mask):
    (x,) = _operands(b, n, coords, mask)
    zero = literal(0, n.type.dtype)
    return b.t(f"tl.where({x} < {zero}, {zero}, {x})")  # NaN stays NaN


@emitter("gelu")
def _gelu(b, n, coords, mask):
    (x,) = _operands(b, n, coords, mask)
    if n.attrs["approximate"] == "tanh":
        u = b.t(f"{math.sqrt(2.0 / math.pi)!r} * ({x} + 0.044715 * {x} * {x} * {x})")
        return b.t(f"0.5 * {x} * (2.0 - 2.0 / (tl.exp(2.0 * {u}) + 1.0))")
    return b.t(f"0.5 * {x} * (1.0 + tl.math.erf({x} * {1 / math.sqrt(2.0)!r}))")


@emitter(*_BINARY)
def _binary(b, n, coords, mask):
    a, c = _operands(b, n, coords, mask)
    return b.t(_BINARY[n.op].format(a=a, b=c))


@emitter("pow")
def _pow(b, n, coords, mask):
    if not n.type.dtype.is_float:
        raise NotImplementedError(f"%{n.name}: pow of {n.type.dtype.name} on target='cuda' (floats only)")
    base_t, exp_t = _types(b, n)
    const = b.constant(n.operands[1])
    if const is not None and float(const).is_integer() and abs(const) <= 4:  # x**2 of RMSNorm: exact, sign-safe
        (x,) = [b.value(n.operands[0], broadcast_coords(coords, n.type.shape, base_t.shape), mask)]
        k = int(const)
        if k == 0:
            return b.t(f"tl.full([], 1.0, tl.float32) + 0.0 * {x}")
        prod = " * ".join([x] * abs(k))
        return b.t(prod if k > 0 else f"1.0 / ({prod})")
    x, e = _operands(b, n, coords, mask)
    # |x|**e through exp2/log2, then the sign for negative bases with integer exponents; NaN otherwise
    r = b.t(f"tl.exp2({e} * tl.log2(tl.abs({x})))")
    is_int = b.t(f"{e} == tl.floor({e})")
    odd = b.t(f"{is_int} & (tl.abs({e} - 2.0 * tl.floor({e} * 0.5)) == 1.0)")
    signed = b.t(f"tl.where({x} < 0, tl.where({is_int}, tl.where({odd}, -{r}, {r}), float('nan')), {r})")
    return b.t(f"tl.where({e} == 0, 1.0, {signed})")


@emitter("where")
def _where(b, n, coords, mask):
    c, x, y = _operands(b, n, coords, mask)
    return b.t(f"tl.where({c} != 0, {x}, {y})")


@emitter("cast")
def _cast(b, n, coords, mask):
    (x,) = _operands(b, n, coords, mask)
    src, dst = _types(b, n)[0].dtype, n.type.dtype
    if dst.kind == "bool":
        return b.t(f"{x} != 0")
    if dst.name in ("f16", "bf16") and src.name != dst.name:  # round to the narrow type, compute on in f32
        return b.t(f"tl.cast({x}, {storage_type(dst)}).to(tl.float32)")
    return b.t(f"tl.cast({x}, {compute_type(dst)})")


@emitter("full")
def _full(b, n, coords, mask):
    return literal(n.attrs["value"], n.type.dtype)


@emitter("arange")
def _arange(b, n, coords, mask):
    return b.t(f"tl.cast({coords[0]} + {b.dim(n.attrs['start'])}, {compute_type(n.type.dtype)})")


# -- layout: each is a coordinate map into its operand ----------------------------------------------
@emitter("expand")
def _expand(b, n, coords, mask):
    return b.value(n.operands[0], broadcast_coords(coords, n.type.shape, _types(b, n)[0].shape), mask)


@emitter("permute")
def _permute(b, n, coords, mask):
    perm = [p % n.type.rank for p in n.attrs["perm"]]
    src = [""] * len(perm)
    for i, p in enumerate(perm):
        src[p] = coords[i]
    return b.value(n.operands[0], src, mask)


@emitter("slice")
def _slice(b, n, coords, mask):
    t = _types(b, n)[0]
    ax = n.attrs["dim"] % t.rank
    start = b.dim(n.attrs["start"])  # 0 <= start <= size: the frontend clamps
    c = list(coords)
    step = n.attrs["step"]
    c[ax] = f"({start} + {coords[ax]}{f' * {step}' if step != 1 else ''})"
    return b.value(n.operands[0], c, mask)


@emitter("cat")
def _cat(b, n, coords, mask):
    ax = n.attrs["dim"] % n.type.rank
    out = None
    off = "0"
    for o in n.operands:
        size = b.dim(b.type_of(o).shape[ax])
        inside = b.t(f"({coords[ax]} >= {off}) & ({coords[ax]} < {off} + {size})")
        c = list(coords)
        c[ax] = f"({coords[ax]} - {off})"
        v = b.value(o, c, f"{mask} & {inside}")
        out = v if out is None else b.t(f"tl.where({inside}, {v}, {out})")
        off = f"({off} + {size})"
    return out  # type: ignore[return-value]


# -- gathers: an index value picks the coordinate ------------------------------------------------
def _wrap(b: "KernelBuilder", i: str, size) -> str:
    """Negative indices count from the end, as in NumPy. One still outside the axis is clamped into it: a
    kernel never reads outside a tensor (the host refuses out-of-range ids as they enter: __init__.py)."""
    s = b.dim(size)
    return b.t(f"tl.minimum(tl.maximum(tl.where({i} < 0, {i} + {s}, {i}), 0), {s} - 1)")


@emitter("embedding")
def _embedding(b, n, coords, mask):
    w, ids = _types(b, n)
    i = _wrap(b, b.value(n.operands[1], coords[:-1], mask), w.shape[0])
    return b.value(n.operands[0], [i, coords[-1]], mask)


@emitter("take")
def _take(b, n, coords, mask):
    x = _types(b, n)[0]
    ax = n.attrs["axis"] % x.rank
    i = _wrap(b, b.value(n.operands[1], [coords[ax]], mask), x.shape[ax])
    c = list(coords)
    c[ax] = i
    return b.value(n.operands[0], c, mask)


@emitter("gather")
def _gather(b, n, coords, mask):
    x = _types(b, n)[0]
    ax = n.attrs["dim"] % x.rank
    i = _wrap(b, b.value(n.operands[1], coords, mask), x.shape[ax])
    c = list(coords)
    c[ax] = i
    return b.value(n.operands[0], c, mask)


@emitter("index")
def _index(b, n, coords, mask):
    x, *idx = _types(b, n)
    k = len(idx)
    lead = n.type.rank - (x.rank - k)  # the broadcast index shape's rank
    bshape = n.type.shape[:lead]
    picks = [_wrap(b, b.value(o, broadcast_coords(coords[:lead], bshape, t.shape), mask), x.shape[j])
             for j, (o, t) in enumerate(zip(n.operands[1:], idx))]
    return b.value(n.operands[0], picks + coords[lead:], mask)


@emitter("mask_logits")
def _mask_logits(b, n, coords, mask):
    x = b.value(n.operands[0], coords, mask)
    word = b.value(n.operands[1], coords[:-1] + [f"({coords[-1]} // 32)"], mask)
    bit = b.t(f"(({word} >> ({coords[-1]} % 32)) & 1) != 0")
    return b.t(f"tl.where({bit}, {x}, float('-inf'))")


# -- weight decoders: inlined into the matmul's weight loads, so packed weights decode in registers ------
@emitter("dequant_planes")
def _dequant_planes(b, n, coords, mask):
    """W[o, i] = sum_k alpha[k, o, i // group] * T[k, o, i] (ir/ops/quant/planes.py)."""
    t, a = _types(b, n)
    g = n.attrs["group"]
    acc = None
    for k in range(t.shape[0]):
        trit = b.value(n.operands[0], [str(k), coords[0], coords[1]], mask)
        alpha = b.value(n.operands[1], [str(k), coords[0], f"({coords[1]} // {g})"], mask)
        term = f"{alpha} * tl.cast({trit}, tl.float32)"
        acc = b.t(term if acc is None else f"{acc} + {term}")
    return _round_to(b, acc, n.type.dtype)


def _round_to(b: "KernelBuilder", v: str, dt: DType) -> str:
    if dt.name in ("f16", "bf16"):
        return b.t(f"tl.cast({v}, {storage_type(dt)}).to(tl.float32)")
    return v


# Ops that compute an element from the elements at the same coordinates (after broadcasting): a chain of
# them can run in a matmul's epilogue, on its accumulator tile.
ELEMENTWISE = frozenset(_UNARY) | frozenset(_BINARY) | {"relu", "gelu", "pow", "where", "cast"}



from . import quant_exprs  # noqa: E402,F401  (registers the weight decoders of the other quantization methods)
