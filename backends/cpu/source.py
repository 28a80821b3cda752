"""Printing generated Python safely: identifiers, literals, dims and comments.

Nothing a model provides reaches generated code as code. Identifiers are generated (`x0` inputs,
`w3` weights, `v12` values, `k7` kernels, `n0` symbols, `d1` derived dims,
`t5_0` temporaries); IR names appear only in comments, reduced by `comment_name` to
[A-Za-z0-9_.:/-]; literals are printed from Python values (`lit`), never copied from text; and
symbolic dims are printed from the sympy tree of their (grammar-parsed) polynomial (`DimPrinter`).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import sympy

import ir
from ir.dtypes import DType
from ir.errors import CompileError
from ir.shapes import Dim, expr

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/-]")
COMMENT_NAME_MAX = 40

# numpy storage name -> source text; `bfloat16` is imported by the module header.
_NP_CODE = {"float32": "np.float32", "float16": "np.float16", "float64": "np.float64", "int64": "np.int64",
            "int32": "np.int32", "int16": "np.int16", "int8": "np.int8", "uint8": "np.uint8", "bool": "np.bool_",
            "bfloat16": "bfloat16"}


def comment_name(name: str) -> str:
    """An IR name as it may appear in a comment: safe characters only, truncated."""
    s = _UNSAFE.sub("_", name)
    if len(s) <= COMMENT_NAME_MAX:
        return s
    head = COMMENT_NAME_MAX // 3  # keep both ends: "model.layers.0...up_proj.weight.lut.bits"
    return s[:head] + "..." + s[-(COMMENT_NAME_MAX - 3 - head):]


def dtype_code(dt: DType) -> str:
    """The numpy type that holds `dt`'s values (sub-byte codes live unpacked in int8/uint8)."""
    try:
        return _NP_CODE[dt.np_name]
    except KeyError:
        raise CompileError(f"dtype {dt.name} (numpy {dt.np_name}) has no source form in backends/cpu/source.py; "
                           "add it to _NP_CODE") from None


def lit(v: Any) -> str:
    """A Python literal for an attribute value (bool, int, float, dtype, or a list of those)."""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            return "np.nan"
        if math.isinf(v):
            return "np.inf" if v > 0 else "-np.inf"
        return repr(float(v))  # repr round-trips a float exactly, -0.0 and 5e-324 included
    if isinstance(v, DType):
        return dtype_code(v)
    if isinstance(v, (list, tuple)):
        return tup([lit(x) for x in v])
    raise CompileError(f"attribute value of type {type(v).__name__} has no literal form in generated code")


def tup(items: Iterable[str]) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


class DimPrinter:
    """Dims as Python int expressions over generated symbol names. Each symbol is bound once at the top
    of forward (`n0 = x0.shape[1]`); each derived dim (`2*s0 + 1`) is computed once into `d<k>`."""

    def __init__(self, symbols: dict[str, str]) -> None:
        self.symbols = symbols  # IR symbol -> generated name
        self.derived: dict[str, str] = {}  # canonical dim text -> generated name
        self.defs: list[str] = []  # `d0 = 2*n0 + 1` lines, in order of first use

    def __call__(self, d: Dim) -> str:
        if isinstance(d, int):
            return str(d)
        if d in self.symbols:
            return self.symbols[d]
        if d not in self.derived:
            name = f"d{len(self.derived)}"
            self.defs.append(f"{name} = {self.expr(expr(d))}")
            self.derived[d] = name
        return self.derived[d]

    def shape(self, dims: Iterable[Dim]) -> str:
        return tup(self(d) for d in dims)

    def expr(self, e: sympy.Expr) -> str:
        """Integer polynomial -> Python arithmetic; anything else is refused (dims are polynomials)."""
        if e.is_Integer:
            return str(int(e))
        if e.is_Symbol:
            if e.name not in self.symbols:
                raise CompileError(f"symbol {e.name!r} is not bound by any input dimension")
            return self.symbols[e.name]
        if e.is_Add:
            terms = sorted(e.args, key=lambda t: (t.is_Number, sympy.default_sort_key(t)))
            out = self.expr(terms[0])
            for t in terms[1:]:
                neg = t.could_extract_minus_sign()
                out += (" - " if neg else " + ") + self._factor(-t if neg else t)
            return out
        if e.is_Mul:
            return "*".join(self._factor(a) for a in e.args)
        if e.is_Pow and e.exp.is_Integer and int(e.exp) >= 0:
            return f"{self._factor(e.base)}**{int(e.exp)}"
        raise CompileError(f"dimension {e} is not an integer polynomial; cannot print it")

    def _factor(self, e: sympy.Expr) -> str:
        s = self.expr(e)
        return f"({s})" if e.is_Add or (e.is_Integer and int(e) < 0) else s


def symbol_names(g: ir.Graph) -> dict[str, str]:
    """Each symbolic input dim's generated name (`n0`, `n1`, ...), in order of first appearance."""
    symbols: dict[str, str] = {}
    for _, t in g.inputs:
        for d in t.shape:
            if isinstance(d, str) and d.isidentifier() and d not in symbols:
                symbols[d] = f"n{len(symbols)}"
    return symbols


def bind_symbols(g: ir.Graph, inputs: list[str], symbols: dict[str, str]) -> list[str]:
    """`n0 = x0.shape[1]` lines: each symbol from the first input dim that is exactly that symbol."""
    lines, bound = [], set()
    for (_, t), x in zip(g.inputs, inputs):
        for j, d in enumerate(t.shape):
            if isinstance(d, str) and d in symbols and d not in bound:
                bound.add(d)
                lines.append(f"{symbols[d]} = {x}.shape[{j}]")
    return lines


class Names:
    """Generated identifiers: one counter per prefix."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        i = self.count.get(prefix, 0)
        self.count[prefix] = i + 1
        return f"{prefix}{i}"


class NodeEmit:
    """What a template sees of one node, and where it writes.

    `args` are operand expressions (`x0`, `w3`, `v5`), `types` their types, `dst` the result's
    variable. A template appends statements with `line()` and leaves the result in `dst`. It may
    write into a pooled buffer of the result's exact type: `out()` gives `", out=v3"` (or `""` when
    none is offered) and `buf()` the buffer's name; either marks the buffer used, so the result *is*
    that buffer. Temporaries from `tmp()` are deleted after the node.
    """

    def __init__(self, node: ir.Node, args: list[str], types: list[ir.TensorType], dst: str, dims: DimPrinter,
                 buffer: str | None) -> None:
        self.node, self.args, self.types, self.dst = node, args, types, dst
        self.type: ir.TensorType = node.type
        self.attrs: dict[str, Any] = node.attrs
        self.dim = dims
        self.lines: list[str] = []
        self.temps: list[str] = []
        self._buffer, self.used_buffer = buffer, False

    def line(self, s: str) -> None:
        self.lines.append(s)

    def tmp(self) -> str:
        name = f"t{self.dst[1:]}_{len(self.temps)}"
        self.temps.append(name)
        return name

    def buf(self) -> str | None:
        if self._buffer is not None:
            self.used_buffer = True
        return self._buffer

    def out(self) -> str:
        b = self.buf()
        return f", out={b}" if b else ""

    def shape(self, dims: Iterable[Dim] | None = None) -> str:
        return self.dim.shape(self.type.shape if dims is None else dims)
