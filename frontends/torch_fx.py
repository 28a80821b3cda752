"""torch.fx.symbolic_trace -> Tritium IR, for plain `nn.Module`s with static shapes.

Hugging Face models do not symbolic_trace in transformers 5.x: use `torch_export.export` for them.

`FX_TO_ATEN` maps each fx target (a function or a Tensor method name) to the ATen overload it
means, and `MODULES` does the same for leaf nn.Module types, building the arguments from the
module's attributes. The call's arguments are rebound to that overload's schema and the
torch.export handler (`torch_export.HANDLERS`) builds the IR, so both frontends give an op one
meaning and share its casts, promotion and shape handling. Shapes are static: `ShapeProp` runs the module on the example args and leaves
each result's shape and dtype where the handlers look for torch's type (`meta["val"]`). Sizes read
from tensors (`x.size(0)`, `x.shape[-1]`) are constants of the trace.
"""
from __future__ import annotations

import inspect
import operator
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.node import _get_qualified_name
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

import ir
from ir.errors import UnsupportedOpError

from .common import Imported, to_numpy, value_name
from .torch_export import HANDLERS, Importer, where_from

aten = torch.ops.aten
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
Pre = Callable[[tuple, dict], tuple[tuple, dict]]


@dataclass(frozen=True)
class FxOp:
    """What an fx target means: an ATen overload, and how its arguments differ from the schema's."""

    op: Any  # torch._ops.OpOverload
    rename: dict[str, str] = field(default_factory=dict)  # Python name -> schema name
    pre: Pre | None = None  # rewrites (args, kwargs) before binding


FX_TO_ATEN: dict[Any, FxOp] = {}  # function or Tensor-method name -> FxOp
MODULES: dict[type, Callable[["FxImporter", nn.Module, str, Any], tuple[Any, tuple, dict]]] = {}


def _map(op: Any, *targets: Any, rename: dict[str, str] | None = None, pre: Pre | None = None) -> None:
    for t in targets:
        FX_TO_ATEN[t] = FxOp(op, rename or {}, pre)


def _first(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Keep only the input: the handler takes the output shape or dtype from torch."""
    return args[:1], {}


def _dims(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """x.permute(0, 2, 1) is x.permute((0, 2, 1))."""
    return ((args[0], tuple(args[1:])), kwargs) if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else (args, kwargs)


# -- the mapping table ----------------------------------------------------------------------------
_map(aten.add.Tensor, operator.add, operator.iadd, torch.add, "add")
_map(aten.sub.Tensor, operator.sub, operator.isub, torch.sub, "sub")
_map(aten.mul.Tensor, operator.mul, operator.imul, torch.mul, "mul")
_map(aten.div.Tensor, operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div")
_map(aten.pow.Tensor_Tensor, operator.pow, torch.pow, "pow")
_map(aten.matmul.default, operator.matmul, torch.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm")
_map(aten.neg.default, operator.neg)
for _c in ("eq", "ne", "lt", "le", "gt", "ge"):
    _map(getattr(aten, _c).Tensor, getattr(operator, _c), getattr(torch, _c), _c)
for _u in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf", "sigmoid", "relu"):
    _map(getattr(aten, _u).default, getattr(torch, _u), _u)
_map(aten.relu.default, F.relu)
_map(aten.tanh.default, F.tanh)
_map(aten.sigmoid.default, F.sigmoid)
_map(aten.silu.default, F.silu)
_map(aten.gelu.default, F.gelu)
_map(aten.softmax.int, torch.softmax, F.softmax, "softmax")
_map(aten.log_softmax.int, torch.log_softmax, F.log_softmax, "log_softmax")
_map(aten.mean.dim, torch.mean, "mean")
_map(aten.sum.dim_IntList, torch.sum, "sum")
_map(aten.amax.default, torch.amax, "amax")
_map(aten.clamp.default, torch.clamp, "clamp")
_map(aten.where.self, torch.where)
_map(aten.masked_fill.Scalar, torch.masked_fill, "masked_fill")
_map(aten.cat.default, torch.cat, torch.concat)
FX_TO_ATEN[operator.getitem] = FxOp(operator.getitem)  # of a tuple (split, chunk); has no schema
_map(aten.split.Tensor, torch.split, "split", torch.chunk, "chunk",  # one handler: sizes come from torch
     rename={"tensor": "self", "split_size_or_sections": "split_size", "chunks": "split_size"})
_map(aten.unbind.int, torch.unbind, "unbind")
_map(aten.linear.default, F.linear)
_map(aten.layer_norm.default, F.layer_norm)
_map(aten.embedding.default, F.embedding, rename={"input": "indices"})
_map(aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)
_map(aten.dropout.default, F.dropout, rename={"training": "train"})
_map(aten.reshape.default, torch.reshape, "reshape", "view", "view_as", "reshape_as", torch.flatten, "flatten",
     torch.unsqueeze, "unsqueeze", torch.squeeze, "squeeze", pre=_first)
_map(aten.expand.default, "expand", "expand_as", pre=_first)
_map(aten.permute.default, torch.permute, "permute", pre=_dims)
_map(aten.transpose.int, torch.transpose, "transpose")
_map(aten.t.default, torch.t, "t")
_map(aten._to_copy.default, "to", "float", "double", "half", "bfloat16", "type_as", "contiguous", "clone",
     "detach", torch.clone, pre=_first)

# Sizes and types read from tensors are constants of a static trace.
_SIZE_METHODS = {"size", "dim", "numel", "nelement"}
_SIZE_ATTRS = {"shape", "dtype", "ndim", "device"}


def _module(*types: type):
    def deco(fn):
        for t in types:
            MODULES[t] = fn
        return fn
    return deco


@_module(nn.Linear)
def _linear(im: "FxImporter", m: nn.Linear, path: str, x: Any):
    return aten.linear.default, (x, im.param(m, path, "weight"), im.param(m, path, "bias")), {}


@_module(nn.Embedding)
def _embedding(im: "FxImporter", m: nn.Embedding, path: str, x: Any):
    if m.max_norm is not None:
        raise UnsupportedOpError("nn.Embedding with max_norm renormalises its weight in place; not supported")
    return aten.embedding.default, (im.param(m, path, "weight"), x), {}


@_module(nn.LayerNorm)
def _layer_norm(im: "FxImporter", m: nn.LayerNorm, path: str, x: Any):
    w, b = im.param(m, path, "weight"), im.param(m, path, "bias")
    return aten.layer_norm.default, (x, list(m.normalized_shape), w, b, m.eps), {}


@_module(nn.GELU)
def _gelu(im: "FxImporter", m: nn.GELU, path: str, x: Any):
    return aten.gelu.default, (x,), {"approximate": m.approximate}


@_module(nn.Softmax)
def _softmax(im: "FxImporter", m: nn.Softmax, path: str, x: Any):
    return aten.softmax.int, (x, m.dim), {}


@_module(nn.Dropout)
def _dropout(im: "FxImporter", m: nn.Dropout, path: str, x: Any):
    return aten.dropout.default, (x, m.p, m.training), {}


@_module(nn.Flatten)
def _flatten(im: "FxImporter", m: nn.Flatten, path: str, x: Any):
    return aten.reshape.default, (x,), {}


for _t, _op in [(nn.ReLU, aten.relu.default), (nn.SiLU, aten.silu.default), (nn.Tanh, aten.tanh.default),
                (nn.Sigmoid, aten.sigmoid.default), (nn.Identity, aten.alias.default)]:
    MODULES[_t] = lambda im, m, path, x, _op=_op: (_op, (x,), {})


def supported_targets() -> list[str]:
    fns = [f"Tensor.{t}" if isinstance(t, str) else _target_name(t) for t in FX_TO_ATEN]
    return sorted(set(fns)) + sorted(f"nn.{t.__name__}" for t in MODULES)


# -- binding a call to an ATen schema --------------------------------------------------------------
_IGNORED = {"inplace", "_stacklevel"}  # no effect on an eval-mode result


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and not isinstance(a, torch.fx.Node) and a == b)


def bind_aten(op: Any, fn: Any, args: tuple, kwargs: dict, rename: dict[str, str]) -> tuple[tuple, dict]:
    """The (args, kwargs) of a call of `fn` as an `op` node of torch.export would hold them:
    positional up to the last one given (schema defaults between), keyword-only ones as keywords.

    Python functions (torch.nn.functional) bind by their own signature, defaults included;
    builtins and Tensor methods take the schema's positional order.
    """
    schema = op._schema.arguments
    names = {a.name for a in schema}
    if inspect.isfunction(fn):
        sig = inspect.signature(fn)
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            raise UnsupportedOpError(f"cannot bind the arguments: {e}") from None
        bound.apply_defaults()
        given, defaults = dict(bound.arguments), {k: p.default for k, p in sig.parameters.items()}
    else:
        pos = [a.name for a in schema if not a.kwarg_only]
        if len(args) > len(pos):
            raise UnsupportedOpError(f"{len(args)} positional arguments, but {op} takes {len(pos)}")
        given, defaults = {**dict(zip(pos, args)), **kwargs}, {}
    out: dict[str, Any] = {}
    for k, v in given.items():
        name = rename.get(k, k)
        if name not in names:
            name = {"input": "self", "self": "input"}.get(name, name)
        if name in names:
            out[name] = v
        elif k not in _IGNORED and not (k in defaults and _same(v, defaults[k])):
            raise UnsupportedOpError(f"argument {k}={v!r} has no equivalent in {op}")
    positional = [a for a in schema if not a.kwarg_only]
    last = max((i for i, a in enumerate(positional) if a.name in out), default=-1)
    pargs = tuple(out[a.name] if a.name in out else (a.default_value if a.has_default_value() else None)
                  for a in positional[:last + 1])
    return pargs, {a.name: out[a.name] for a in schema if a.kwarg_only and a.name in out}


@dataclass
class _AtenCall:
    """The part of an fx node that a torch.export handler reads, retargeted to an ATen overload."""

    name: str
    target: Any
    args: tuple
    kwargs: dict
    meta: dict


# -- tracing ---------------------------------------------------------------------------------------
class _Tracer(torch.fx.Tracer):
    """symbolic_trace's tracer, recording each node's user source line (torch's own frames dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def _filter_traceback_frames(self, summary):
        import traceback

        frames = [f for f in super()._filter_traceback_frames(summary) if not f.filename.startswith(_TORCH_DIR)]
        return traceback.StackSummary.from_list(frames)


class _ShapeProp(ShapeProp):
    """ShapeProp that also leaves every result as `meta["val"]`, tensors as meta tensors."""

    def run_node(self, n: torch.fx.Node) -> Any:
        r = super().run_node(n)
        n.meta["val"] = pytree.tree_map_only(torch.Tensor, lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"), r)
        return r


def _target_name(t: Any) -> str:
    if isinstance(t, str):
        return f"Tensor.{t}"
    try:
        return _get_qualified_name(t).replace("_operator.", "operator.")
    except Exception:
        return repr(t)


def _has_tensor(v: Any) -> bool:
    return any(isinstance(x, torch.Tensor) for x in pytree.tree_leaves(v))


def _is_ref(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, (list, tuple)) and any(_is_ref(x) for x in v))


class FxImporter(Importer):
    """Walks a shape-propagated GraphModule; tensors map to IR refs, sizes to Python constants."""

    def __init__(self, gm: torch.fx.GraphModule, name: str = "main"):
        super().__init__(None, name)  # type: ignore[arg-type]
        self.gm = gm
        self._params: dict[int, str] = {}  # id(tensor) -> "@name": tied weights share one param

    def add_param(self, name: str, t: torch.Tensor) -> str:
        if id(t) not in self._params:
            self.g.params[name] = self.b.ttype(t)
            self.g.weights[name] = to_numpy(t)
            self._params[id(t)] = "@" + name
        return self._params[id(t)]

    def param(self, m: nn.Module, path: str, attr: str) -> str | None:
        t = getattr(m, attr, None)
        return None if t is None else self.add_param(f"{path}.{attr}", t)

    def where(self, n: torch.fx.Node) -> str:
        w = where_from(n)
        return n.target + w[len("<top>"):] if n.op == "call_module" and w.startswith("<top>") else w

    def run(self) -> ir.Graph:
        g = self.g
        for n in self.gm.graph.nodes:
            self.b.loc = self.where(n) if n.op.startswith("call") else None
            if n.op == "placeholder":
                v = n.meta.get("val")
                if isinstance(v, torch.Tensor):
                    g.inputs.append((self.b.fresh(n.name), self.b.ttype(v)))
                    self.env[n] = "%" + g.inputs[-1][0]
                elif _has_tensor(v):
                    raise UnsupportedOpError(f"input {n.name} nests tensors in a {type(v).__name__}; pass tensors as separate arguments")
                else:
                    self.env[n] = v  # a constant argument, baked into the trace
            elif n.op == "get_attr":
                obj = self.gm
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                self.env[n] = self.add_param(n.target, obj) if isinstance(obj, torch.Tensor) else obj
            elif n.op in ("call_function", "call_method", "call_module"):
                self.env[n] = self.call(n)
            elif n.op == "output":
                self.outputs(n)
        return g

    def call(self, n: torch.fx.Node) -> Any:
        val = n.meta.get("val")
        ins = [self.env[a] for a in n.all_input_nodes]
        sizes = (n.op == "call_method" and n.target in _SIZE_METHODS) or (
            n.target is getattr and len(n.args) > 1 and n.args[1] in _SIZE_ATTRS)
        if not _has_tensor(val) and (sizes or not any(_is_ref(v) for v in ins)):
            return val  # size arithmetic: a constant under static shapes
        try:
            if n.op == "call_module":
                m = self.gm.get_submodule(n.target)
                build = next((MODULES[c] for c in type(m).__mro__ if c in MODULES), None)
                if build is None:
                    raise self.unsupported(n, f"module {type(m).__module__}.{type(m).__qualname__}")
                if len(n.args) + len(n.kwargs) != 1:
                    raise UnsupportedOpError(f"{type(m).__name__} called with {len(n.args) + len(n.kwargs)} arguments")
                op, args, kwargs = build(self, m, n.target, n.args[0] if n.args else next(iter(n.kwargs.values())))
            else:
                entry = FX_TO_ATEN.get(n.target)
                if entry is None:
                    raise self.unsupported(n, _target_name(n.target))
                if n.target is operator.getitem and not isinstance(self.val(n.args[0]), (list, tuple)):
                    raise self.unsupported(n, "tensor indexing x[...]")
                op, args, kwargs = entry.op, tuple(n.args), dict(n.kwargs)
                if entry.pre:
                    args, kwargs = entry.pre(args, kwargs)
                if op is not operator.getitem:
                    fn = getattr(torch.Tensor, n.target, None) if isinstance(n.target, str) else n.target
                    args, kwargs = bind_aten(op, fn, args, kwargs, entry.rename)
            return HANDLERS[op](self, _AtenCall(n.name, op, args, kwargs, n.meta))  # type: ignore[arg-type]
        except UnsupportedOpError as e:
            if f"node {n.name}," in str(e) or "(at " in str(e):
                raise
            what = f"module {type(self.gm.get_submodule(n.target)).__name__}" if n.op == "call_module" else _target_name(n.target)
            raise UnsupportedOpError(f"{what} (node {n.name}, in {self.where(n)}): {e}") from None

    def unsupported(self, n: torch.fx.Node, what: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"{what} is not supported by the fx importer (node {n.name}, in {self.where(n)}). "
            "Supported: frontends.torch_fx.supported_targets(); or trace with frontends.torch_export.export.")


def trace(model: nn.Module, args: tuple, name: str | None = None) -> Imported:
    """symbolic_trace `model`, propagate the shapes of `args`, and import it (verified, static shapes)."""
    was_training = model.training
    model.eval()
    try:
        try:
            gm = torch.fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
        except Exception as e:
            raise UnsupportedOpError(
                f"torch.fx.symbolic_trace could not trace {type(model).__name__} ({type(e).__name__}: {str(e)[:1000]}); "
                "use the torch.export path instead: frontends.torch_export.export(model, args)") from e
        with torch.no_grad():
            _ShapeProp(gm).propagate(*args)
        g = FxImporter(gm, value_name(name or type(model).__name__)).run()
    finally:
        model.train(was_training)
    ir.verify(g)
    out = next(n for n in gm.graph.nodes if n.op == "output").meta["val"]
    leaves, in_spec = pytree.tree_flatten((tuple(args), {}))
    return Imported(g, in_spec, [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)],
                    pytree.tree_flatten(out)[1])
