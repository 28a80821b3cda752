"""Tensor types and symbolic dimensions.

A dimension (`Dim`) is an `int` or a polynomial in named symbols written as text, e.g. `"s0"` or
`"2*s0 + 1"`. Symbolic text is always kept in sympy's canonical form so that two equal dims are
equal strings; `dim()` builds that form. Symbols are bound to ints at run time from graph inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Union

import sympy

from .dtypes import DType

Dim = Union[int, str]


def canon(expr: sympy.Expr) -> Dim:
    expr = sympy.expand(expr)
    if expr.is_Integer:
        return int(expr)
    if not expr.is_polynomial() or any(not c.is_Integer for c in sympy.Poly(expr).coeffs()):
        raise ValueError(f"dimension {expr} is not an integer polynomial in symbols")
    return str(expr)


@lru_cache(maxsize=4096)
def _expr(d: str) -> sympy.Expr:
    from .parser import parse_dim  # the IR grammar parses dims: no eval of text, ever

    return parse_dim(d)


def expr(d: Dim) -> sympy.Expr:
    return sympy.Integer(d) if isinstance(d, int) else _expr(d)


def dim(d: Dim | sympy.Expr) -> Dim:
    """Canonical form of a dim given as int, text or sympy expression."""
    if isinstance(d, bool):
        raise TypeError("a dimension cannot be a bool")
    if isinstance(d, int):
        return d
    return canon(d if isinstance(d, sympy.Expr) else expr(d))


def add(a: Dim, b: Dim) -> Dim:
    return a + b if isinstance(a, int) and isinstance(b, int) else canon(expr(a) + expr(b))


def sub(a: Dim, b: Dim) -> Dim:
    return a - b if isinstance(a, int) and isinstance(b, int) else canon(expr(a) - expr(b))


def mul(a: Dim, b: Dim) -> Dim:
    return a * b if isinstance(a, int) and isinstance(b, int) else canon(expr(a) * expr(b))


def numel(shape: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in shape:
        out = mul(out, d)
    return out


def div_exact(a: Dim, b: Dim) -> Dim | None:
    """a / b when it is a polynomial, else None."""
    if isinstance(a, int) and isinstance(b, int):
        return a // b if b and a % b == 0 else None
    q, r = sympy.div(expr(a), expr(b))
    return canon(q) if r == 0 and q.is_polynomial() and _int_coeffs(q) else None


def _int_coeffs(e: sympy.Expr) -> bool:
    return e.is_Integer or all(c.is_Integer for c in sympy.Poly(e).coeffs())


def symbols(d: Dim) -> set[str]:
    return set() if isinstance(d, int) else {s.name for s in expr(d).free_symbols}


def evaluate(d: Dim, env: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    e = expr(d)
    missing = {s.name for s in e.free_symbols} - env.keys()
    if missing:
        raise KeyError(f"symbol(s) {', '.join(sorted(missing))} are not bound")
    return int(e.subs({s: env[s.name] for s in e.free_symbols}))


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy broadcasting; a symbol broadcasts against 1 (export guarantees symbols are >= 2)."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise ValueError(f"shapes {fmt_shape(a)} and {fmt_shape(b)} do not broadcast")
    return tuple(reversed(out))


def normalize_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def fmt_dim(d: Dim) -> str:
    return str(d)


def fmt_shape(shape: Iterable[Dim]) -> str:
    return "[" + ", ".join(fmt_dim(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorType:
    """`f32[2, s0, 64]`: an element type and a shape whose dims may be symbolic."""

    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        shape = tuple(dim(d) for d in self.shape)
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise ValueError(f"negative dimension in {self.dtype}{fmt_shape(shape)}")
        object.__setattr__(self, "shape", shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> Dim:
        return numel(self.shape)

    def nbytes(self) -> int:
        """Storage bytes of a static tensor (sub-byte dtypes packed along the last axis)."""
        assert self.is_static, self
        if not self.dtype.packed:
            return math.prod(self.shape) * self.dtype.bits // 8  # type: ignore[arg-type]
        from .dtypes import packed_len

        rows = math.prod(self.shape[:-1])  # type: ignore[arg-type]
        last = self.shape[-1] if self.shape else 1
        return rows * packed_len(last, self.dtype)  # type: ignore[arg-type]

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dt: DType) -> "TensorType":
        return TensorType(dt, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt_shape(self.shape)}"
