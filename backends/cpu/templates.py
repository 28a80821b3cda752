"""One NumPy emitter per op: `TEMPLATES[op] = Template(emit, ...)`.

Each emitter writes the NumPy code of one node (see `NodeEmit`), and must compute exactly what the
op's `reference` in ir/ops computes: the same NumPy calls in the same order, with the same dtype
handling (16-bit floats computed in f32 where the reference does), so results match bit for bit
except where a template reorders BLAS work (grouped-query sdpa). Where NumPy takes `out=` (ufuncs,
matmul, reductions, concatenate, copyto) the emitter writes into the pooled buffer it is offered.

A template also says what its result may alias, for the buffer planner (backends/cpu/memory.py):
`view` results may share memory with operand 0; `layout` says whether a fresh result is
C-contiguous ("c": always, "k": when the operands are, as NumPy's default order="K" gives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import ir
from ir.dtypes import DType, bool_
from ir.shapes import normalize_axis

from .source import NodeEmit, dtype_code, lit, tup


@dataclass(frozen=True)
class Template:
    emit: Callable[[NodeEmit], None]
    view: bool | Callable[[list[ir.TensorType], dict], bool] = False  # result may alias operand 0 (given types, attrs)
    layout: str = "k"  # fresh result: "c" always C-contiguous, "k" C-contiguous when the operands are
    readonly: bool = False  # result may be a read-only broadcast view
    ndarray: bool = False  # always an array, even 0-d (NumPy ufuncs and reductions give scalars there)

    def aliases(self, types: list[ir.TensorType], attrs: dict) -> bool:
        return self.view(types, attrs) if callable(self.view) else self.view


TEMPLATES: dict[str, Template] = {}


def template(*ops: str, **kw) -> Callable[[Callable[[NodeEmit], None]], Callable[[NodeEmit], None]]:
    def deco(fn: Callable[[NodeEmit], None]) -> Callable[[NodeEmit], None]:
        for op in ops:
            TEMPLATES[op] = Template(fn, **kw)
        return fn
    return deco


# -- helpers ------------------------------------------------------------------------------------
def is16(dt: DType) -> bool:
    """f16 and bf16: the references compute these in f32."""
    return dt.is_float and dt.bits == 16


def compute(e: NodeEmit, i: int) -> str:
    """Operand i in its compute dtype: 16-bit floats upcast to f32 (once, into a temporary)."""
    if not is16(e.types[i].dtype):
        return e.args[i]
    t = e.tmp()
    e.line(f"{t} = {e.args[i]}.astype(np.float32)")
    return t


def cdt(dt: DType) -> str:
    """Source of the compute dtype of a float dtype."""
    return "np.float32" if is16(dt) else dtype_code(dt)


def scalar(dt: DType, v: float) -> str:
    """A typed scalar, like the reference's `np.asarray(v, x.dtype)`."""
    return f"{cdt(dt)}({lit(float(v))})"


def nonempty(t: ir.TensorType) -> bool:
    return all(isinstance(d, int) and d > 0 for d in t.shape)


def finish(e: NodeEmit, expr_: str, in16: bool) -> None:
    """dst = expr, cast back from f32 when the operand was a 16-bit float."""
    e.line(f"{e.dst} = {expr_}.astype({dtype_code(e.type.dtype)})" if in16 else f"{e.dst} = {expr_}")


# -- elementwise --------------------------------------------------------------------------------
def _float_unary(f: Callable[[str, str, DType], str]) -> Callable[[NodeEmit], None]:
    """f(x, out_kw, dtype) -> expression. 16-bit floats go through f32, as `Unary.reference` does."""
    def emit(e: NodeEmit) -> None:
        dt = e.types[0].dtype
        if is16(dt):
            finish(e, f(compute(e, 0), "", dt), True)
        else:
            e.line(f"{e.dst} = {f(e.args[0], e.out(), dt)}")
    return emit


_UNARY_FLOAT: dict[str, Callable[[str, str, DType], str]] = {
    "exp": lambda x, o, dt: f"np.exp({x}{o})",
    "log": lambda x, o, dt: f"np.log({x}{o})",
    "sqrt": lambda x, o, dt: f"np.sqrt({x}{o})",
    "rsqrt": lambda x, o, dt: f"np.divide(1.0, np.sqrt({x}{o}){o})",  # 1.0 / sqrt(x)
    "reciprocal": lambda x, o, dt: f"np.divide(1.0, {x}{o})",
    "sin": lambda x, o, dt: f"np.sin({x}{o})",
    "cos": lambda x, o, dt: f"np.cos({x}{o})",
    "tanh": lambda x, o, dt: f"np.tanh({x}{o})",
    "erf": lambda x, o, dt: f"sp.erf({x}{o})",
    "sigmoid": lambda x, o, dt: f"sp.expit({x}{o})",
    "silu": lambda x, o, dt: f"np.multiply({x}, sp.expit({x}{o}){o})",  # x * sigmoid(x)
}
for _name, _f in _UNARY_FLOAT.items():
    TEMPLATES[_name] = Template(_float_unary(_f))


@template("gelu")
def _gelu(e: NodeEmit) -> None:
    dt = e.types[0].dtype
    if e.attrs["approximate"] == "tanh":  # 0.5 * x * (1 + tanh(c * (x + 0.044715 * x^3)))
        c, k = scalar(dt, np.sqrt(2.0 / np.pi)), scalar(dt, 0.044715)
        f = lambda x, o: f"np.multiply(0.5 * {x}, 1.0 + np.tanh({c} * ({x} + {k} * {x} * {x} * {x})){o})"  # noqa: E731
    else:  # 0.5 * x * (1 + erf(x / sqrt(2)))
        c = scalar(dt, 1 / np.sqrt(2.0))
        f = lambda x, o: f"np.multiply(0.5 * {x}, 1.0 + sp.erf({x} * {c}){o})"  # noqa: E731
    if is16(dt):
        finish(e, f(compute(e, 0), ""), True)
    else:
        e.line(f"{e.dst} = {f(e.args[0], e.out())}")


_UFUNC1 = {"neg": "np.negative", "abs": "np.abs", "logical_not": "np.logical_not"}
for _name, _fn in _UFUNC1.items():
    TEMPLATES[_name] = Template(lambda e, fn=_fn: e.line(f"{e.dst} = {fn}({e.args[0]}{e.out()})"))


@template("relu")
def _relu(e: NodeEmit) -> None:
    if e.types[0].dtype == bool_:  # max(b, 0) promotes to int: cast back, as the reference does
        e.line(f"{e.dst} = np.maximum({e.args[0]}, 0).astype(np.bool_)")
    else:
        e.line(f"{e.dst} = np.maximum({e.args[0]}, 0{e.out()})")


_UFUNC2 = {"add": "np.add", "sub": "np.subtract", "mul": "np.multiply", "div": "np.divide",
           "maximum": "np.maximum", "minimum": "np.minimum", "eq": "np.equal", "ne": "np.not_equal",
           "lt": "np.less", "le": "np.less_equal", "gt": "np.greater", "ge": "np.greater_equal",
           "logical_and": "np.logical_and", "logical_or": "np.logical_or"}
for _name, _fn in _UFUNC2.items():  # one dtype in, so NumPy's loop keeps it (compares give bool)
    TEMPLATES[_name] = Template(lambda e, fn=_fn: e.line(f"{e.dst} = {fn}({e.args[0]}, {e.args[1]}{e.out()})"))


@template("pow")
def _pow(e: NodeEmit) -> None:
    dt = e.types[0].dtype
    if is16(dt):
        finish(e, f"np.power({compute(e, 0)}, {compute(e, 1)})", True)
    elif dt == bool_:  # NumPy's power of bools is int8: cast back, as the reference does
        e.line(f"{e.dst} = np.power({e.args[0]}, {e.args[1]}).astype(np.bool_)")
    else:
        e.line(f"{e.dst} = np.power({e.args[0]}, {e.args[1]}{e.out()})")


@template("where")
def _where(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.where({e.args[0]}, {e.args[1]}, {e.args[2]})")


@template("cast")
def _cast(e: NodeEmit) -> None:
    x, dt = e.args[0], e.attrs["dtype"]
    if dt == bool_:
        e.line(f"{e.dst} = np.not_equal({x}, 0{e.out()})")
    elif (b := e.buf()) is not None:  # astype's conversion, into the buffer
        e.line(f'np.copyto({b}, {x}, casting="unsafe")')
        e.line(f"{e.dst} = {b}")
    else:
        e.line(f"{e.dst} = {x}.astype({dtype_code(dt)})")


@template("full", layout="c", ndarray=True)
def _full(e: NodeEmit) -> None:
    v = lit(e.attrs["value"])
    if (b := e.buf()) is not None:  # np.full is empty + copyto(casting="unsafe")
        e.line(f'np.copyto({b}, {v}, casting="unsafe")')
        e.line(f"{e.dst} = {b}")
    else:
        e.line(f"{e.dst} = np.full({e.shape()}, {v}, dtype={dtype_code(e.attrs['dtype'])})")


@template("arange", layout="c", ndarray=True)
def _arange(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.arange({e.dim(e.attrs['start'])}, {e.dim(e.attrs['end'])}, "
           f"dtype={dtype_code(e.attrs['dtype'])})")


# -- linear algebra and normalisation ---------------------------------------------------------------
@template("linear", layout="c")
def _linear(e: NodeEmit) -> None:
    in16 = is16(e.types[0].dtype)
    x, w = compute(e, 0), compute(e, 1)
    if in16:
        y = e.tmp()
        e.line(f"{y} = np.matmul({x}, {w}.T)")
        if len(e.args) == 3:
            e.line(f"{y} = {y} + {compute(e, 2)}")
        finish(e, y, True)
        return
    e.line(f"{e.dst} = np.matmul({x}, {w}.T{e.out()})")
    if len(e.args) == 3:
        e.line(f"np.add({e.dst}, {e.args[2]}, out={e.dst})")


@template("matmul", layout="c")
def _matmul(e: NodeEmit) -> None:
    if is16(e.types[0].dtype):
        finish(e, f"np.matmul({compute(e, 0)}, {compute(e, 1)})", True)
    else:
        e.line(f"{e.dst} = np.matmul({e.args[0]}, {e.args[1]}{e.out()})")


def _norm_axes(e: NodeEmit) -> str:
    r = e.types[0].rank
    return tup(str(i) for i in range(r - e.attrs["axes"], r))


@template("layer_norm")
def _layer_norm(e: NodeEmit) -> None:
    """d = x - mean(x); y = d / sqrt(mean(d^2) + eps) * w + b: the reference's steps, in place in y."""
    dt = e.types[0].dtype
    in16, ax, x = is16(dt), _norm_axes(e), compute(e, 0)
    mu, y = e.tmp(), (e.tmp() if in16 else e.dst)
    out = "" if in16 else e.out()
    e.line(f"{mu} = np.mean({x}, axis={ax}, keepdims=True)")
    e.line(f"{y} = np.subtract({x}, {mu}{out})")
    e.line(f"np.divide({y}, np.sqrt(np.mean(np.square({y}), axis={ax}, keepdims=True) + {scalar(dt, e.attrs['eps'])}), out={y})")
    for i, fn in ((1, "np.multiply"), (2, "np.add")):
        if len(e.args) > i:
            e.line(f"{fn}({y}, {compute(e, i)}, out={y})")
    if in16:
        finish(e, y, True)


@template("rms_norm")
def _rms_norm(e: NodeEmit) -> None:
    """y = x * (1 / sqrt(mean(x * x) + eps)) * w."""
    dt = e.types[0].dtype
    in16, ax, x = is16(dt), _norm_axes(e), compute(e, 0)
    r, y = e.tmp(), (e.tmp() if in16 else e.dst)
    n = e.types[0].shape[e.types[0].rank - e.attrs["axes"]:]
    if all(isinstance(d, int) for d in n) and int(np.prod(n)) > 0:  # np.mean's own steps, without its Python wrapper
        ms = f"np.add.reduce({x} * {x}, axis={ax}, keepdims=True) / {int(np.prod(n))}"
    else:
        ms = f"np.mean({x} * {x}, axis={ax}, keepdims=True)"
    e.line(f"{r} = 1.0 / np.sqrt({ms} + {scalar(dt, e.attrs['eps'])})")
    e.line(f"{y} = np.multiply({x}, {r}{'' if in16 else e.out()})")
    if len(e.args) > 1:
        e.line(f"np.multiply({y}, {compute(e, 1)}, out={y})")
    if in16:
        finish(e, y, True)


def _softmax_rows(e: NodeEmit, s: str, t: ir.TensorType, axis: str) -> str:
    """`mx = max(s, axis)`, or s itself when s may be empty (as the reference); returns mx."""
    mx = e.tmp()
    m = f"np.max({s}, axis={axis}, keepdims=True)"
    e.line(f"{mx} = {m}" if nonempty(t) else f"{mx} = {m} if {s}.size else {s}")
    return mx


@template("mask_logits")
def _mask_logits(e: NodeEmit) -> None:
    t = e.tmp()  # the bits, least significant first (ir.ops.nn.bitmask_allows)
    e.line(f"{t} = np.unpackbits(np.ascontiguousarray({e.args[1]}, dtype='<i4').view(np.uint8), axis=-1, "
           f"bitorder='little')[..., :{e.types[0].shape[-1]}].astype(np.bool_)")
    e.line(f"{e.dst} = np.where({t}, {e.args[0]}, {dtype_code(e.types[0].dtype)}({lit(-np.inf)}))")


@template("sdpa", layout="c")
def _sdpa(e: NodeEmit) -> None:
    """softmax(q @ k^T * scale + mask) @ v, the reference's steps in place in one scores buffer.
    Grouped-query attention reshapes q to [b, kv, rep, L, E] against k[:, :, None] instead of
    repeating k and v (the same dot products, no copies)."""
    tq, tk, tv = e.types[:3]
    dt, in16 = tq.dtype, is16(tq.dtype)
    q, k, v = compute(e, 0), compute(e, 1), compute(e, 2)
    B, H, L, E = (e.dim(d) for d in tq.shape)
    KH, S, Ev = e.dim(tk.shape[1]), e.dim(tk.shape[2]), e.dim(tv.shape[3])
    hq, hk = tq.shape[1], tk.shape[1]
    s = e.tmp()
    if isinstance(hq, int) and isinstance(hk, int):
        rep = hq // max(hk, 1)
        grouped = rep > 1
        if grouped:
            e.line(f"{s} = np.matmul({q}.reshape({B}, {KH}, {rep}, {L}, {E}), {k}[:, :, None].swapaxes(-1, -2))"
                   f".reshape({B}, {H}, {L}, {S})")
    else:  # heads only known at run time: repeat k and v like the reference
        grouped, rep_ = False, f"max({H} // max({KH}, 1), 1)"
        k2, v2 = e.tmp(), e.tmp()
        e.line(f"{k2} = np.repeat({k}, {rep_}, axis=1)")
        e.line(f"{v2} = np.repeat({v}, {rep_}, axis=1)")
        k, v = k2, v2
    if not grouped:
        e.line(f"{s} = np.matmul({q}, {k}.swapaxes(-1, -2))")
    e.line(f"np.multiply({s}, {scalar(dt, e.attrs['scale'])}, out={s})")
    if e.attrs["causal"]:
        e.line(f"np.copyto({s}, -np.inf, where=~np.tri({L}, {S}, dtype=np.bool_))")
    if len(e.args) == 4:
        if e.types[3].dtype == bool_:
            e.line(f"np.copyto({s}, -np.inf, where=~{e.args[3]})")
        else:
            e.line(f"np.add({s}, {compute(e, 3)}, out={s})")
    scores = tq.with_shape((tq.shape[0], tq.shape[1], tq.shape[2], tk.shape[2]))
    mx = _softmax_rows(e, s, scores, "-1")
    e.line(f"np.subtract({s}, {mx}, out={s})")
    e.line(f"np.exp({s}, out={s})")
    e.line(f"np.divide({s}, np.sum({s}, axis=-1, keepdims=True), out={s})")
    e.line(f"np.copyto({s}, 0, where={mx} == -np.inf)  # every key masked: 0, as torch")
    if grouped:
        finish(e, f"np.matmul({s}.reshape({B}, {KH}, {rep}, {L}, {S}), {v}[:, :, None]).reshape({B}, {H}, {L}, {Ev})", in16)
    elif in16:
        finish(e, f"np.matmul({s}, {v})", True)
    else:
        e.line(f"{e.dst} = np.matmul({s}, {v}{e.out()})")


# -- reductions and scans -------------------------------------------------------------------------
def _reduce(fn: str, typed: bool) -> Callable[[NodeEmit], None]:
    """np.<fn> over the dims; 16-bit floats accumulate in f32 (`Reduce.reference`)."""
    def emit(e: NodeEmit) -> None:
        t = e.types[0]
        in16 = is16(t.dtype)
        x = compute(e, 0)
        dims = e.attrs["dims"]
        axis = tup(str(normalize_axis(d, t.rank)) for d in dims) if dims else "None"
        dtype = f", dtype={cdt(t.dtype) if t.dtype.is_float else dtype_code(t.dtype)}" if typed else ""
        out = "" if in16 or e.type.rank == 0 else e.out()
        finish(e, f"{fn}({x}, axis={axis}, keepdims={lit(e.attrs['keepdim'])}{dtype}{out})", in16)
    return emit


TEMPLATES["sum"] = Template(_reduce("np.sum", True))
TEMPLATES["mean"] = Template(_reduce("np.mean", True))
TEMPLATES["amax"] = Template(_reduce("np.max", False))
TEMPLATES["amin"] = Template(_reduce("np.min", False))


@template("argmax")
def _argmax(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.argmax({e.args[0]}, axis={e.attrs['dim']}, keepdims={lit(e.attrs['keepdim'])})"
           ".astype(np.int64, copy=False)")


@template("cumsum")
def _cumsum(e: NodeEmit) -> None:
    """bool and ints accumulate in i64, 16-bit floats in f32 (`Cumsum.reference`)."""
    t = e.types[0]
    out_dt = e.type.dtype
    acc = "np.float32" if is16(t.dtype) else dtype_code(out_dt)
    axis = e.attrs["dim"] % max(t.rank, 1)
    if t.rank == 0:  # np.cumsum flattens a scalar
        e.line(f"{e.dst} = np.cumsum({e.args[0]}, axis={axis}, dtype={acc}).astype({dtype_code(out_dt)}).reshape(())")
    elif is16(t.dtype):
        finish(e, f"np.cumsum({e.args[0]}, axis={axis}, dtype={acc})", True)
    else:
        e.line(f"{e.dst} = np.cumsum({e.args[0]}, axis={axis}, dtype={acc}{e.out()})")


@template("softmax", "log_softmax")
def _softmax(e: NodeEmit) -> None:
    t = e.types[0]
    in16, d = is16(t.dtype), e.attrs["dim"]
    x = compute(e, 0)
    y = e.tmp() if in16 else e.dst
    mx = _softmax_rows(e, x, t, str(d))
    diff = f"np.subtract({x}, {mx}{'' if in16 else e.out()})"
    e.line(f"{y} = {diff}" if t.rank else f"{y} = np.asarray({diff})")  # 0-d: an array, so out= works below
    if e.node.op == "softmax":
        e.line(f"np.exp({y}, out={y})")
        e.line(f"np.divide({y}, np.sum({y}, axis={d}, keepdims=True), out={y})")
    else:
        e.line(f"np.subtract({y}, np.log(np.sum(np.exp({y}), axis={d}, keepdims=True)), out={y})")
    if in16:
        finish(e, y, True)


# -- shapes and indexing ------------------------------------------------------------------------------
@template("reshape", view=True)
def _reshape(e: NodeEmit) -> None:
    e.line(f"{e.dst} = {e.args[0]}.reshape({e.shape(e.attrs['shape'])})")


@template("permute", view=True, layout="none")
def _permute(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.transpose({e.args[0]}, {lit(e.attrs['perm'])})")


@template("expand", view=True, layout="none", readonly=True)
def _expand(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.broadcast_to({e.args[0]}, {e.shape(e.attrs['shape'])})")


@template("slice", view=True, layout="none")
def _slice(e: NodeEmit) -> None:
    rank = e.types[0].rank
    ax = e.attrs["dim"] % rank
    step = e.attrs["step"]
    sl = f"{e.dim(e.attrs['start'])}:{e.dim(e.attrs['end'])}" + (f":{step}" if step != 1 else "")
    e.line(f"{e.dst} = {e.args[0]}[{', '.join([':'] * ax + [sl])}]")


@template("cat", layout="c")
def _cat(e: NodeEmit) -> None:
    ax = e.attrs["dim"] % e.types[0].rank
    e.line(f"{e.dst} = np.concatenate({tup(e.args)}, axis={ax}{e.out()})")


def _scalar_index(types: list[ir.TensorType], attrs: dict) -> bool:
    """Indexing by 0-d integer arrays only may be basic indexing: a view."""
    return all(t.rank == 0 for t in types[1:])


@template("gather", view=_scalar_index)
def _gather(e: NodeEmit) -> None:
    tx, ti = e.types
    ax = e.attrs["dim"] % tx.rank
    x = e.args[0]
    if any(i != ax and a != b for i, (a, b) in enumerate(zip(tx.shape, ti.shape))):  # torch: index may be smaller
        x = f"{x}[{', '.join(':' if i == ax else f':{e.dim(d)}' for i, d in enumerate(ti.shape))}]"
    e.line(f"{e.dst} = np.take_along_axis({x}, {e.args[1]}, axis={ax})")


@template("take")
def _take(e: NodeEmit) -> None:
    e.line(f"{e.dst} = np.take({e.args[0]}, {e.args[1]}, axis={e.attrs['axis'] % e.types[0].rank})")


@template("index_copy", view=lambda types, attrs: attrs["inplace"])
def _index_copy(e: NodeEmit) -> None:
    ax = e.attrs["axis"] % e.types[0].rank
    e.line(f"{e.dst} = {e.args[0]}" if e.attrs["inplace"] else f"{e.dst} = {e.args[0]}.copy()")  # inplace: x is donated
    e.line(f"{e.dst}[{', '.join([':'] * ax + [e.args[1]])}] = {e.args[2]}")


@template("index", view=_scalar_index)
def _index(e: NodeEmit) -> None:
    e.line(f"{e.dst} = {e.args[0]}[{', '.join(e.args[1:])}{',' if len(e.args) == 2 else ''}]")


@template("embedding", view=_scalar_index)
def _embedding(e: NodeEmit) -> None:
    e.line(f"{e.dst} = {e.args[0]}[{e.args[1]}]")
