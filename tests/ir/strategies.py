"""Hypothesis strategies that build random *valid* graphs through the Python API.

`graphs()` draws a graph whose inputs carry static and symbolic dims (`s0`, `s1`), whose params
and values have awkward names (spaces, quotes, backslashes, unicode, dots, leading digits),
and whose nodes are a chain of ops drawn from most of `ir.OPS` with normalised attrs (floats
such as nan, inf, -0.0 and 1e-300; locs with escapes). Every result type comes from the op's
own `infer`, so the graph verifies by construction; derived dims such as `2*s0 + 1` appear
through cat, slice, arange, full and reshape.

Index-like operands (gather/index/embedding) only ever come from params filled with zeros or
from the `ids` input, so a graph also *runs* on `run_inputs()` with symbols bound to >= 2.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES, DType
from ir.shapes import Dim, TensorType, add, mul, numel, sub, symbols

F32, F16, BF16, I64, I32, BOOL = (DTYPES[n] for n in ("f32", "f16", "bf16", "i64", "i32", "bool"))
FLOATS = [F32, F16, BF16]
PACKED = [d for d in DTYPES.values() if d.packed]
PLAIN = [d for d in DTYPES.values() if not d.packed]

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-300, -1e-300, 5e-324, 1e300,
                  1.7976931348623157e308, 1e-5, 0.1, 1 / 3, 2.5e-17, 1e16, 123456789.0, -2.5]

AWKWARD_NAMES = ["a b", 'say "hi"', "back\\slash", "trail\\", "ünïcödé", "名前", "model.layers.0.weight",
                 "0abc", "1e5", "", "$", "tab\there", "new\nline", "\u2028", "%x", "@y", "emoji😀",
                 "nul\x00", "a,b", "{}", "// c", "inf", "nan", "true", "return", "param", "graph",
                 "\ud800", "-1", "x)", "é.é"]


UNARY_FLOAT = ["exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf", "sigmoid", "silu", "gelu"]


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(AWKWARD_NAMES), st.from_regex(r"[A-Za-z0-9_.$]{1,8}", fullmatch=True),
                     st.text(max_size=6))


def float_attrs() -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats())


def locs() -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(['model.py:12 "q"', "a\\b\\c", "line\nbreak", "tab\t", "",
                                                 "ünï 😀", "\x01\x7f"]), st.text(max_size=12))


def _scalar_for(dt: DType) -> st.SearchStrategy[Any]:
    if dt == BOOL:
        return st.booleans()
    if dt.is_float:
        return st.one_of(float_attrs(), st.integers(-3, 3))
    lo, hi = (0, 255) if dt.kind == "uint" else (-100, 100)
    return st.integers(lo, hi)


class Builder:
    """Accumulates a graph; each `add` infers the result type with the op's own rule."""

    def __init__(self, draw: Callable) -> None:
        self.draw = draw
        self.g = ir.Graph(name=draw(names()))
        self.vnames: set[str] = set()
        self.values: list[tuple[str, TensorType]] = []  # refs usable as operands
        self.types: dict[str, TensorType] = {}  # every ref, used or not
        self.safe_index: set[str] = set()  # int values whose entries are 0 or 1 at run time
        self.syms: list[str] = []
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def _unique(self, name: str, taken: set[str]) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def input(self, t: TensorType) -> str:
        name = self._unique(self.draw(names()), self.vnames)
        self.g.inputs.append((name, t))
        self.types["%" + name] = t
        self.values.append(("%" + name, t))
        return "%" + name

    def param(self, t: TensorType, zeros: bool = False, use: bool = True) -> str:
        name = self._unique(self.draw(names()), set(self.g.params))
        self.g.params[name] = t
        shape = tuple(t.shape)
        dt = t.dtype
        if zeros:
            w = np.zeros(shape, dt.np)
        elif dt.packed:
            w = self.rng.integers(dt.lo, dt.hi + 1, size=shape).astype(dt.np)
        elif dt == BOOL:
            w = self.rng.random(shape) < 0.5
        elif dt.is_float:
            w = self.rng.standard_normal(shape).astype(np.float32).astype(dt.np)
        else:
            w = self.rng.integers(0, 2, size=shape).astype(dt.np)
        self.g.weights[name] = w
        self.types["@" + name] = t
        if use:
            self.values.append(("@" + name, t))
        return "@" + name

    def add(self, op: str, operands: list[str], attrs: dict[str, Any] | None = None) -> str:
        opdef = ir.OPS[op]
        attrs = opdef.normalize_attrs(attrs or {})
        t = opdef.infer([self.types[o] for o in operands], attrs)
        name = self._unique(self.draw(names()), self.vnames)
        self.g.nodes.append(ir.Node(name, op, tuple(operands), attrs, t, self.draw(locs())))
        self.values.append(("%" + name, t))
        self.types["%" + name] = t
        return "%" + name

    def pick(self, pred: Callable[[TensorType], bool] = lambda t: True) -> tuple[str, TensorType] | None:
        ok = [v for v in self.values if pred(v[1])]
        return self.draw(st.sampled_from(ok)) if ok else None

    def sym_dim(self) -> Dim:
        """A dim built from the bound symbols: s0, 2*s0 + 1, s0*s1, ... or a small int."""
        s = self.draw(st.sampled_from(self.syms))
        return self.draw(st.sampled_from([s, add(mul(2, s), 1), mul(s, self.syms[-1]), sub(mul(3, s), 2),
                                          self.draw(st.integers(0, 3))]))


def _nonempty_static(d: Dim) -> bool:
    return not isinstance(d, int) or d > 0


# -- op makers: each adds one or more nodes, or returns None when nothing fits -------------------
def m_unary_float(b: Builder):
    v = b.pick(lambda t: t.dtype.is_float)
    if v is None:
        return None
    op = b.draw(st.sampled_from(UNARY_FLOAT))
    attrs = {"approximate": b.draw(st.sampled_from(["none", "tanh"]))} if op == "gelu" and b.draw(st.booleans()) else {}
    return b.add(op, [v[0]], attrs)


def m_unary_num(b: Builder):
    v = b.pick(lambda t: t.dtype != BOOL)
    return None if v is None else b.add(b.draw(st.sampled_from(["neg", "abs", "relu"])), [v[0]])


def m_logical(b: Builder):
    bools = [v for v in b.values if v[1].dtype == BOOL]
    if not bools:
        return None
    a = b.draw(st.sampled_from(bools))
    if b.draw(st.booleans()):
        return b.add("logical_not", [a[0]])
    other = b.draw(st.sampled_from([v for v in bools if _broadcasts(a[1], v[1])]))
    return b.add(b.draw(st.sampled_from(["logical_and", "logical_or"])), [a[0], other[0]])


def _broadcasts(*ts: TensorType) -> bool:
    try:
        shape: tuple = ()
        for t in ts:
            shape = ir.shapes.broadcast(shape, t.shape)
        return True
    except ValueError:
        return False


def _partner(b: Builder, t: TensorType) -> str:
    """A second operand of t's dtype that broadcasts with t: itself, another value, a param, a scalar."""
    kind = b.draw(st.sampled_from(["same", "value", "param", "scalar"]))
    if kind == "value":
        others = [v for v in b.values if v[1].dtype == t.dtype and _broadcasts(t, v[1])]
        return b.draw(st.sampled_from(others))[0]
    if kind == "param" and t.rank and isinstance(t.shape[-1], int):
        return b.param(TensorType(t.dtype, (t.shape[-1],)))
    if kind == "scalar":
        return b.add("full", [], {"value": b.draw(_scalar_for(t.dtype)), "dtype": t.dtype, "shape": []})
    return b.pick(lambda u: u == t)[0]


def m_binary(b: Builder):
    a = b.pick()
    if a is None:
        return None
    t = a[1]
    ops = ["maximum", "minimum"]
    if t.dtype != BOOL:
        ops += ["add", "mul", "sub"]
    if t.dtype.is_float:
        ops += ["div", "pow"]
    op = b.draw(st.sampled_from(ops if b.draw(st.booleans()) else ["eq", "ne", "lt", "le", "gt", "ge"]))
    other = _partner(b, t)
    operands = [a[0], other] if b.draw(st.booleans()) else [other, a[0]]
    return b.add(op, operands)


def m_where(b: Builder):
    a = b.pick()
    if a is None:
        return None
    cond = b.pick(lambda u: u.dtype == BOOL and _broadcasts(u, a[1]))
    c = cond[0] if cond else b.add("ne", [a[0], a[0]])
    other = _partner(b, a[1])
    if not _broadcasts(b.types[c], a[1], b.types[other]):
        other = a[0]
    return b.add("where", [c, a[0], other])


def m_cast(b: Builder):
    v = b.pick()
    return None if v is None else b.add("cast", [v[0]], {"dtype": b.draw(st.sampled_from(PLAIN))})


def m_full(b: Builder):
    dt = b.draw(st.sampled_from(PLAIN))
    shape = b.draw(st.lists(st.sampled_from([0, 1, 2, 3]) | st.builds(b.sym_dim), max_size=3))
    return b.add("full", [], {"value": b.draw(_scalar_for(dt)), "dtype": dt, "shape": shape})


def m_arange(b: Builder):
    start = b.draw(st.integers(0, 1))
    s = b.draw(st.sampled_from(b.syms))
    end = b.draw(st.sampled_from([start + b.draw(st.integers(0, 4)), s, add(mul(2, s), 1), mul(s, s)]))
    return b.add("arange", [], {"start": start, "end": end, "dtype": b.draw(st.sampled_from([I64, I32, F32]))})


def m_linear(b: Builder):
    v = b.pick(lambda t: t.dtype.is_float and t.rank >= 1 and isinstance(t.shape[-1], int))
    if v is None:
        return None
    x, t = v
    n = b.draw(st.integers(1, 4))
    ops = [x, b.param(TensorType(t.dtype, (n, t.shape[-1])))]
    if b.draw(st.booleans()):
        ops.append(b.param(TensorType(t.dtype, (n,))))
    return b.add("linear", ops)


def m_matmul(b: Builder):
    v = b.pick(lambda t: t.rank >= 1 and t.dtype != BOOL and isinstance(t.shape[-1], int))
    if v is None:
        return None
    x, t = v
    shape = (t.shape[-1],) if b.draw(st.booleans()) else (t.shape[-1], b.draw(st.integers(1, 3)))
    w = b.param(TensorType(t.dtype, shape))
    return b.add("matmul", [x, w])


def m_norm(b: Builder):
    v = b.pick(lambda t: t.dtype.is_float and t.rank >= 1)
    if v is None:
        return None
    x, t = v
    op = b.draw(st.sampled_from(["layer_norm", "rms_norm"]))
    k = b.draw(st.integers(1, min(2, t.rank)))
    attrs = {"axes": k} if k > 1 or b.draw(st.booleans()) else {}
    if b.draw(st.booleans()):
        attrs["eps"] = b.draw(float_attrs())
    ops = [x]
    trailing = t.shape[-k:]
    if all(isinstance(d, int) for d in trailing):
        for _ in range(b.draw(st.integers(0, 2 if op == "layer_norm" else 1))):
            ops.append(b.param(TensorType(t.dtype, trailing)))
    return b.add(op, ops, attrs)


def _to4d(b: Builder, x: str, t: TensorType) -> str:
    if t.rank == 4:
        return x
    shape = (t.shape[:1] + (1,) + t.shape[1:]) if t.rank == 3 else (1,) * (4 - t.rank) + t.shape
    return b.add("reshape", [x], {"shape": list(shape)})


def m_sdpa(b: Builder):
    v = b.pick(lambda t: t.dtype.is_float and t.rank <= 4)
    if v is None:
        return None
    q = _to4d(b, *v)
    qt = b.types[q]
    kv = q
    if b.draw(st.booleans()):  # grouped-query: twice the query heads
        q = b.add("cat", [q, q], {"dim": 1})
    ops = [q, kv, kv]
    mask = b.draw(st.sampled_from(["none", "bool", "float", "full"]))
    if mask == "bool":
        ops.append(b.param(TensorType(BOOL, (1, 1, 1, 1))))
    elif mask == "float":
        ops.append(b.param(TensorType(qt.dtype, (1,))))
    elif mask == "full":  # a [1, 1, L, L] constant: True/False, or a float such as -inf
        dt = b.draw(st.sampled_from([BOOL, qt.dtype]))
        L = qt.shape[2]
        ops.append(b.add("full", [], {"value": b.draw(_scalar_for(dt)), "dtype": dt, "shape": [1, 1, L, L]}))
    attrs = {"scale": b.draw(float_attrs())}
    if b.draw(st.booleans()):
        attrs["causal"] = b.draw(st.booleans())
    return b.add("sdpa", ops, attrs)


def m_reduce(b: Builder):
    op = b.draw(st.sampled_from(["sum", "mean", "amax", "amin"]))
    v = b.pick(lambda t: (t.dtype.is_float or op != "mean") and (op in ("sum", "mean") or all(map(_nonempty_static, t.shape))))
    if v is None:
        return None
    t = v[1]
    axes = b.draw(st.lists(st.integers(0, max(t.rank - 1, 0)), unique=True, max_size=t.rank)) if t.rank else []
    dims = [a - t.rank if b.draw(st.booleans()) else a for a in axes]
    attrs: dict[str, Any] = {"dims": dims}
    if b.draw(st.booleans()):
        attrs["keepdim"] = b.draw(st.booleans())
    return b.add(op, [v[0]], attrs)


def m_argmax(b: Builder):
    v = b.pick(lambda t: t.rank >= 1 and t.dtype != BOOL and all(map(_nonempty_static, t.shape)))
    if v is None:
        return None
    d = b.draw(st.integers(-v[1].rank, v[1].rank - 1))
    attrs = {"dim": d, "keepdim": b.draw(st.booleans())}
    return b.add("argmax", [v[0]], attrs)


def m_scan(b: Builder):
    op = b.draw(st.sampled_from(["cumsum", "softmax", "log_softmax"]))
    v = b.pick(lambda t: t.rank >= 1 and (op == "cumsum" or t.dtype.is_float))
    if v is None:
        return None
    return b.add(op, [v[0]], {"dim": b.draw(st.integers(-v[1].rank, v[1].rank - 1))})


def m_reshape(b: Builder):
    v = b.pick(lambda t: t.rank <= 3)
    if v is None:
        return None
    x, t = v
    how = b.draw(st.sampled_from(["flatten", "unsqueeze", "merge"]))
    if how == "flatten" or (how == "merge" and t.rank < 2):
        shape = [numel(t.shape)]
    elif how == "unsqueeze":
        i = b.draw(st.integers(0, t.rank))
        shape = list(t.shape[:i]) + [1] + list(t.shape[i:])
    else:
        i = b.draw(st.integers(0, t.rank - 2))
        shape = list(t.shape[:i]) + [mul(t.shape[i], t.shape[i + 1])] + list(t.shape[i + 2:])
    return b.add("reshape", [x], {"shape": shape})


def m_permute(b: Builder):
    v = b.pick()
    return None if v is None else b.add("permute", [v[0]], {"perm": b.draw(st.permutations(range(v[1].rank)))})


def m_expand(b: Builder):
    v = b.pick(lambda t: t.rank <= 3)
    if v is None:
        return None
    x, t = v
    shape = [d if d != 1 or b.draw(st.booleans()) else b.draw(st.sampled_from([3, b.syms[0]])) for d in t.shape]
    if b.draw(st.booleans()):
        shape = [b.draw(st.sampled_from([2, b.syms[0]]))] + shape
    return b.add("expand", [x], {"shape": shape})


def m_slice(b: Builder):
    v = b.pick(lambda t: t.rank >= 1)
    if v is None:
        return None
    x, t = v
    ax = b.draw(st.integers(0, t.rank - 1))
    size = t.shape[ax]
    dim = ax - t.rank if b.draw(st.booleans()) else ax
    if isinstance(size, int):
        start = b.draw(st.integers(0, size))
        end = b.draw(st.integers(start, size))
        return b.add("slice", [x], {"dim": dim, "start": start, "end": end, "step": b.draw(st.integers(1, 3))})
    if len(symbols(size)) != 1 or size not in b.syms:  # bounds stay valid for symbols >= 2
        return b.add("slice", [x], {"dim": dim, "end": size})
    start = b.draw(st.integers(0, 1))
    end = b.draw(st.sampled_from([size, sub(size, 1)]))
    return b.add("slice", [x], {"dim": dim, "start": start, "end": end})


def m_cat(b: Builder):
    v = b.pick(lambda t: t.rank >= 1)
    if v is None:
        return None
    x, t = v
    ax = b.draw(st.integers(0, t.rank - 1))
    parts = [x] * b.draw(st.integers(1, 2))
    if b.draw(st.booleans()):  # a one-wide constant strip: 2*s0 + 1 and friends
        shape = [1 if i == ax else d for i, d in enumerate(t.shape)]
        parts.append(b.add("full", [], {"value": b.draw(_scalar_for(t.dtype)), "dtype": t.dtype, "shape": shape}))
    return b.add("cat", b.draw(st.permutations(parts)), {"dim": ax - t.rank if b.draw(st.booleans()) else ax})


def m_gather(b: Builder):
    v = b.pick(lambda t: t.rank >= 1)
    if v is None:
        return None
    x, t = v
    ax = b.draw(st.integers(0, t.rank - 1))
    if not _nonempty_static(t.shape[ax]):
        return None
    # off the axis the index may not be longer than x (torch raises): 1 only where x's size is a known >= 1
    shape = tuple(b.draw(st.integers(0, 3)) if i == ax else (min(1, d) if isinstance(d, int) else 0)
                  for i, d in enumerate(t.shape))
    idx = b.param(TensorType(b.draw(st.sampled_from([I64, I32])), shape), zeros=True, use=False)
    return b.add("gather", [x, idx], {"dim": ax})


def m_index(b: Builder):
    v = b.pick(lambda t: t.rank >= 1 and _nonempty_static(t.shape[0]))
    if v is None:
        return None
    idx = b.param(TensorType(I64, tuple(b.draw(st.lists(st.integers(0, 3), max_size=2)))), zeros=True, use=False)
    return b.add("index", [v[0], idx])


def m_embedding(b: Builder):
    ids = [r for r in b.safe_index]
    if not ids:
        return None
    w = b.param(TensorType(b.draw(st.sampled_from(FLOATS + PACKED[:1])), (b.draw(st.integers(2, 5)), b.draw(st.integers(1, 4)))),
                use=False)
    return b.add("embedding", [w, b.draw(st.sampled_from(sorted(ids)))])


MAKERS = [m_unary_float, m_unary_num, m_logical, m_binary, m_binary, m_where, m_cast, m_full, m_arange, m_linear, m_matmul,
          m_norm, m_sdpa, m_reduce, m_argmax, m_scan, m_reshape, m_permute, m_expand, m_slice, m_cat, m_gather,
          m_index, m_embedding]


@st.composite
def graphs(draw, max_nodes: int = 8) -> ir.Graph:
    """A random valid graph (weights bound) built with the Python API."""
    b = Builder(draw)
    b.syms = ["s0", "s1"][: draw(st.integers(1, 2))]
    k = draw(st.sampled_from([1, 2, 4, 8]))
    lead = draw(st.lists(st.sampled_from([1, 2, 3]), max_size=1))
    b.input(TensorType(draw(st.sampled_from(FLOATS)), tuple(lead) + ("s0", k)))
    if len(b.syms) > 1:
        b.input(TensorType(draw(st.sampled_from(FLOATS)), ("s1", "s0")))
    if draw(st.booleans()):
        b.safe_index.add(b.input(TensorType(draw(st.sampled_from([I64, I32])), tuple(lead) + ("s0",))))
    if draw(st.booleans()):
        b.input(TensorType(BOOL, ("s0", k)))
    if draw(st.booleans()):
        b.input(TensorType(F32, (add(mul(2, "s0"), 1),)))  # a derived dim, bound by the first input
    for _ in range(draw(st.integers(0, 2))):  # params nobody uses: packed and awkward storage types
        b.param(TensorType(draw(st.sampled_from(PACKED + PLAIN)), tuple(draw(st.lists(st.integers(0, 5), max_size=3)))),
                use=False)
    for _ in range(draw(st.integers(1, max_nodes))):
        for _attempt in range(5):
            if draw(st.sampled_from(MAKERS))(b) is not None:
                break
    refs = [r for r, _ in b.values if r.startswith("%")]
    node_refs = [n.ref for n in b.g.nodes]
    outs = draw(st.lists(st.sampled_from(node_refs or refs), min_size=1, max_size=3, unique=True))
    if draw(st.integers(0, 9)) == 0:
        outs.append(draw(st.sampled_from(refs)))  # an input (or a repeated value) returned too
    b.g.outputs = outs
    return b.g


@st.composite
def run_inputs(draw, g: ir.Graph) -> list[np.ndarray]:
    """Arrays for g's inputs with every symbol bound to 2 or 3; int inputs hold 0 or 1 (valid ids)."""
    env = {s: draw(st.integers(2, 3)) for s in ("s0", "s1")}
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _, t in g.inputs:
        shape = tuple(ir.shapes.evaluate(d, env) for d in t.shape)
        if t.dtype == BOOL:
            out.append(rng.random(shape) < 0.5)
        elif t.dtype.is_float:
            out.append(rng.standard_normal(shape).astype(np.float32).astype(t.dtype.np))
        else:
            out.append(rng.integers(0, 2, size=shape).astype(t.dtype.np))
    return out
