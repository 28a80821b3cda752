"""`Grammar`: a character-level context-free grammar as one expression tree per rule.

Grammars are written in lark's EBNF dialect and parsed by lark itself (its `GrammarBuilder`, so
`%import common.X` and lark's error messages come for free). They are read as *character-level*
grammars, as XGrammar reads its EBNF: terminals are inlined as the regular languages they denote and
there is no lexer, so there are no longest-match conflicts and no `%ignore` (write whitespace into the
rules). Rule modifiers (`?rule`, `!rule`, `_rule`), aliases and priorities do not change the language
and are ignored; templates and `%declare` are refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Union

from ir.errors import GrammarError


# -- the expression tree (bytes and code points; rules refer to each other by name) ---------------
@dataclass(frozen=True)
class Chars:
    """One code point from sorted, disjoint, inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Seq:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Alt:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Repeat:
    item: "Expr"
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True)
class Ref:
    name: str


@dataclass(frozen=True)
class Goto:
    """Go on with rule `name` and end here: allowed only at the tail of a rule (the JSON Schema
    converter writes its objects' states so). The rule is built into the caller's automaton once,
    however many Gotos reach it, so a state graph that is a DAG (or a loop) stays linear in size."""

    name: str


Expr = Union[Chars, Seq, Alt, Repeat, Ref, Goto]
EMPTY = Seq(())
MAX_CODE_POINT = 0x10FFFF


def literal(text: str, ignore_case: bool = False) -> Expr:
    return Seq(tuple(Chars(_cased(ord(c), ignore_case)) for c in text))


def _cased(cp: int, ignore_case: bool) -> tuple[tuple[int, int], ...]:
    if not ignore_case:
        return ((cp, cp),)
    c = chr(cp)
    return normalize({ord(x) for v in (c, c.lower(), c.upper()) if len(v) == 1 for x in v})


def normalize(points_or_ranges: Any) -> tuple[tuple[int, int], ...]:
    """Sorted, merged ranges from an iterable of code points or (lo, hi) pairs."""
    rs = sorted((p, p) if isinstance(p, int) else tuple(p) for p in points_or_ranges)
    out: list[list[int]] = []
    for lo, hi in rs:
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def complement(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return tuple(out)


_LARK_LIBRARY = frozenset({"common", "lark", "python", "unicode"})


# -- Grammar ---------------------------------------------------------------------------------------
@dataclass
class Grammar:
    """Rules by name (each an `Expr`), and the start rule."""

    rules: dict[str, Expr]
    start: str = "start"
    source: str = ""  # the text it came from, for error locations
    shared: frozenset = frozenset()  # rules reached by Goto (see Goto)

    def __post_init__(self) -> None:
        if self.start not in self.rules:
            raise GrammarError(f"the grammar has no start rule '{self.start}'; define `{self.start}: ...`", *self._where(self.start))
        for name, expr in self.rules.items():
            for ref in _refs(expr):
                if ref not in self.rules:
                    raise GrammarError(f"rule '{name}' refers to '{ref}', which is not defined", *self._where(name))

    def _where(self, rule: str) -> tuple[int, int]:
        """(line, column) where `rule` is defined in the source text, or (0, 0)."""
        m = re.search(rf"^[ \t]*[?!]?{re.escape(rule)}\b", self.source, re.M)
        if not m:
            return 0, 0
        return self.source.count("\n", 0, m.start()) + 1, m.end() - m.start() - len(rule) + 1

    @classmethod
    def from_lark(cls, text: str, start: str = "start", import_paths: list[str] | None = None) -> "Grammar":
        """A grammar in lark's EBNF dialect (see the module docstring for how it is read).
        `%import` reads only lark's grammar library (common, lark, python, unicode), unless the
        caller names directories in `import_paths`: a grammar never reads a file of its own choosing."""
        from lark.exceptions import LarkError
        from lark.load_grammar import GrammarBuilder

        class Builder(GrammarBuilder):
            def do_import(self, dotted_path, base_path, aliases, base_mangle=None):  # type: ignore[no-untyped-def]
                if not import_paths and (base_path is not None or dotted_path[0] not in _LARK_LIBRARY):
                    raise GrammarError(f"%import {'.'.join(dotted_path)}: only lark's grammar library "
                                       f"({', '.join(sorted(_LARK_LIBRARY))}) can be imported; pass import_paths= "
                                       "to allow a directory", *_find(text, "%import"))
                return super().do_import(dotted_path, None if not import_paths else base_path, aliases, base_mangle)

        gb = Builder(import_paths=list(import_paths or []))
        try:
            gb.load_grammar(text, "<grammar>")
            gb.validate()
        except LarkError as e:
            raise _lark_error(e) from None
        except RecursionError:
            raise GrammarError("the grammar nests too deeply") from None
        if gb._ignore_names:
            raise GrammarError("%ignore is not supported: grammars are character-level (no lexer); write the "
                               "whitespace into the rules, e.g. `ws: /[ \\t\\n]*/`", *_find(text, "%ignore"))
        defs = gb._definitions
        for name, d in defs.items():
            if d.params:
                raise GrammarError(f"template rule '{name}' is not supported; write its uses out", *_find(text, name))
            if d.tree is None:
                raise GrammarError(f"'{name}' is declared (%declare) but has no definition", *_find(text, name))
        terms: dict[str, Expr] = {}

        def term(name: str, stack: tuple[str, ...] = ()) -> Expr:
            if name in stack:
                raise GrammarError(f"terminal {name} refers to itself ({' -> '.join(stack + (name,))})", *_find(text, name))
            if name not in terms:
                terms[name] = _convert(defs[name].tree, lambda n: term(n, stack + (name,)), text)
            return terms[name]

        try:
            rules = {name: _convert(d.tree, term, text) for name, d in defs.items() if not d.is_term}
        except LarkError as e:  # lark's own checks of a literal (an empty one, say), met while converting
            raise _lark_error(e) from None
        except RecursionError:
            raise GrammarError("the grammar nests too deeply") from None
        return cls(rules, start, text)

    @classmethod
    def from_regex(cls, pattern: str) -> "Grammar":
        """Sentences are the strings that the whole pattern matches (Python `re` syntax; see regex.py)."""
        from .regex import parse_regex

        return cls({"start": parse_regex(pattern)}, "start", pattern)

    @classmethod
    def json(cls) -> "Grammar":
        """Any JSON object or array (the language of XGrammar's built-in JSON grammar)."""
        return cls.from_lark(JSON_GRAMMAR)

    @classmethod
    def from_json_schema(cls, schema: Any, any_whitespace: bool = False, strict_mode: bool = False,
                         **options: Any) -> "Grammar":
        """JSON text valid against `schema` (a dict, bool or JSON text); see json_schema.py for the
        keywords and the options (strict_keywords, max_whitespace, separators, indent). The default
        layout is compact (", " and ": "), which cannot run away in whitespace."""
        from .json_schema import schema_to_grammar

        return schema_to_grammar(schema, any_whitespace=any_whitespace, strict_mode=strict_mode, **options)


# RFC 8259 JSON, object or array at the top, whitespace [ \n\r\t]* between tokens and none around
# the whole document -- the language of XGrammar's built-in JSON grammar.
JSON_GRAMMAR = r"""
start: object | array
value: object | array | string | number | "true" | "false" | "null"
object: "{" ws (member (ws "," ws member)* ws)? "}"
member: string ws ":" ws value
array: "[" ws (value (ws "," ws value)* ws)? "]"
string: "\"" (/[^"\\\x00-\x1f]/ | "\\" escape)* "\""
escape: /["\\\/bfnrt]/ | "u" /[0-9a-fA-F]/ ~ 4
number: "-"? ("0" | /[1-9]/ /[0-9]/*) ("." /[0-9]/+)? (/[eE]/ /[+-]/? /[0-9]/+)?
ws: /[ \n\r\t]/*
"""


# -- lark's trees -> Expr --------------------------------------------------------------------------
def _convert(tree: Any, term: Any, text: str) -> Expr:
    from lark import Token, Tree
    from lark.grammar import NonTerminal, Terminal
    from lark.lexer import PatternRE
    from lark.load_grammar import _literal_to_pattern

    def conv(t: Any) -> Expr:
        if isinstance(t, NonTerminal):
            return Ref(t.name)
        if isinstance(t, Terminal):
            return term(t.name)
        if not isinstance(t, Tree):
            raise GrammarError(f"unexpected element {t!r} in the grammar")
        kids = t.children
        if t.data == "expansions":
            return _alt([conv(k) for k in kids])
        if t.data == "expansion":
            return _seq([conv(k) for k in kids])
        if t.data in ("value", "alias"):
            return conv(kids[0])
        if t.data == "maybe":
            return Repeat(conv(kids[0]), 0, 1)
        if t.data == "expr":
            item, op = conv(kids[0]), kids[1]
            if op.type == "TILDE":
                lo = int(kids[2])
                hi = int(kids[3]) if len(kids) > 3 else lo
                if hi > 10_000:
                    raise GrammarError(f"repetition ~ {lo}..{hi} is above the limit 10000", *_find(text, "~"))
                if hi < lo:
                    raise GrammarError(f"repetition ~ {lo}..{hi} has its upper bound below its lower bound", *_find(text, "~"))
                return Repeat(item, lo, hi)
            return {"?": Repeat(item, 0, 1), "*": Repeat(item, 0, None), "+": Repeat(item, 1, None)}[str(op)]
        if t.data == "literal":
            tok: Token = kids[0]
            p = _literal_to_pattern(tok)
            if isinstance(p, PatternRE):
                from .regex import parse_regex

                return parse_regex(p.value, "".join(sorted(p.flags)), where=_find(text, str(tok)))
            if set(p.flags) - {"i"}:
                raise GrammarError(f"string flags {sorted(p.flags)} are not supported", *_find(text, str(tok)))
            return literal(p.value, "i" in p.flags)
        if t.data == "range":
            a, b = (_literal_to_pattern(k).value for k in kids)
            if len(a) != 1 or len(b) != 1 or ord(a) > ord(b):
                raise GrammarError(f"bad range {kids[0]}..{kids[1]}", *_find(text, str(kids[0])))
            return Chars(((ord(a), ord(b)),))
        raise GrammarError(f"lark construct '{t.data}' is not supported", *_find(text, str(t.data)))

    return conv(tree)


def _seq(items: list[Expr]) -> Expr:
    flat: list[Expr] = []
    for x in items:
        flat.extend(x.items if isinstance(x, Seq) else [x])
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def _alt(items: list[Expr]) -> Expr:
    return items[0] if len(items) == 1 else Alt(tuple(items))


def _refs(e: Expr) -> set[str]:
    if isinstance(e, (Ref, Goto)):
        return {e.name}
    if isinstance(e, (Seq, Alt)):
        return set().union(*map(_refs, e.items)) if e.items else set()
    if isinstance(e, Repeat):
        return _refs(e.item)
    return set()


def _find(text: str, needle: str) -> tuple[int, int]:
    i = text.find(needle)
    if i < 0:
        return 0, 0
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def _lark_error(e: Exception) -> GrammarError:
    msg = str(e).strip()
    line, col = getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0
    m = re.search(r"at line (\d+) col(?:umn)? (\d+)", msg)
    if m and not line:
        line, col = int(m.group(1)), int(m.group(2))
    first = msg.splitlines()[0] if msg else type(e).__name__
    return GrammarError(f"malformed grammar: {first}", line if line > 0 else 0, col if col > 0 else 0)


def dumps(e: Expr) -> str:
    """Readable text of an expression (for error messages and debugging)."""
    if isinstance(e, (Ref, Goto)):
        return e.name
    if isinstance(e, Chars):
        if len(e.ranges) == 1 and e.ranges[0][0] == e.ranges[0][1]:
            return json.dumps(chr(e.ranges[0][0]))
        return "[" + "".join(f"{chr(a)!r}" if a == b else f"{chr(a)!r}-{chr(b)!r}" for a, b in e.ranges[:6]) + ("...]" if len(e.ranges) > 6 else "]")
    if isinstance(e, Seq):
        return "(" + " ".join(map(dumps, e.items)) + ")"
    if isinstance(e, Alt):
        return "(" + " | ".join(map(dumps, e.items)) + ")"
    return f"{dumps(e.item)}{{{e.min},{'' if e.max is None else e.max}}}"
