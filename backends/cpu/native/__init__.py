"""`target="cpu"`'s native mode: the whole graph as one C library with one entry, `step`.

    exe = build(g)                # NativeExecutable; exe.source is the C (step.c), exe.fallbacks its Python nodes
    outs = exe([x, ...])          # like ir.run(g, [x, ...])

codegen.py writes the C (one function per node, one OpenMP team per step, an arena for every
intermediate buffer), lowering.py is the registry other ops plug into (`register_c_op`), ops.py and
team.py the lowerings and kernels, layout.py strides and C dims. Per call Python binds the inputs'
addresses and the symbols, allocates the outputs, and makes one ctypes call; a node without a C
lowering runs in Python through a callback between two thread teams (`fallbacks`).
"""
from __future__ import annotations

import ctypes
import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import sympy

import ir
from ir.errors import TritiumError
from ir.interpreter import RuntimeShapeError, bind_inputs, node_error

from .. import cc
from ..kernels import kernel_for, kernel_symbols
from . import gguf, lut, moe  # noqa: F401  (register the GGUF, LUT and MoE ops' lowerings)
from .codegen import Fallback, NativeSource, generate
from .layout import sym_shape
from .lowering import C_OPS, CLowering, Ctx, register_c_op

SOURCE_FILE = "step.c"
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))
ERRORS = {1: (RuntimeShapeError, "an index is out of range"), 2: (MemoryError, "out of memory")}  # ERR_* (ckernel.py)


def available() -> bool:
    """A C compiler with OpenMP: the native mode's condition (else the NumPy module runs)."""
    try:
        cc.compiler()
    except cc.NoCompilerError:
        return False
    return "openmp" in cc.features()


def _shape_fn(symbols: dict[str, str], shapes: list[tuple[sympy.Expr, ...]]) -> Callable[..., list[tuple[int, ...]]]:
    """A Python function of the symbols' values -> the shapes (printed from the polynomials)."""
    syms = [sympy.Symbol(s) for s in symbols]
    return sympy.lambdify(syms, [tuple(s) for s in shapes], modules="math") if syms else (lambda: [tuple(int(d) for d in s) for s in shapes])


class NativeExecutable:
    """The compiled step: call it with the graph's input arrays; `.source` is its C."""

    def __init__(self, g: ir.Graph, gen: NativeSource, profile: bool = False) -> None:
        self.graph, self.source, self.stats = g, gen.source, gen.stats
        self.fallbacks = [(f.node.name, f.node.op) for f in gen.fallbacks]
        # profiling: thread 0 adds each node's time (its barrier wait included) to a table `profile()` reads
        lib = cc.build(f"#define TRITIUM_PROFILE {max(len(g.nodes), 1)}\n" + gen.source if profile else gen.source,
                       "native_step")
        self._prof = None
        if profile:
            self._prof = np.zeros(max(len(g.nodes), 1))
            self._prof_read = lib.prof_read
            self._prof_read.argtypes = [ctypes.c_void_p]
        self._fn = lib.step
        p = ctypes.c_void_p
        self._fn.argtypes = [p, p, p, p, p, ctypes.c_int64, CALLBACK]
        self._fn.restype = ctypes.c_int64
        self._arity = len(g.inputs)
        self._dtypes = [t.dtype.np for _, t in g.inputs]
        self._ranks = [t.rank for _, t in g.inputs]
        self._bind = []  # (input, axis) per symbol, in dims order
        for s in gen.symbols:
            self._bind.append(next((i, j) for i, (_, t) in enumerate(g.inputs) for j, d in enumerate(t.shape) if d == s))
        self._in_shapes = _shape_fn(gen.symbols, [sym_shape(t) for _, t in g.inputs])
        types = self._types = g.types()  # the callback reads its node's operand types
        self._outputs = gen.outputs
        self._out_shapes = _shape_fn(gen.symbols, [sym_shape(types[o]) for o in g.outputs])
        self._out_dtypes = [types[o].dtype.np for o in g.outputs]
        self._weights = [np.ascontiguousarray(g.weights[w]) for w in g.params] + gen.constants  # held: C reads them
        self._w = (p * max(len(self._weights), 1))(*[a.ctypes.data for a in self._weights])
        self._in = (p * max(self._arity, 1))()
        self._out = (p * max(len(g.outputs), 1))()
        self._dims = np.zeros(max(len(gen.symbols), 1), np.int64)
        self._held: list[Any] = [None] * self._arity  # the arrays whose addresses _in holds
        self._arena = np.zeros(0, np.uint8)
        self._arena_at, self._arena_bytes = 0, 0
        self._fallbacks = gen.fallbacks
        self._fallback_kernels = [kernel_for(f.node, g) for f in gen.fallbacks]
        self._kernels = {f"k{i}": k for i, k in enumerate(self._fallback_kernels)}  # generate.py's BLAS limit reads these
        self._syms = [kernel_symbols(f.node) for f in gen.fallbacks]
        self._env: dict[str, int] = {}
        self._error: BaseException | None = None
        self._cb = CALLBACK(self._callback)
        self._args = (ctypes.addressof(self._in), ctypes.addressof(self._out), ctypes.addressof(self._w),
                      self._dims.ctypes.data)
        if self.fallbacks:
            warnings.warn(f"target='cpu' (native): {len(self.fallbacks)} node(s) without a C lowering run in Python: "
                          + ", ".join(f"%{n} ({op})" for n, op in self.fallbacks[:8])
                          + (" ..." if len(self.fallbacks) > 8 else ""), stacklevel=3)

    def profile(self) -> dict[str, float]:
        """Seconds per node (thread 0's view: its barrier waits included) since the last read; `build(g,
        profile=True)` only."""
        if self._prof is None:
            raise RuntimeError("this step was built without profiling: build(g, profile=True)")
        self._prof_read(self._prof.ctypes.data)
        return {n.name: float(t) for n, t in zip(self.graph.nodes, self._prof) if t}

    @property
    def files(self) -> dict[str, str]:
        """What `tritium compile --emit DIR` writes: the C of the whole step."""
        return {SOURCE_FILE: self.source}

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != self._arity:
            bind_inputs(self.graph, inputs)  # raises the reference runtime's error
        xs = list(inputs)
        for i, x in enumerate(xs):
            if x is not self._held[i]:
                if not isinstance(x, np.ndarray) or x.ndim != self._ranks[i] or x.dtype != self._dtypes[i]:
                    bind_inputs(self.graph, [np.asarray(a) for a in xs])
                    raise RuntimeShapeError(f"input {i} does not fit graph @{self.graph.name}")
                if not x.flags.c_contiguous:
                    x = xs[i] = np.ascontiguousarray(x)
                self._in[i] = x.ctypes.data if x.size else 0
                self._held[i] = x
        dims = [xs[i].shape[j] for i, j in self._bind]
        if self._in_shapes(*dims) != [x.shape for x in xs]:
            bind_inputs(self.graph, xs)
            raise RuntimeShapeError(f"inputs do not fit graph @{self.graph.name}")
        self._dims[:len(dims)] = dims
        outs: list[np.ndarray] = []
        for (kind, k), shape, dt in zip(self._outputs, self._out_shapes(*dims), self._out_dtypes):
            if kind == "input":
                outs.append(xs[k])
            else:
                a = np.empty(shape, dt)
                self._out[k] = a.ctypes.data if a.size else 0
                outs.append(a)
        if self._fallbacks:
            self._env = dict(zip(self._symbol_names(), dims))
        while True:
            r = self._fn(*self._args, self._arena_at, self._arena_bytes, self._cb)
            if r <= 0:
                break
            self._grow(r)
        if r < 0:
            err, self._error = self._error, None
            if err is not None:
                raise err
            code, at = -r & 255, (-r >> 8) - 1  # codegen.py's ERR_AT: the code and the node that set it
            cls, what = ERRORS.get(code, (TritiumError, f"error {code}"))
            n = self.graph.nodes[at] if 0 <= at < len(self.graph.nodes) else None
            where = f"%{n.name} = {n.op}" if n is not None else f"graph @{self.graph.name}"
            raise cls(f"{where}: {what} (target='cpu', native step)")
        return outs

    def _symbol_names(self) -> list[str]:
        from ..source import symbol_names

        return list(symbol_names(self.graph))

    def _grow(self, need: int) -> None:
        self._arena = np.empty(need + 64, np.uint8)
        at = self._arena.ctypes.data
        self._arena_at = at + (-at) % 64
        self._arena_bytes = need

    def _callback(self, k: int, ptrs: Any) -> int:
        """Run fallback node k in Python: wrap its operands (by address, through their strides), write its result."""
        try:
            f: Fallback = self._fallbacks[k]
            types = self._types
            args = [_wrap(ptrs[j], types[o], lay, self._env) for j, (o, lay) in enumerate(zip(f.node.operands, f.layouts))]
            syms = self._syms[k]
            kernel = self._fallback_kernels[k]
            out = kernel(*args, syms=tuple(self._env[s] for s in syms)) if syms else kernel(*args)
            shape = tuple(ir.shapes.evaluate(d, self._env) for d in f.node.type.shape)
            dst = _array(ptrs[len(args)], shape, [_c_strides(shape)], f.node.type.dtype.np)
            np.copyto(dst, np.asarray(out), casting="no")
            return 0
        except Exception as e:  # re-raised by __call__ once the C returns, typed and naming the node
            self._error = node_error(e, self._fallbacks[k].node, "target='cpu' (native) fallback")
            if self._error is not e:
                self._error.__cause__ = e
            return 1
        except BaseException as e:  # KeyboardInterrupt, ...: as they are
            self._error = e
            return 1


def _c_strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def _wrap(ptr: int | None, t: ir.TensorType, lay: Any, env: dict[str, int]) -> np.ndarray:
    def value(e: sympy.Expr) -> int:
        return int(e.subs({x: env[x.name] for x in e.free_symbols}))
    shape = tuple(value(d) for d in lay.shape)
    strides = [value(s) for s in lay.strides]
    return _array(ptr, shape, [strides], t.dtype.np)


def _array(ptr: int | None, shape: tuple[int, ...], strides: list[list[int]], dt: Any) -> np.ndarray:
    dt = np.dtype(dt)
    if ptr is None or math.prod(shape) == 0:
        return np.empty(shape, dt)
    extent = 1 + sum((d - 1) * s for d, s in zip(shape, strides[0]))
    buf = (ctypes.c_char * (extent * dt.itemsize)).from_address(ptr)
    return np.ndarray(shape, dt, buffer=buf, strides=[s * dt.itemsize for s in strides[0]])


def build(g: ir.Graph, profile: bool = False) -> NativeExecutable:
    """Compile `g` to one C library (raises cc.NoCompilerError without a compiler); `profile=True` adds
    per-node timers (`NativeExecutable.profile()`)."""
    missing = [p for p in g.params if p not in g.weights]
    if missing:
        raise ir.VerifyError(f"parameter(s) {', '.join('@' + m for m in missing[:5])} have no weights bound; "
                             "load them (compiler.load) or set graph.weights")
    return NativeExecutable(g, generate(g), profile)


__all__ = ["NativeExecutable", "build", "available", "register_c_op", "CLowering", "Ctx", "C_OPS", "SOURCE_FILE"]
