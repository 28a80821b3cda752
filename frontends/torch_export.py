"""torch.export (ATen) -> Tritium IR. The main frontend: it traces real Hugging Face models.

Each ATen op maps to IR ops through one entry of `HANDLERS`. A handler gets the FX node and
returns the IR value (a ref), a Python value (an int or symbolic dim for SymInts) or a list.
View-like ops take their output shape from torch's own shape propagation (`meta["val"]`), so
-1 and symbolic sizes are already resolved; type promotion becomes explicit `cast`s.
"""
from __future__ import annotations

import inspect
import math
import operator
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch.utils import _pytree as pytree

import ir
from ir.dtypes import DTYPES
from ir.errors import UnsupportedOpError

from .common import Builder, Imported, ir_dtype, to_numpy, value_name
from .moe import experts_as_moe, moe_op

aten = torch.ops.aten
Handler = Callable[["Importer", torch.fx.Node], Any]
HANDLERS: dict[Any, Handler] = {}


def handles(*targets: Any) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn
    return deco


def where_from(node: torch.fx.Node) -> str:
    """`model.layers.0.self_attn (modeling_llama.py:262: q = self.q_proj(x))` for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else "<top>"
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    src = ""
    for i in range(len(trace) - 1, -1, -1):
        line = trace[i].strip()
        if line.startswith("File "):
            parts = line.split(",")
            fname = parts[0][5:].strip('" ').rsplit("/", 1)[-1]
            lineno = parts[1].strip().removeprefix("line ") if len(parts) > 1 else "?"
            code = trace[i + 1].strip() if i + 1 < len(trace) else ""
            src = f" ({fname}:{lineno}: {code})"
            break
    return f"{path}{src}"


class Importer:
    def __init__(self, ep: torch.export.ExportedProgram, name: str = "main"):
        self.ep = ep
        self.g = ir.Graph(name=value_name(name))
        self.b = Builder(self.g)
        self.env: dict[torch.fx.Node, Any] = {}

    # -- values --------------------------------------------------------------------------------
    def val(self, a: Any) -> Any:
        """The IR value of an FX argument: refs for tensors, ints/dims for sizes, lists mapped."""
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return [self.val(x) for x in a]
        return a

    def arg(self, n: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
        if i < len(n.args):
            return self.val(n.args[i])
        return self.val(n.kwargs.get(name, default))

    def out_type(self, n: torch.fx.Node) -> ir.TensorType:
        return self.b.ttype(n.meta["val"])

    def tensor(self, v: Any, dt: ir.DType) -> str:
        """A ref for a tensor-or-scalar operand, cast to `dt`."""
        if isinstance(v, str):
            return self.b.cast(v, dt)
        if isinstance(v, (bool, int, float)):
            return self.b.const(v, dt)
        raise UnsupportedOpError(f"expected a tensor or a number, got {type(v).__name__}")

    def emit(self, n: torch.fx.Node, op: str, operands: list[str], attrs: dict | None = None, check: bool = True) -> str:
        return self.b.emit(op, operands, attrs, name=n.name, expect=self.out_type(n) if check else None)

    def outputs(self, n: torch.fx.Node) -> None:
        """The FX output node's (flattened) values become the graph's outputs."""
        for o in pytree.tree_leaves(n.args[0]):
            v = self.val(o)
            if not isinstance(v, str):
                raise UnsupportedOpError(f"model output {o} is not a tensor ({v!r}); only tensor outputs are supported")
            self.g.outputs.append(v)

    # -- driver --------------------------------------------------------------------------------
    def run(self) -> ir.Graph:
        ep, g = self.ep, self.g
        sig = ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        state = dict(ep.state_dict)
        state.update(ep.constants)
        for n in ep.graph.nodes:
            self.b.loc = where_from(n) if n.op == "call_function" else None
            if n.op == "placeholder":
                spec = specs.get(n.name)
                kind = spec.kind if spec else torch.export.graph_signature.InputKind.USER_INPUT
                if kind == torch.export.graph_signature.InputKind.USER_INPUT:
                    v = n.meta.get("val")
                    if isinstance(v, torch.Tensor):
                        g.inputs.append((self.b.fresh(n.name), self.b.ttype(v)))
                        self.env[n] = "%" + g.inputs[-1][0]
                    else:  # a constant argument (use_cache=False): baked into the trace
                        self.env[n] = getattr(spec.arg, "value", v) if spec else v
                else:
                    target = spec.target
                    t = state[target]
                    if not isinstance(t, torch.Tensor):
                        raise UnsupportedOpError(f"non-tensor constant {target!r} ({type(t).__name__}) is not supported")
                    g.params[target] = self.b.ttype(t)
                    g.weights[target] = to_numpy(t)
                    self.env[n] = "@" + target
            elif n.op == "call_function":
                if isinstance(n.meta.get("val"), torch.SymInt) and n.target is not operator.getitem:
                    self.env[n] = self.b.dim(n.meta["val"])  # sym_size and size arithmetic
                    continue
                h = HANDLERS.get(n.target)
                if h is None:
                    raise UnsupportedOpError(
                        f"ATen op {n.target} is not supported (node {n.name}, in {where_from(n)}). "
                        "Supported ops: frontends.torch_export.supported_ops(); "
                        "docs/ARCHITECTURE.md says how to add one.")
                try:
                    self.env[n] = h(self, n)
                except UnsupportedOpError as e:
                    if " in " in str(e) or "(at " in str(e):
                        raise
                    raise UnsupportedOpError(f"{n.target} (node {n.name}, in {where_from(n)}): {e}") from None
            elif n.op == "output":
                self.outputs(n)
            else:
                raise UnsupportedOpError(f"FX node kind {n.op} ({n.name}) is not supported in an exported program")
        return g


def supported_ops() -> list[str]:
    return sorted(str(t) for t in HANDLERS)


# -- handlers ------------------------------------------------------------------------------------
_IDENTITY = [aten.alias.default, aten.detach.default, aten.contiguous.default, aten.clone.default,
             aten.lift_fresh_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.to.device,
             aten._to_copy.default, aten.type_as.default]


@handles(*_IDENTITY)
def _convert(im: Importer, n):
    x = im.arg(n, 0, "self")
    return im.b.cast(x, im.out_type(n).dtype)


@handles(aten.dropout.default, aten.native_dropout.default)
def _dropout(im: Importer, n):
    if im.arg(n, 2, "train", False):
        raise UnsupportedOpError("dropout in training mode; call model.eval() before compiling")
    return im.arg(n, 0, "input")


@handles(aten._assert_tensor_metadata.default, aten._assert_scalar.default,
         aten.sym_constrain_range_for_size.default)
def _skip(im: Importer, n):
    return None


def _unary(op: str):
    def h(im: Importer, n):
        t = im.out_type(n)
        return im.emit(n, op, [im.tensor(im.arg(n, 0, "self"), t.dtype)])
    return h


for _t, _op in [(aten.neg.default, "neg"), (aten.abs.default, "abs"), (aten.exp.default, "exp"),
                (aten.log.default, "log"), (aten.sqrt.default, "sqrt"), (aten.rsqrt.default, "rsqrt"),
                (aten.reciprocal.default, "reciprocal"), (aten.sin.default, "sin"), (aten.cos.default, "cos"),
                (aten.tanh.default, "tanh"), (aten.erf.default, "erf"), (aten.sigmoid.default, "sigmoid"),
                (aten.silu.default, "silu"), (aten.relu.default, "relu"), (aten.logical_not.default, "logical_not"),
                (aten.bitwise_not.default, "logical_not")]:
    HANDLERS[_t] = _unary(_op)


@handles(aten.gelu.default)
def _gelu(im: Importer, n):
    return im.emit(n, "gelu", [im.arg(n, 0, "self")], {"approximate": n.kwargs.get("approximate", "none")})


def _promote(im: Importer, n, *vals: Any) -> ir.DType:
    """torch's type promotion of the operands (tensors by dtype and dimensionality, scalars by kind)."""
    probe = []
    for v in vals:
        if isinstance(v, str):
            t = im.b.type_of(v)
            probe.append(torch.empty((1,) if t.rank else (), dtype=_torch_dtype(t.dtype)))
        else:
            probe.append(v)
    return ir_dtype(torch.result_type(*probe[:2])) if len(probe) == 2 else im.out_type(n).dtype


def _torch_dtype(dt: ir.DType) -> torch.dtype:
    from .common import IR_TO_TORCH

    return IR_TO_TORCH[dt.name]


def _binary(op: str, compare: bool = False):
    def h(im: Importer, n):
        a, b = im.arg(n, 0, "self"), im.arg(n, 1, "other")
        if op in ("add", "sub") and n.kwargs.get("alpha", 1) != 1:
            b = im.b.emit("mul", [im.tensor(b, im.out_type(n).dtype), im.b.const(n.kwargs["alpha"], im.out_type(n).dtype)], name=n.name + "_alpha")
        dt = _promote(im, n, a, b) if compare else im.out_type(n).dtype
        return im.emit(n, op, [im.tensor(a, dt), im.tensor(b, dt)])
    return h


for _ts, _op in [((aten.add.Tensor, aten.add.Scalar), "add"), ((aten.sub.Tensor, aten.sub.Scalar), "sub"),
                 ((aten.mul.Tensor, aten.mul.Scalar), "mul"), ((aten.div.Tensor, aten.div.Scalar), "div"),
                 ((aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor), "pow"),
                 ((aten.maximum.default, aten.max.other), "maximum"), ((aten.minimum.default, aten.min.other), "minimum")]:
    for _t in _ts:
        HANDLERS[_t] = _binary(_op)
for _ts, _op in [((aten.eq.Tensor, aten.eq.Scalar), "eq"), ((aten.ne.Tensor, aten.ne.Scalar), "ne"),
                 ((aten.lt.Tensor, aten.lt.Scalar), "lt"), ((aten.le.Tensor, aten.le.Scalar), "le"),
                 ((aten.gt.Tensor, aten.gt.Scalar), "gt"), ((aten.ge.Tensor, aten.ge.Scalar), "ge")]:
    for _t in _ts:
        HANDLERS[_t] = _binary(_op, compare=True)


@handles(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(im: Importer, n):
    dt = im.out_type(n).dtype
    return im.emit(n, "sub", [im.tensor(im.arg(n, 1, "other"), dt), im.tensor(im.arg(n, 0, "self"), dt)])


@handles(aten.pow.Scalar)
def _pow_scalar(im: Importer, n):
    dt = im.out_type(n).dtype
    return im.emit(n, "pow", [im.tensor(im.arg(n, 0, "self"), dt), im.tensor(im.arg(n, 1, "exponent"), dt)])


@handles(aten.__and__.Tensor, aten.bitwise_and.Tensor, aten.logical_and.default,
         aten.__or__.Tensor, aten.bitwise_or.Tensor, aten.logical_or.default)
def _logical(im: Importer, n):
    a, b = im.arg(n, 0, "self"), im.arg(n, 1, "other")
    boolean = DTYPES["bool"]
    if im.out_type(n).dtype != boolean and "logical" not in str(n.target):
        raise UnsupportedOpError("bitwise and/or of integer tensors is not supported (only bool)")
    op = "logical_and" if "and" in str(n.target) else "logical_or"
    return im.emit(n, op, [im.b.emit("ne", [a, im.b.const(0, im.b.type_of(a).dtype)], name=n.name + "_a") if im.b.type_of(a).dtype != boolean else a,
                           im.b.emit("ne", [b, im.b.const(0, im.b.type_of(b).dtype)], name=n.name + "_b") if im.b.type_of(b).dtype != boolean else b])


@handles(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(im: Importer, n):
    dt = im.out_type(n).dtype
    return im.emit(n, "where", [im.arg(n, 0, "condition"), im.tensor(im.arg(n, 1, "self"), dt), im.tensor(im.arg(n, 2, "other"), dt)])


@handles(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(im: Importer, n):
    dt = im.out_type(n).dtype
    x, mask, v = im.arg(n, 0, "self"), im.arg(n, 1, "mask"), im.arg(n, 2, "value")
    return im.emit(n, "where", [mask, im.tensor(v, dt), x])


@handles(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(im: Importer, n):
    dt = im.out_type(n).dtype
    x = im.tensor(im.arg(n, 0, "self"), dt)
    name = str(n.target)
    lo = im.arg(n, 1, "min") if "clamp_max" not in name else None
    hi = im.arg(n, 2, "max") if name.endswith("clamp.default") else (im.arg(n, 1, "max") if "clamp_max" in name else None)
    if lo is not None:
        x = im.b.emit("maximum", [x, im.tensor(lo, dt)], name=n.name + "_lo")
    if hi is not None:
        x = im.b.emit("minimum", [x, im.tensor(hi, dt)], name=n.name + "_hi")
    return x


def _reduce(op: str):
    def h(im: Importer, n):
        x = im.arg(n, 0, "self")
        dims = im.arg(n, 1, "dim", None)
        keep = im.arg(n, 2, "keepdim", False)
        dims = [] if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        x = im.b.cast(x, im.out_type(n).dtype)
        return im.emit(n, op, [x], {"dims": dims, "keepdim": bool(keep)})
    return h


HANDLERS[aten.mean.dim] = _reduce("mean")
HANDLERS[aten.mean.default] = _reduce("mean")
HANDLERS[aten.sum.dim_IntList] = _reduce("sum")
HANDLERS[aten.sum.default] = _reduce("sum")
HANDLERS[aten.amax.default] = _reduce("amax")
HANDLERS[aten.amin.default] = _reduce("amin")


@handles(aten.argmax.default)
def _argmax(im: Importer, n):
    d = im.arg(n, 1, "dim", None)
    x = im.arg(n, 0, "self")
    if d is None:
        t = im.b.type_of(x)
        x = im.b.emit("reshape", [x], {"shape": [ir.shapes.numel(t.shape)]}, name=n.name + "_flat")
        d = 0
    return im.emit(n, "argmax", [x], {"dim": d, "keepdim": bool(im.arg(n, 2, "keepdim", False))})


@handles(aten.cumsum.default)
def _cumsum(im: Importer, n):
    out = im.b.emit("cumsum", [im.arg(n, 0, "self")], {"dim": im.arg(n, 1, "dim")}, name=n.name)
    return im.b.cast(out, im.out_type(n).dtype)


@handles(aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default)
def _softmax(im: Importer, n):
    op = "log_softmax" if "log_softmax" in str(n.target) else "softmax"
    x = im.b.cast(im.arg(n, 0, "self"), im.out_type(n).dtype)
    return im.emit(n, op, [x], {"dim": im.arg(n, 1, "dim")})


# shape ops: the output shape comes from torch (so -1 and symbolic sizes are resolved)
@handles(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.unsqueeze.default,
         aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints,
         aten.unflatten.int, aten.view_as.default, aten.reshape_as.default)
def _reshape(im: Importer, n):
    return im.emit(n, "reshape", [im.arg(n, 0, "self")], {"shape": list(im.out_type(n).shape)})


@handles(aten.expand.default, aten.expand_as.default, aten.broadcast_to.default)
def _expand(im: Importer, n):
    x = im.arg(n, 0, "self")
    if im.b.type_of(x).shape == im.out_type(n).shape:
        return x
    return im.emit(n, "expand", [x], {"shape": list(im.out_type(n).shape)})


@handles(aten.permute.default)
def _permute(im: Importer, n):
    x = im.arg(n, 0, "self")
    rank = im.b.type_of(x).rank
    return im.emit(n, "permute", [x], {"perm": [d % max(rank, 1) for d in im.arg(n, 1, "dims")]})


@handles(aten.transpose.int, aten.t.default)
def _transpose(im: Importer, n):
    x = im.arg(n, 0, "self")
    rank = im.b.type_of(x).rank
    if rank < 2 and n.target == aten.t.default:
        return x
    a, b = (im.arg(n, 1, "dim0"), im.arg(n, 2, "dim1")) if n.target == aten.transpose.int else (0, 1)
    perm = list(range(rank))
    a, b = a % rank, b % rank
    perm[a], perm[b] = perm[b], perm[a]
    return im.emit(n, "permute", [x], {"perm": perm})


def _slice_bounds(im: Importer, size: Any, start: Any, end: Any) -> tuple[Any, Any]:
    """Python slice semantics for static bounds; symbolic bounds are taken as in range."""
    big = 2**62
    start = 0 if start is None else start
    end = size if end is None or (isinstance(end, int) and end >= big) else end
    if isinstance(size, int):
        if isinstance(start, int):
            start = min(max(start + size if start < 0 else start, 0), size)
        if isinstance(end, int):
            end = min(max(end + size if end < 0 else end, 0), size)
    else:
        if isinstance(start, int) and start < 0:
            start = ir.shapes.add(size, start)
        if isinstance(end, int) and end < 0:
            end = ir.shapes.add(size, end)
    if isinstance(start, int) and isinstance(end, int) and end < start:
        end = start
    return start, end


@handles(aten.slice.Tensor)
def _slice(im: Importer, n):
    x = im.arg(n, 0, "self")
    t = im.b.type_of(x)
    dim = im.arg(n, 1, "dim", 0) % t.rank
    start, end = _slice_bounds(im, t.shape[dim], im.arg(n, 2, "start"), im.arg(n, 3, "end"))
    step = im.arg(n, 4, "step", 1)
    if start == 0 and end == t.shape[dim] and step == 1:
        return x
    return im.emit(n, "slice", [x], {"dim": dim, "start": start, "end": end, "step": step})


@handles(aten.select.int)
def _select(im: Importer, n):
    x = im.arg(n, 0, "self")
    t = im.b.type_of(x)
    dim, i = im.arg(n, 1, "dim") % t.rank, im.arg(n, 2, "index")
    if isinstance(i, int) and i < 0:
        i = ir.shapes.add(t.shape[dim], i)
    s = im.b.emit("slice", [x], {"dim": dim, "start": i, "end": ir.shapes.add(i, 1)}, name=n.name + "_slice")
    return im.emit(n, "reshape", [s], {"shape": list(im.out_type(n).shape)})


@handles(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int)
def _split(im: Importer, n):
    x = im.arg(n, 0, "self")
    t = im.b.type_of(x)
    outs = n.meta["val"]
    dim = (im.arg(n, 1, "dim", 0) if n.target == aten.unbind.int else im.arg(n, 2, "dim", 0)) % t.rank
    refs, start = [], 0
    for k, o in enumerate(outs):
        size = 1 if n.target == aten.unbind.int else im.b.dim(o.shape[dim])
        end = ir.shapes.add(start, size)
        r = im.b.emit("slice", [x], {"dim": dim, "start": start, "end": end}, name=f"{n.name}_{k}")
        if n.target == aten.unbind.int:
            r = im.b.emit("reshape", [r], {"shape": list(im.b.ttype(o).shape)}, name=f"{n.name}_{k}")
        refs.append(r)
        start = end
    return refs


@handles(operator.getitem)
def _getitem(im: Importer, n):
    seq, i = im.val(n.args[0]), n.args[1]
    if not isinstance(seq, (list, tuple)):
        raise UnsupportedOpError(f"getitem on {type(seq).__name__}")
    return seq[i]


@handles(aten.cat.default, aten.concat.default)
def _cat(im: Importer, n):
    dt = im.out_type(n).dtype
    xs = [im.b.cast(x, dt) for x in im.arg(n, 0, "tensors")]
    rank = im.out_type(n).rank
    xs = [x for x in xs if im.b.type_of(x).rank == rank]  # torch skips legacy empty 1-D inputs
    if len(xs) == 1:
        return xs[0]
    return im.emit(n, "cat", xs, {"dim": im.arg(n, 1, "dim", 0) % rank})


@handles(aten.index_select.default)
def _index_select(im: Importer, n):
    return im.emit(n, "take", [im.arg(n, 0, "self"), im.arg(n, 2, "index")], {"axis": im.arg(n, 1, "dim")})


@handles(aten.index_copy.default)
def _index_copy(im: Importer, n):
    x, dim, idx, src = (im.arg(n, 0, "self"), im.arg(n, 1, "dim"), im.arg(n, 2, "index"), im.arg(n, 3, "source"))
    return im.emit(n, "index_copy", [x, idx, src], {"axis": dim})


@handles(aten.gather.default)
def _gather(im: Importer, n):
    return im.emit(n, "gather", [im.arg(n, 0, "self"), im.arg(n, 2, "index")], {"dim": im.arg(n, 1, "dim")})


@handles(aten.index.Tensor)
def _index(im: Importer, n):
    idx = im.arg(n, 1, "indices")
    if any(i is None for i in idx):
        raise UnsupportedOpError("advanced indexing with a skipped (None/':') leading dimension is not supported")
    if any(im.b.type_of(i).dtype == DTYPES["bool"] for i in idx):
        raise UnsupportedOpError("boolean-mask indexing has a data-dependent shape and is not supported")
    return im.emit(n, "index", [im.arg(n, 0, "self"), *idx])


@handles(aten.embedding.default)
def _embedding(im: Importer, n):
    return im.emit(n, "embedding", [im.arg(n, 0, "weight"), im.arg(n, 1, "indices")])


@handles(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(im: Importer, n):
    args = [im.val(a) for a in n.args]
    start, end, step = (0, args[0], 1) if n.target == aten.arange.default else (args + [1])[:3]
    t = im.out_type(n)
    if step != 1 or any(isinstance(v, float) and not float(v).is_integer() for v in (start, end)):
        raise UnsupportedOpError("arange with a step other than 1 or fractional bounds is not supported")
    start = int(start) if isinstance(start, float) else start
    end = int(end) if isinstance(end, float) else end
    dt = t.dtype
    r = im.b.emit("arange", [], {"start": start, "end": end, "dtype": DTYPES["i64"] if dt.is_float else dt}, name=n.name)
    return im.b.cast(r, dt)


@handles(aten.full.default, aten.new_full.default, aten.full_like.default, aten.ones.default, aten.zeros.default,
         aten.new_ones.default, aten.new_zeros.default, aten.ones_like.default, aten.zeros_like.default,
         aten.scalar_tensor.default, aten.new_empty.default, aten.empty.memory_format, aten.empty_like.default)
def _full(im: Importer, n):
    name = str(n.target)
    if "full" in name:
        value = n.args[1] if name.endswith("full.default") and "new" not in name and "like" not in name else n.args[-1] if len(n.args) > 1 else n.kwargs["fill_value"]
        if "new_full" in name:
            value = n.args[2]
    elif "scalar_tensor" in name:
        value = n.args[0]
    else:
        value = 1 if "ones" in name else 0  # empty: zeros is a valid value for uninitialised memory
    t = im.out_type(n)
    if not isinstance(value, (bool, int, float)):
        raise UnsupportedOpError(f"fill value {value!r} is not a number")
    value = bool(value) if t.dtype == DTYPES["bool"] else (float(value) if t.dtype.is_float else int(value))
    return im.emit(n, "full", [], {"value": value, "dtype": t.dtype, "shape": list(t.shape)})


@handles(aten.diff.default)
def _diff(im: Importer, n):
    x = im.arg(n, 0, "self")
    nn, dim = im.arg(n, 1, "n", 1), im.arg(n, 2, "dim", -1)
    pre, app = im.arg(n, 3, "prepend"), im.arg(n, 4, "append")
    if nn != 1:
        raise UnsupportedOpError("diff with n != 1")
    rank = im.b.type_of(x).rank
    dim %= rank
    parts = [p for p in (pre, x, app) if p is not None]
    y = im.b.emit("cat", parts, {"dim": dim}, name=n.name + "_cat") if len(parts) > 1 else x
    size = im.b.type_of(y).shape[dim]
    hi = im.b.emit("slice", [y], {"dim": dim, "start": 1, "end": size}, name=n.name + "_hi")
    lo = im.b.emit("slice", [y], {"dim": dim, "start": 0, "end": ir.shapes.sub(size, 1)}, name=n.name + "_lo")
    if im.b.type_of(y).dtype == DTYPES["bool"]:
        return im.emit(n, "ne", [hi, lo])
    return im.emit(n, "sub", [hi, lo])


@handles(aten.linear.default)
def _linear(im: Importer, n):
    x, w, b = im.arg(n, 0, "input"), im.arg(n, 1, "weight"), im.arg(n, 2, "bias")
    return im.emit(n, "linear", [x, w] + ([b] if b is not None else []))


@handles(aten.addmm.default)
def _addmm(im: Importer, n):
    b, x, w = im.arg(n, 0, "self"), im.arg(n, 1, "mat1"), im.arg(n, 2, "mat2")
    if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
        raise UnsupportedOpError("addmm with beta or alpha other than 1")
    mm = im.b.emit("matmul", [x, w], name=n.name + "_mm")
    return im.emit(n, "add", [mm, b])


@handles(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(im: Importer, n):
    return im.emit(n, "matmul", [im.arg(n, 0, "self"), im.arg(n, 1, "other")])


@handles(aten.layer_norm.default)
def _layer_norm(im: Importer, n):
    x, shape = im.arg(n, 0, "input"), im.arg(n, 1, "normalized_shape")
    w, b, eps = im.arg(n, 2, "weight"), im.arg(n, 3, "bias"), im.arg(n, 4, "eps", 1e-5)
    if w is None and b is not None:
        raise UnsupportedOpError("layer_norm with a bias but no weight")
    ops = [x] + [v for v in (w, b) if v is not None]
    return im.emit(n, "layer_norm", ops, {"eps": float(eps), "axes": len(shape)})


@handles(aten.rms_norm.default)
def _rms_norm(im: Importer, n):
    x, shape, w, eps = im.arg(n, 0, "input"), im.arg(n, 1, "normalized_shape"), im.arg(n, 2, "weight"), im.arg(n, 3, "eps")
    if eps is None:
        eps = float(torch.finfo(_torch_dtype(im.b.type_of(x).dtype)).eps)
    return im.emit(n, "rms_norm", [x] + ([w] if w is not None else []), {"eps": float(eps), "axes": len(shape)})


@handles(aten.scaled_dot_product_attention.default)
def _sdpa(im: Importer, n):
    q, k, v = im.arg(n, 0, "query"), im.arg(n, 1, "key"), im.arg(n, 2, "value")
    mask, p = im.arg(n, 3, "attn_mask"), im.arg(n, 4, "dropout_p", 0.0)
    causal, scale = im.arg(n, 5, "is_causal", False), im.arg(n, 6, "scale")
    if p:
        raise UnsupportedOpError("attention dropout; call model.eval() before compiling")
    e = im.b.type_of(q).shape[-1]
    if scale is None:
        if not isinstance(e, int):
            raise UnsupportedOpError("sdpa with a symbolic head dim and no explicit scale")
        scale = 1.0 / math.sqrt(e)
    ops = [q, k, v]
    if mask is not None:
        mt = im.b.type_of(mask)
        ops.append(mask if mt.dtype == DTYPES["bool"] else im.b.cast(mask, im.b.type_of(q).dtype))
    return im.emit(n, "sdpa", ops, {"scale": float(scale), "causal": bool(causal)})


@handles(aten.numpy_T.default)
def _numpy_t(im: Importer, n):
    x = im.arg(n, 0, "self")
    return im.emit(n, "permute", [x], {"perm": list(range(im.b.type_of(x).rank))[::-1]})


@handles(aten.stack.default)
def _stack(im: Importer, n):
    out = im.out_type(n)
    dim = im.arg(n, 1, "dim", 0) % out.rank
    xs = [im.b.cast(x, out.dtype) for x in im.arg(n, 0, "tensors")]
    xs = [im.b.emit("reshape", [x], {"shape": list(out.shape[:dim]) + [1] + list(out.shape[dim + 1:])}, name=f"{n.name}_{i}")
          for i, x in enumerate(xs)]
    return xs[0] if len(xs) == 1 else im.emit(n, "cat", xs, {"dim": dim})


@handles(aten.repeat.default)
def _repeat(im: Importer, n):
    """x.repeat(r): x viewed as [1, s0, 1, s1, ...], expanded to [r0, s0, r1, s1, ...], then merged pairwise."""
    x, reps = im.arg(n, 0, "self"), list(im.arg(n, 1, "repeats"))
    t = im.b.type_of(x)
    shape = [1] * (len(reps) - t.rank) + list(t.shape)
    y = im.b.emit("reshape", [x], {"shape": [d for s in shape for d in (1, s)]}, name=n.name + "_pairs")
    y = im.b.emit("expand", [y], {"shape": [d for r, s in zip(reps, shape) for d in (r, s)]}, name=n.name + "_tiled")
    return im.emit(n, "reshape", [y], {"shape": list(im.out_type(n).shape)})


@handles(aten.repeat_interleave.self_int)
def _repeat_interleave(im: Importer, n):
    """Each element `repeats` times in a row along dim: x with a new axis after dim, expanded, merged."""
    x, r, dim = im.arg(n, 0, "self"), im.arg(n, 1, "repeats"), im.arg(n, 2, "dim")
    t = im.b.type_of(x)
    if dim is None:
        x = im.b.emit("reshape", [x], {"shape": [ir.shapes.numel(t.shape)]}, name=n.name + "_flat")
        t, dim = im.b.type_of(x), 0
    dim %= t.rank
    s = list(t.shape)
    y = im.b.emit("reshape", [x], {"shape": s[:dim + 1] + [1] + s[dim + 1:]}, name=n.name + "_axis")
    y = im.b.emit("expand", [y], {"shape": s[:dim + 1] + [r] + s[dim + 1:]}, name=n.name + "_copies")
    return im.emit(n, "reshape", [y], {"shape": list(im.out_type(n).shape)})


@handles(aten.baddbmm.default)
def _baddbmm(im: Importer, n):
    """beta * self + alpha * (batch1 @ batch2) (Bloom's ALiBi scores); beta = 0 ignores self, as torch."""
    dt = im.out_type(n).dtype
    c, b1, b2 = im.arg(n, 0, "self"), im.arg(n, 1, "batch1"), im.arg(n, 2, "batch2")
    beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
    y = im.b.emit("matmul", [b1, b2], name=n.name + "_mm")
    if alpha != 1:
        y = im.b.emit("mul", [y, im.b.const(alpha, dt)], name=n.name + "_alpha")
    if beta == 0:
        return im.b.emit("expand", [y], {"shape": list(im.out_type(n).shape)}, name=n.name) if im.b.type_of(y) != im.out_type(n) else y
    if beta != 1:
        c = im.b.emit("mul", [im.tensor(c, dt), im.b.const(beta, dt)], name=n.name + "_beta")
    return im.emit(n, "add", [im.tensor(c, dt), y])


@handles(aten.topk.default)
def _topk(im: Importer, n):
    """(values, indices): argtopk gives torch's indices (ties in torch's order), gather their values."""
    x, k = im.arg(n, 0, "self"), im.arg(n, 1, "k")
    dim, largest, srt = im.arg(n, 2, "dim", -1), im.arg(n, 3, "largest", True), im.arg(n, 4, "sorted", True)
    if not isinstance(k, int):
        raise UnsupportedOpError(f"topk with a symbolic k ({k}); trace with a static k")
    vals_t, idx_t = (im.b.ttype(v) for v in n.meta["val"])
    idx = im.b.emit("argtopk", [x], {"k": k, "dim": dim, "largest": bool(largest), "sorted": bool(srt)},
                    name=n.name + "_indices", expect=idx_t)
    return [im.b.emit("gather", [x, idx], {"dim": dim}, name=n.name + "_values", expect=vals_t), idx]


@handles(moe_op._opoverload)
def _moe(im: Importer, n):
    """frontends/moe.py's op: the stacked experts become per-expert parameters of one `moe` node."""
    x, idx, w = im.arg(n, 0, "x"), im.arg(n, 1, "index"), im.arg(n, 2, "weight")
    act, gated, transposed = (im.arg(n, i, k) for i, k in ((5, "act"), (6, "gated"), (7, "transposed")))
    experts = [p for a in (n.args[3], n.args[4]) for p in _split_experts(im, a, bool(transposed), n)]
    return im.emit(n, "moe", [x, idx, w, *experts], {"act": act, "gated": bool(gated)})


def _split_experts(im: Importer, a: torch.fx.Node, transposed: bool, user: torch.fx.Node) -> list[str]:
    """@mlp.experts.gate_up_proj [E, out, in] -> @mlp.experts.0.gate_up_proj [out, in], ...; the stacked
    parameter goes when nothing else reads it, so no weight is held twice."""
    ref = im.val(a)
    g = im.g
    if not (isinstance(ref, str) and ref.startswith("@") and ref[1:] in g.weights and g.params[ref[1:]].rank == 3):
        raise UnsupportedOpError(f"moe experts must be stacked [E, out, in] parameters, got {ref}")
    name = ref[1:]
    stacked = g.weights[name]
    base, _, leaf = name.rpartition(".")
    refs = []
    for e in range(stacked.shape[0]):
        part = f"{base}.{e}.{leaf}" if base else f"{e}.{leaf}"
        data = np.ascontiguousarray(stacked[e].T if transposed else stacked[e])
        g.params[part] = ir.TensorType(g.params[name].dtype, data.shape)
        g.weights[part] = data
        refs.append("@" + part)
    if set(a.users) == {user}:
        del g.params[name], g.weights[name]
    return refs


# -- entry points ----------------------------------------------------------------------------------
def from_exported(ep: torch.export.ExportedProgram, name: str = "main") -> Imported:
    """Import an ExportedProgram; the result's graph is verified."""
    g = Importer(ep, name).run()
    ir.verify(g)
    # Unused weights (e.g. the rotary buffers' copies) are kept: dce drops them.
    return Imported(g, ep.call_spec.in_spec, _input_leaves(ep), ep.call_spec.out_spec)


def _input_leaves(ep: torch.export.ExportedProgram) -> list[int]:
    """Flat positions (in pytree order of (args, kwargs)) of the user inputs that are tensors."""
    from torch.export.graph_signature import InputKind, TensorArgument

    user = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    return [i for i, s in enumerate(user) if isinstance(s.arg, TensorArgument)]


def is_hf_model(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def export(model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None,
           dynamic: bool | None = None, name: str | None = None) -> Imported:
    """Trace `model(*args, **kwargs)` with torch.export and import it.

    Hugging Face models get `use_cache=False` (a cache in the outputs cannot be exported) and,
    with `dynamic` left as None, a symbolic sequence length (dim 1 of 2-D integer inputs).
    """
    kwargs = dict(kwargs or {})
    extra = {}
    if is_hf_model(model) and "use_cache" in inspect.signature(model.forward).parameters:
        extra["use_cache"] = False
    dynamic = is_hf_model(model) if dynamic is None else dynamic
    shapes = _seq_dynamic_shapes(model, args, {**kwargs, **extra}) if dynamic else None
    was_training = model.training
    model.eval()
    try:
        try:
            with experts_as_moe(model):
                ep = functional(torch.export.export(model, tuple(args), kwargs={**kwargs, **extra},
                                                    dynamic_shapes=shapes, strict=False))
        except Exception as e:
            if isinstance(e, UnsupportedOpError):
                raise
            if shapes is None:
                raise UnsupportedOpError(f"torch.export could not trace {type(model).__name__}: {type(e).__name__}: {str(e)[:2000]}") from e
            raise UnsupportedOpError(
                f"torch.export could not trace {type(model).__name__} with a dynamic sequence length "
                f"({type(e).__name__}: {str(e)[:1000]}); pass dynamic=False to trace static shapes") from e
    finally:
        model.train(was_training)
    imp = from_exported(ep, name or type(model).__name__)
    imp.extra_kwargs = extra
    return imp


def functional(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program with in-place ATen ops (T5's `add_`, Qwen-MoE's `div_`) made functional; others as traced."""
    if any(isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
           for n in ep.graph.nodes if n.op == "call_function"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's own pytree deprecations
            return ep.run_decompositions({})
    return ep


def _seq_dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    """Mark dim 1 of every 2-D integer input (token ids, masks) as one symbolic length (the `decoder_*`
    inputs of an encoder-decoder as a second one), keyed by forward()'s parameter names as torch.export expects."""
    cfg = getattr(model, "config", None)
    longest = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1 << 16
    seq = torch.export.Dim("seq", min=2, max=int(longest))
    dec = torch.export.Dim("decoder_seq", min=2, max=int(longest))  # an encoder-decoder's target length

    def spec(v: Any, name: str = "") -> Any:
        if isinstance(v, torch.Tensor) and v.ndim == 2 and not v.is_floating_point() and v.shape[1] >= 2:
            return {1: dec if name.startswith("decoder_") else seq}
        return None

    sig = inspect.signature(model.forward)
    bound = sig.bind(*args, **kwargs).arguments
    out = {}
    for k, v in bound.items():
        if sig.parameters[k].kind == inspect.Parameter.VAR_KEYWORD:
            out[k] = {kk: spec(vv) for kk, vv in v.items()}
        elif sig.parameters[k].kind == inspect.Parameter.VAR_POSITIONAL:
            out[k] = tuple(spec(vv) for vv in v)
        else:
            out[k] = spec(v, k)
    return out
