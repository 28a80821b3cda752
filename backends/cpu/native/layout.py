"""Where a value lives in the native step: its root's storage, an element offset and strides.

Shapes, strides and offsets are sympy polynomials in the graph's symbols (s0, s1, ...). Views
(reshape of a contiguous value, permute, expand, slice, an in-place index_copy) change only the
layout; every other op writes a fresh, C-contiguous root. `CDims` prints the polynomials as C
int64 arithmetic over the entry's symbol variables (`n0`, `n1`, ...), never from model text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import sympy

import ir
from ir.errors import CompileError
from ir.shapes import expr

from ..source import DimPrinter

CTYPE = {"f32": "float", "f64": "double", "i64": "int64_t", "i32": "int32_t", "i16": "int16_t", "i8": "int8_t",
         "u8": "uint8_t", "bool": "uint8_t"}  # the dtypes native ops handle (f16/bf16 fall back)
_UNSAFE_COMMENT = re.compile(r"[^A-Za-z0-9_.:/\-\[\]{}(),=%@ +<>]")


def ctype(t: ir.TensorType | ir.DType) -> str | None:
    dt = t.dtype if isinstance(t, ir.TensorType) else t
    return CTYPE.get(dt.name)


def c_comment(text: str, limit: int = 200) -> str:
    """Text safe inside /* */: a small character set (no '*', so no '*/'), one line, truncated."""
    s = _UNSAFE_COMMENT.sub("_", text.replace("\n", " "))
    return s if len(s) <= limit else s[:limit - 3] + "..."


def sym_shape(t: ir.TensorType) -> tuple[sympy.Expr, ...]:
    return tuple(expr(d) for d in t.shape)


def contiguous_strides(shape: tuple[sympy.Expr, ...]) -> tuple[sympy.Expr, ...]:
    out, acc = [], sympy.Integer(1)
    for d in reversed(shape):
        out.append(acc)
        acc = sympy.expand(acc * d)
    return tuple(reversed(out))


def numel(shape: tuple[sympy.Expr, ...]) -> sympy.Expr:
    return sympy.expand(math.prod(shape, start=sympy.Integer(1)))


def same(a: sympy.Expr, b: sympy.Expr) -> bool:
    return sympy.expand(a - b) == 0


@dataclass(frozen=True)
class Layout:
    root: str  # the ref that owns the storage (a node, a graph input `%x` or a parameter `@w`)
    shape: tuple[sympy.Expr, ...]
    strides: tuple[sympy.Expr, ...]  # in elements
    offset: sympy.Expr = sympy.Integer(0)  # elements from the start of the root's storage

    @staticmethod
    def fresh(root: str, shape: tuple[sympy.Expr, ...]) -> "Layout":
        return Layout(root, shape, contiguous_strides(shape))

    @property
    def contiguous(self) -> bool:
        """C-contiguous (strides of size-1 dims do not matter)."""
        want = contiguous_strides(self.shape)
        return all(d == 1 or same(s, w) for d, s, w in zip(self.shape, self.strides, want))

    def broadcast_to(self, shape: tuple[sympy.Expr, ...]) -> tuple[sympy.Expr, ...]:
        """Strides to read this value at `shape`'s coordinates (NumPy broadcasting: 0 along new or size-1 dims)."""
        lead = len(shape) - len(self.shape)
        out = [sympy.Integer(0)] * lead
        for d, s, want in zip(self.shape, self.strides, shape[lead:]):
            out.append(sympy.Integer(0) if d == 1 and want != 1 else s)
        return tuple(out)


class CDims(DimPrinter):
    """Polynomials as C int64 expressions: symbols are the entry's `n<i>`; no `**`."""

    def expr(self, e: sympy.Expr) -> str:
        e = sympy.expand(e)
        if e.is_Integer:
            v = int(e)
            return f"INT64_C({v})" if abs(v) >= 2 ** 31 else str(v)
        if e.is_Pow and e.exp.is_Integer and int(e.exp) >= 0:
            return "*".join([self._factor(e.base)] * int(e.exp)) or "1"
        if e.is_Symbol and e.name not in self.symbols:
            raise CompileError(f"symbol {e.name!r} is not bound by any input dimension")
        return super().expr(e)

    def c(self, e: sympy.Expr | int) -> str:
        return self.expr(sympy.Integer(e) if isinstance(e, int) else e)
