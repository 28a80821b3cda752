"""Text -> IR with lark (LALR). Every error is a ParseError with line and column."""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import lark
import sympy

from .dtypes import DTYPES
from .errors import ParseError, VerifyError
from .graph import Graph, Node
from .shapes import TensorType, canon


class DimText(str):
    """An unquoted dimension expression in attribute text (`s0`, `2*s0 + 1`, `f32`), as opposed
    to a quoted string: keeps `shape = [s0]` and `mode = "s0"` apart through a round trip."""


@lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", start=["start", "dimexpr"], propagate_positions=True,
                     maybe_placeholders=True)


def _name(tok: lark.Token) -> str:
    body = tok[1:]
    return _unquote(body, tok, 1) if body.startswith('"') else body


def _unquote(s: str, tok: lark.Token, skip: int = 0) -> str:
    """A quoted string's value; the grammar lets through escapes and control characters JSON rejects."""
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise ParseError(f"bad quoted string {tok}: {e.msg}", tok.line or 1, (tok.column or 1) + skip + e.pos) from None


# Limits that keep a hostile or mistyped dim from taking unbounded time or memory (issue 27). Real dims
# are small polynomials (s0, 2*s0 + 1, s0*s1) of int64 sizes.
MAX_DIM = 2**62          # largest |integer| or |coefficient| in a dim
MAX_DIGITS = 19          # digits of an integer literal in a dim or attribute
MAX_DEGREE = 4           # total degree of a dim polynomial
MAX_TERMS = 32           # terms of a dim polynomial, expanded
MAX_NESTING = 64         # nested attribute lists


def _bounded(e: sympy.Expr, degree: bool = False) -> sympy.Expr:
    """`e` unchanged if its size is within the limits above, else ValueError (before it can grow)."""
    if e.is_Integer:
        if abs(int(e)) > MAX_DIM:
            raise ValueError(f"dimension value {'-' if e < 0 else ''}2**{abs(int(e)).bit_length() - 1}+ exceeds "
                             f"the limit of 2**62")
        return e
    terms = len(sympy.Add.make_args(e))
    if terms > MAX_TERMS:
        raise ValueError(f"dimension polynomial of more than {MAX_TERMS} terms")
    if degree:  # products and powers: the expanded size is bounded by the terms and the degree
        p = sympy.Poly(e)
        if p.total_degree() > MAX_DEGREE:
            raise ValueError(f"dimension polynomial of degree > {MAX_DEGREE}; dims are small polynomials like 2*s0 + 1")
        if len(p.terms()) > MAX_TERMS:
            raise ValueError(f"dimension polynomial of more than {MAX_TERMS} terms")
    return e


class _Dims(lark.visitors.Transformer_NonRecursive):
    """Dimension subtrees -> sympy expressions (non-recursive: nesting depth is data, not stack). Every
    step is bounded, so `s0**999999999` or 34 chained squares fail at once instead of exhausting memory."""

    def dint(self, c):
        if len(c[0]) > MAX_DIGITS:
            raise ValueError(f"integer literal of {len(c[0])} digits; at most {MAX_DIGITS} (int64)")
        return _bounded(sympy.Integer(int(c[0])))

    def dsym(self, c):
        return sympy.Symbol(str(c[0]), integer=True, positive=True)

    def dneg(self, c):
        return -c[0]

    def dadd(self, c):
        return _bounded(c[0] + c[1])

    def dsub(self, c):
        return _bounded(c[0] - c[1])

    def dmul(self, c):
        return _bounded(c[0] * c[1], degree=True)

    def dpow(self, c):
        k = int(c[1]) if len(c[1]) <= 2 else 100
        if k > 62 or (k > MAX_DEGREE and not c[0].is_Integer):
            raise ValueError(f"exponent {str(c[1])[:20]} in a dimension is too large")
        n = len(sympy.Add.make_args(c[0]))
        if math.comb(n + k - 1, k) > MAX_TERMS:  # the terms (a + b + ...)**k expands to
            raise ValueError(f"dimension polynomial of more than {MAX_TERMS} terms")
        return _bounded(c[0] ** k, degree=True)


def parse_dim(text: str) -> sympy.Expr:
    try:
        return _Dims().transform(_lark().parse(text, start="dimexpr"))
    except lark.exceptions.VisitError as e:
        raise ValueError(f"bad dimension expression {text[:80]!r}: {e.orig_exc}") from None
    except lark.exceptions.LarkError as e:
        raise ValueError(f"bad dimension expression {text[:80]!r}: {e}") from None


def _err(msg: str, meta: Any, lines: list[str]) -> ParseError:
    line, col = getattr(meta, "line", 0) or 0, getattr(meta, "column", 0) or 0
    return ParseError(msg, line, col, lines[line - 1] if 0 < line <= len(lines) else "")


def parse(text: str, verify: bool = True) -> Graph:
    """Parse IR text into a Graph (weights unbound). Verifies it unless `verify=False`."""
    from .ops import OPS

    lines = text.splitlines()
    try:
        tree = _lark().parse(text, start="start")
    except lark.exceptions.UnexpectedInput as e:
        expected = sorted(getattr(e, "expected", None) or getattr(e, "allowed", None) or [])
        tok = getattr(e, "token", None)
        what = f"unexpected {tok!r}" if tok is not None else "unexpected input"
        if tok is not None and getattr(tok, "type", "") == "$END":
            what = "unexpected end of input"
        hint = f"; expected one of {', '.join(expected[:8])}" if expected else ""
        raise ParseError(what + hint, e.line, e.column, lines[e.line - 1] if 0 < e.line <= len(lines) else "") from None
    except lark.exceptions.LarkError as e:  # lexer/grammar errors without position
        raise ParseError(str(e)) from None

    dims = _Dims()

    def to_type(t: lark.Tree) -> TensorType:
        name = str(t.children[0])
        if name not in DTYPES:
            raise _err(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}", t.children[0], lines)
        try:
            return TensorType(DTYPES[name], tuple(_dim(dims, d) for d in t.children[1:] if d is not None))
        except ValueError as e:  # a non-polynomial or negative dimension
            raise _err(str(e), t.meta, lines) from None

    def value(t: Any, depth: int = 0) -> Any:
        kind = t.data
        if depth > MAX_NESTING:
            raise _err(f"attribute lists nested deeper than {MAX_NESTING}", t.meta, lines)
        if kind == "dimval":
            try:
                d = _dim(dims, t.children[0])
            except ValueError as e:
                raise _err(str(e), t.meta, lines) from None
            return d if isinstance(d, int) else DimText(d)
        if kind == "float":
            return float(t.children[0])
        if kind == "string":
            return _unquote(t.children[0], t.children[0])
        if kind in ("true", "false"):
            return kind == "true"
        if kind == "list":
            return [value(c, depth + 1) for c in t.children if c is not None]
        raise AssertionError(kind)

    g_tree = tree.children[0]
    g = Graph(name=_name(g_tree.children[0]))
    defined: dict[str, Any] = {}
    node_lines: dict[str, int] = {}
    returned = False
    for c in g_tree.children[1:]:
        if c is None:
            continue
        if c.data == "input":
            name = _name(c.children[0])
            if "%" + name in defined:
                raise _err(f"%{name} is defined twice", c.meta, lines)
            g.inputs.append((name, to_type(c.children[1])))
            defined["%" + name] = c
        elif c.data == "param":
            name = _name(c.children[0])
            if "@" + name in defined:
                raise _err(f"@{name} is declared twice", c.meta, lines)
            g.params[name] = to_type(c.children[1])
            defined["@" + name] = c
        elif c.data == "node":
            if returned:
                raise _err("node after return", c.meta, lines)
            vname, ty, op, *rest = c.children
            name = _name(vname)
            operands = []
            attrs_t = rest[-2]
            loc_t = rest[-1]
            for o in rest[:-2]:
                if o is None:
                    continue
                ref = o[0] + _name(o)
                if ref not in defined:
                    raise _err(f"use of undefined value {o}", o, lines)
                operands.append(ref)
            if "%" + name in defined:
                raise _err(f"%{name} is defined twice (SSA: one definition per value)", vname, lines)
            if str(op) not in OPS:
                raise _err(f"unknown op {str(op)!r}; run `tritium ops` for the list", op, lines)
            raw = {}
            for a in (attrs_t.children if attrs_t is not None else []):
                if a is None:
                    continue
                k = str(a.children[0])
                if k in raw:
                    raise _err(f"attribute {k} given twice", a.children[0], lines)
                raw[k] = value(a.children[1])
            try:
                attrs = OPS[str(op)].normalize_attrs(raw)
            except ValueError as e:
                raise _err(f"{op}: {e}", op, lines) from None
            loc = _unquote(loc_t.children[0], loc_t.children[0]) if loc_t is not None else None
            g.nodes.append(Node(name, str(op), tuple(operands), attrs, to_type(ty), loc))
            defined["%" + name] = c
            node_lines[name] = c.meta.line
        elif c.data == "ret":
            if returned:
                raise _err("second return", c.meta, lines)
            for o in c.children:
                if o is None:
                    continue
                ref = o[0] + _name(o)
                if ref not in defined:
                    raise _err(f"return of undefined value {o}", o, lines)
                g.outputs.append(ref)
            returned = True
    if not returned:
        raise ParseError("graph has no return", g_tree.meta.end_line, 1)
    if verify:
        from .verifier import verify as _verify

        try:
            _verify(g)
        except VerifyError as e:
            line = node_lines.get(getattr(e, "node", "") or "", 0) or g_tree.meta.line  # inputs, outputs: the header
            raise ParseError(str(e), line, 1, lines[line - 1] if line else "") from None
    return g


def _dim(dims: _Dims, t: Any):
    """A dim subtree -> its canonical form; ValueError for anything out of bounds or not a polynomial."""
    try:
        e = dims.transform(t) if isinstance(t, lark.Tree) else dims.transform(lark.Tree("_", [t])).children[0]
    except lark.exceptions.VisitError as err:  # a limit raised inside a callback
        if isinstance(err.orig_exc, ValueError):
            raise err.orig_exc from None
        raise
    if isinstance(e, lark.Token):  # a bare INT or IDENT token that no rule wrapped
        if e.type == "INT":
            e = _Dims().dint([e])
        else:
            e = sympy.Symbol(str(e), integer=True, positive=True)
    e = sympy.expand(e)
    if not e.is_Integer and e.is_polynomial() and any(abs(c) > MAX_DIM for c in sympy.Poly(e).coeffs()):
        raise ValueError("a dimension has a coefficient over 2**62")
    return canon(e)
