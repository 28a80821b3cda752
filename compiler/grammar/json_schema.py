"""JSON Schema -> a `Grammar` whose sentences are the JSON texts valid against the schema (the spec's
language, draft 2020-12 with the draft-04/07 spellings), written in one layout (see `Layout`).

Keywords:
- Annotations and keywords the spec does not define are ignored (title, description, default,
  examples, $comment, $id, id, $schema, deprecated, readOnly, writeOnly, x-*, ...), as the spec says;
  `strict_keywords=True` makes every keyword this converter does not enforce an error.
- Every validation keyword is enforced, or is a GrammarError naming it and its JSON-pointer path:
  type, enum, const (any JSON value), minimum/maximum/exclusiveMinimum/exclusiveMaximum (exact, see
  json_numbers.py), multipleOf (integers), minLength/maxLength (characters, escapes count one),
  pattern (ECMA-262 search semantics: unanchored unless ^/$), format (json_formats.py), properties,
  required, additionalProperties, patternProperties, propertyNames, minProperties/maxProperties,
  dependentRequired/dependencies (arrays), items/prefixItems/additionalItems, minItems/maxItems,
  contains/minContains, allOf (merged into one schema), anyOf, oneOf, $ref to "#", "#/$defs/..",
  "#/definitions/..", any "#/..." pointer (recursion allowed unless left-recursive; keywords beside
  a $ref are merged with its target). Refused: not, if/then/else, uniqueItems: true,
  dependentSchemas, unevaluated*, maxContains, $dynamicRef, remote $ref.
- oneOf is compiled as anyOf: exact when its branches cannot both match (different types, consts,
  required keys), a superset otherwise (see docs/grammar.md).
- Objects: properties in schema order (as generated JSON and the benchmarks write them), then the
  other keys. Arrays and strings as the spec says.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

from ir.errors import GrammarError

from .grammar import EMPTY, Alt, Chars, Expr, Goto, Grammar, Ref, Repeat, Seq, literal, normalize
from .json_formats import FORMATS
from .json_numbers import int_interval, number_interval
from .regex import _Converter as _RegexConverter
from .regex import parse_regex

ANNOTATIONS = {"title", "description", "$schema", "$id", "id", "examples", "default", "$comment", "deprecated",
               "readOnly", "writeOnly", "$anchor", "$vocabulary", "contentMediaType", "contentEncoding",
               "contentSchema", "$defs", "definitions", "example"}
VALIDATION = {"type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
              "maxLength", "minLength", "pattern", "format", "items", "prefixItems", "additionalItems", "contains",
              "minContains", "maxContains", "maxItems", "minItems", "uniqueItems", "properties", "patternProperties",
              "additionalProperties", "propertyNames", "required", "dependentRequired", "dependencies",
              "dependentSchemas", "maxProperties", "minProperties", "allOf", "anyOf", "oneOf", "not", "if", "then",
              "else", "$ref", "$dynamicRef", "$recursiveRef", "unevaluatedProperties", "unevaluatedItems"}
REFUSED = {"not": "negation", "if": "conditionals", "dependentSchemas": "schema dependencies",
           "unevaluatedProperties": "unevaluated properties", "unevaluatedItems": "unevaluated items",
           "maxContains": "an upper bound on contains", "$dynamicRef": "dynamic references",
           "$recursiveRef": "recursive references"}
TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
MAX_COUNT = 10_000  # a repetition bound (maxLength, maxItems, ...) above this is treated as unbounded
MAX_TRACKED = 10    # required/dependentRequired keys of one object (its members in any order need 2^n states)
TRACK_ALL = 6       # objects with at most this many named properties admit no duplicate named key
MAX_DEPTH = 64      # schema nesting, in subschemas (an iterative walk is not needed below it)
_HEX = Chars(normalize([(48, 57), (65, 70), (97, 102)]))
_SAFE = Chars(normalize([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)]))  # no '"', '\', control
_ESCAPE = Seq((literal("\\"), Alt((Chars(normalize(map(ord, '"\\/bfnrt'))), Seq((literal("u"),) + (_HEX,) * 4)))))
STR_CHAR = Alt((_SAFE, _ESCAPE))  # one character of a JSON string, as written
_SHORT = {'"': '"', "\\": "\\", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "/": "/"}


@dataclass(frozen=True)
class Layout:
    """Where whitespace goes. any_whitespace: [ \\t\\n\\r]* (at most max_whitespace characters) around
    , : [ ] { }; else the separators exactly, or json.dumps(indent=n) layout. Never around the root."""

    any_whitespace: bool = False
    max_whitespace: int | None = None
    separators: tuple[str, str] = (", ", ": ")
    indent: int | str | None = None

    def ws(self) -> Expr:
        if not self.any_whitespace:
            return EMPTY
        return Repeat(Chars(((9, 10), (13, 13), (32, 32))), 0, self.max_whitespace)


def schema_to_grammar(schema: Any, *, any_whitespace: bool = False, strict_mode: bool = False,
                      strict_keywords: bool = False, max_whitespace: int | None = None,
                      separators: tuple[str, str] | None = None, indent: int | str | None = None) -> Grammar:
    """The grammar of the JSON texts valid against `schema` (a dict, a bool or JSON text).

    strict_mode: a missing additionalProperties/items admits nothing extra (XGrammar's strict_mode),
    instead of anything (the spec). Raises GrammarError with the JSON-pointer path of the culprit."""
    if isinstance(schema, (str, bytes)):
        def constant(name: str) -> Any:
            raise GrammarError(f"{name} is not a JSON value; write a number")

        try:
            schema = json.loads(schema, parse_constant=constant)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the schema is not valid JSON: {e.msg}", line=e.lineno, column=e.colno) from None
        except RecursionError:
            raise GrammarError("the schema nests deeper than Python's JSON reader allows") from None
    if any_whitespace and indent is not None:
        raise GrammarError("indent and any_whitespace exclude each other")
    layout = Layout(any_whitespace, max_whitespace, separators or ((",", ":") if any_whitespace else (", ", ": ")),
                    indent)
    conv = _Converter(schema, layout, strict_mode, strict_keywords)
    rules = conv.convert()
    return Grammar(rules, "start", "", shared=frozenset(conv.shared))


def schema_to_lark(schema: Any, **options: Any) -> str:
    """The same grammar as lark EBNF text (for reading, and for lark's own parsers in tests)."""
    return to_lark(schema_to_grammar(schema, **options))


# -- helpers -----------------------------------------------------------------------------------------
def _esc(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _json_text(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def _alt(items: list[Expr]) -> Expr:
    flat: list[Expr] = []
    for x in items:
        if x not in flat:
            flat.append(x)
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def _seq(*items: Expr) -> Expr:
    flat: list[Expr] = []
    for x in items:
        flat.extend(x.items if isinstance(x, Seq) else [x])
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


NOTHING = Alt(())


def _json_char(ranges: tuple[tuple[int, int], ...]) -> Expr:
    """One decoded character from `ranges`, as JSON writes it inside a string: itself if it needs no
    escape, else its short escape (\\n, \\") or \\u00XX (either hex case)."""
    safe: list[tuple[int, int]] = []
    alts: list[Expr] = []
    for lo, hi in ranges:
        for a, b in ((0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)):
            if lo <= b and a <= hi:
                for c in range(max(a, lo), min(b, hi) + 1):
                    ch = chr(c)
                    forms = [literal("\\" + _SHORT[ch])] if ch in _SHORT else []
                    forms.append(Seq((literal("\\u00"),) + tuple(Chars(normalize({ord(x), ord(x.upper())}))
                                                                  for x in f"{c:02x}")))
                    alts.extend(forms)
        safe.extend(_minus([(lo, hi)], [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]))
    if safe:
        alts.insert(0, Chars(normalize(safe)))
    return _alt(alts) if alts else NOTHING


def _minus(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for lo, hi in sorted(ranges):
        for clo, chi in sorted(cut):
            if chi < lo or clo > hi:
                continue
            if clo > lo:
                out.append((lo, clo - 1))
            lo = max(lo, chi + 1)
        if lo <= hi:
            out.append((lo, hi))
    return out


def _chars_to_json(e: Expr) -> Expr:
    """A regex over decoded characters -> the same over their JSON string spelling."""
    if isinstance(e, Chars):
        return _json_char(e.ranges)
    if isinstance(e, Seq):
        return Seq(tuple(map(_chars_to_json, e.items)))
    if isinstance(e, Alt):
        return Alt(tuple(map(_chars_to_json, e.items)))
    if isinstance(e, Repeat):
        return Repeat(_chars_to_json(e.item), e.min, e.max)
    return e


def _length_bounds(e: Expr) -> tuple[int, float]:
    """(min, max) number of characters of the strings an expression over characters matches."""
    if isinstance(e, Chars):
        return (1, 1) if e.ranges else (0, 0)
    if isinstance(e, Seq):
        b = [_length_bounds(x) for x in e.items]
        return sum(x for x, _ in b), sum(y for _, y in b)
    if isinstance(e, Alt):
        b = [_length_bounds(x) for x in e.items] or [(0, 0)]
        return min(x for x, _ in b), max(y for _, y in b)
    if isinstance(e, Repeat):
        lo, hi = _length_bounds(e.item)
        return lo * e.min, (math.inf if e.max is None and hi else hi * (e.max or 0))
    return 0, math.inf


_ANCHOR_START = {C.AT_BEGINNING, C.AT_BEGINNING_STRING}
_ANCHOR_END = {C.AT_END, C.AT_END_STRING}


def pattern_expr(pattern: str, path: str) -> tuple[Expr, Expr]:
    """A JSON Schema pattern (ECMA-262, a search: unanchored unless ^ or $) as the decoded strings it
    matches: (expression over characters, the same over JSON string text)."""
    src = re.sub(r"\(\?<(?![=!])", "(?P<", pattern)  # ECMA named groups
    try:
        tree = P.parse(src)
    except re.error as e:
        raise GrammarError(f"malformed pattern /{pattern}/: {e}", path=path) from None
    except RecursionError:
        raise GrammarError(f"pattern /{pattern}/ nests too deeply", path=path) from None
    if tree.state.flags & ~(C.SRE_FLAG_UNICODE):
        raise GrammarError(f"inline flags in pattern /{pattern}/ are not supported", path=path)
    items = list(tree)
    branches = [list(b) for b in items[0][1][1]] if len(items) == 1 and items[0][0] is C.BRANCH else [items]
    conv = _RegexConverter(pattern, (0, 0))
    anything = Repeat(Chars(((0, 0x10FFFF),)), 0, None)
    alts = []
    for b in branches:
        start = bool(b) and b[0][0] is C.AT and b[0][1] in _ANCHOR_START
        b = b[1:] if start else b
        end = bool(b) and b[-1][0] is C.AT and b[-1][1] in _ANCHOR_END
        b = b[:-1] if end else b
        try:
            body = _seq(*[conv.item(op, av, False, False) for op, av in b]) if b else EMPTY
        except GrammarError as e:
            raise GrammarError(f"pattern /{pattern}/: {e}", path=path) from None
        alts.append(_seq(*([] if start else [anything]), body, *([] if end else [anything])))
    e = _alt(alts)
    return e, _chars_to_json(e)


# -- schema algebra: refs resolved at the top, allOf merged ------------------------------------------
def _int_like(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class _Converter:
    def __init__(self, root: Any, layout: Layout, strict: bool, strict_keywords: bool):
        self.root, self.layout, self.strict, self.strict_kw = root, layout, strict, strict_keywords
        self.rules: dict[str, Expr] = {}
        self.shared: set[str] = set()
        self.refs: dict[tuple[str, int], str] = {}
        self.left: set[str] = set()  # $refs expanded with no character read since (left recursion)
        self.names: set[str] = set()
        ws = layout.ws()
        self.ws = ws

    # rules
    def rule(self, hint: str, body: Expr | None = None, shared: bool = False) -> str:
        base = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[:40] or "rule"
        base = base if base[0].isalpha() else "r_" + base
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        self.rules[name] = body if body is not None else EMPTY
        if shared:
            self.shared.add(name)
        return name

    def convert(self) -> dict[str, Expr]:
        self.names.add("start")
        self.rules["start"] = EMPTY
        self.rules["start"] = self.value(self.root, "", 0)
        self._basics()
        return self.rules

    def _basics(self) -> None:
        """json_value/json_object/json_array (recursive) when used."""
        if "json_value" not in self.names:
            return
        L, ws = self.layout, self.ws
        if L.indent is not None:
            raise GrammarError("indent is not supported for schemas that admit arbitrary nested values "
                               "(true, {}, untyped items); give them types")
        item, key = self.seps(0)
        string = Seq((literal('"'), Repeat(STR_CHAR, 0, None), literal('"')))
        pair = _seq(string, key, Ref("json_value"))
        self.rules["json_object"] = _alt([
            _seq(literal("{"), ws, pair, Repeat(_seq(item, pair), 0, None), ws, literal("}")),
            _seq(literal("{"), ws, literal("}"))])
        self.rules["json_array"] = _alt([
            _seq(literal("["), ws, Ref("json_value"), Repeat(_seq(item, Ref("json_value")), 0, None), ws, literal("]")),
            _seq(literal("["), ws, literal("]"))])
        self.rules["json_value"] = _alt([Ref("json_object"), Ref("json_array"), string,
                                         parse_regex(number_interval(None, False, None, False)),
                                         literal("true"), literal("false"), literal("null")])
        self.names |= {"json_object", "json_array"}

    def seps(self, depth: int) -> tuple[Expr, Expr]:
        """(item separator, key separator) inside a container at `depth`."""
        L, ws = self.layout, self.ws
        if L.any_whitespace:
            return _seq(ws, literal(L.separators[0].strip() or ","), ws), _seq(ws, literal(":"), ws)
        if L.indent is not None:
            return literal(L.separators[0].rstrip() + "\n" + self.indent(depth + 1)), literal(L.separators[1])
        return literal(L.separators[0]), literal(L.separators[1])

    def indent(self, depth: int) -> str:
        i = self.layout.indent
        return (" " * i if isinstance(i, int) else str(i)) * depth

    def brackets(self, o: str, c: str, depth: int) -> tuple[Expr, Expr]:
        """(open, close) around a non-empty container."""
        L, ws = self.layout, self.ws
        if L.indent is not None:
            return literal(o + "\n" + self.indent(depth + 1)), literal("\n" + self.indent(depth) + c)
        return _seq(literal(o), ws), _seq(ws, literal(c))

    def empty(self, o: str, c: str) -> Expr:
        return _seq(literal(o), self.ws, literal(c))

    # keywords
    def check(self, s: dict, path: str) -> None:
        for k, v in s.items():
            if k in VALIDATION:
                if k in REFUSED and not (k == "if" and "then" not in s and "else" not in s):
                    raise GrammarError(f"'{k}' ({REFUSED[k]}) is not supported: a grammar cannot enforce it exactly",
                                       path=f"{path}/{_esc(k)}")
                if k == "uniqueItems" and v is True:
                    raise GrammarError("'uniqueItems': true is not supported: a grammar cannot compare items",
                                       path=f"{path}/uniqueItems")
            elif self.strict_kw and k not in ANNOTATIONS:
                raise GrammarError(f"unknown JSON Schema keyword '{k}' (strict_keywords)", path=f"{path}/{_esc(k)}")
        if "$ref" in s and not isinstance(s["$ref"], str):
            raise GrammarError(f"'$ref' must be a string, not {s['$ref']!r}", path=f"{path}/$ref")

    def resolve(self, uri: str, path: str) -> tuple[Any, str]:
        if uri in ("#", ""):
            return self.root, ""
        if not uri.startswith("#/"):
            raise GrammarError(f"only local references ('#' or '#/...') are supported, not '{uri}'", path=path)
        target: Any = self.root
        for part in uri[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                raise GrammarError(f"$ref '{uri}' does not resolve: no '{part}'", path=path)
        return target, uri[1:]

    def flatten(self, s: Any, path: str, seen: tuple[str, ...] = ()) -> Any:
        """`s` with $ref (beside other validation keywords) and allOf merged into one schema dict;
        a bare $ref is kept (as {"$ref": ...}) so that recursion stays finite."""
        if not isinstance(s, dict):
            if isinstance(s, bool):
                return s
            raise GrammarError(f"a schema must be an object or a boolean, not {s!r}", path=path)
        self.check(s, path)
        s = _normalize(s, path)
        parts: list[Any] = []
        if "$ref" in s:
            rest = {k: v for k, v in s.items() if k != "$ref" and k in VALIDATION}
            if not rest:
                return {"$ref": s["$ref"], "_path": path}
            uri = s["$ref"]
            if uri in seen:
                raise GrammarError(f"$ref '{uri}' refers to itself with keywords beside it; that recursion is not "
                                   "supported", path=f"{path}/$ref")
            target, tpath = self.resolve(uri, f"{path}/$ref")
            parts.append(self.flatten(target, tpath, seen + (uri,)))
            s = {k: v for k, v in s.items() if k != "$ref"}
        if "allOf" in s:
            subs = s["allOf"]
            if not isinstance(subs, list) or not subs:
                raise GrammarError("'allOf' must be a non-empty array", path=f"{path}/allOf")
            parts += [self.flatten(x, f"{path}/allOf/{i}", seen) for i, x in enumerate(subs)]
            s = {k: v for k, v in s.items() if k != "allOf"}
        if not parts:
            return s
        out: Any = s
        for p in parts:
            if isinstance(p, dict) and "$ref" in p:  # a bare recursive ref inside allOf: expand it once
                target, tpath = self.resolve(p["$ref"], p["_path"])
                if p["$ref"] in seen:
                    raise GrammarError(f"$ref '{p['$ref']}' inside allOf recurses", path=p["_path"])
                p = self.flatten(target, tpath, seen + (p["$ref"],))
            out = _merge(out, p, path)
        return out

    # values
    def value(self, s: Any, path: str, depth: int, left_ok: bool = True) -> Expr:
        if depth > MAX_DEPTH:
            raise GrammarError(f"the schema nests deeper than {MAX_DEPTH} levels", path=path)
        s = self.flatten(s, path)
        if s is True or s == {} or (isinstance(s, dict) and not (set(s) & VALIDATION)):
            return self.any_value(path)
        if s is False:
            return NOTHING
        if "$ref" in s:
            return self.ref(s["$ref"], f"{s['_path']}/$ref", depth)
        branches: list[Any] = [s]
        for kw in ("anyOf", "oneOf"):
            if kw in s:
                subs = s[kw]
                if not isinstance(subs, list) or not subs:
                    raise GrammarError(f"'{kw}' must be a non-empty array", path=f"{path}/{kw}")
                base = [{k: v for k, v in b.items() if k != kw} for b in branches]
                branches = []
                for b in base:
                    for i, x in enumerate(subs):
                        fx = self.flatten(x, f"{path}/{kw}/{i}")
                        if fx is False:
                            continue
                        if isinstance(fx, dict) and "$ref" in fx and not (set(b) & VALIDATION - {"anyOf", "oneOf"}):
                            branches.append(fx)
                            continue
                        if isinstance(fx, dict) and "$ref" in fx:
                            target, tpath = self.resolve(fx["$ref"], fx["_path"])
                            fx = self.flatten(target, tpath, (fx["$ref"],))
                        branches.append(_merge(b, fx, f"{path}/{kw}/{i}"))
        if len(branches) != 1 or branches[0] is not s:
            return _alt([self.value(b, path, depth + 1) for b in branches]) if branches else NOTHING
        return self.typed(s, path, depth)

    def any_value(self, path: str) -> Expr:
        self.names.add("json_value")
        return Ref("json_value")

    def ref(self, uri: str, path: str, depth: int) -> Expr:
        key = (uri, depth if self.layout.indent is not None else 0)
        if key in self.refs:
            if uri in self.left:
                raise GrammarError(f"$ref '{uri}' reaches itself before any character is read (left recursion)",
                                   path=path)
            return Ref(self.refs[key])
        if self.layout.indent is not None and depth > 16:
            raise GrammarError("indent with a recursive $ref: the layout would need unboundedly many rules",
                               path=path)
        target, tpath = self.resolve(uri, path)
        name = self.refs[key] = self.rule(uri[2:] or "root")
        self.left.add(uri)
        self.rules[name] = self.value(target, tpath, depth + 1)
        self.left.discard(uri)
        return Ref(name)

    def typed(self, s: dict, path: str, depth: int) -> Expr:
        types = _types(s, path)
        if "enum" in s or "const" in s:
            return self.enum(s, path, types, depth)
        saved = self.left
        out = []
        for t in types:
            if t in ("object", "array"):
                self.left = set()  # "{" or "[" comes first: what follows is not left recursion
                out.append(self.object(s, path, depth) if t == "object" else self.array(s, path, depth))
                self.left = saved
            elif t == "string":
                out.append(self.string(s, path))
            elif t in ("number", "integer"):
                if t == "integer" and "number" in types:
                    continue  # number admits every integer
                out.append(self.number(s, path, t == "integer" or s.get("_integer", False)))
            elif t == "boolean":
                out.append(_alt([literal("true"), literal("false")]))
            else:
                out.append(literal("null"))
        return _alt(out) if out else NOTHING

    def enum(self, s: dict, path: str, types: list[str], depth: int) -> Expr:
        values = [s["const"]] if "const" in s else s["enum"]
        if "enum" in s and not isinstance(s["enum"], list):
            raise GrammarError("'enum' must be an array", path=f"{path}/enum")
        rest = {k: v for k, v in s.items() if k not in ("enum", "const", "_integer") and k in VALIDATION}
        kept = []
        for v in values:
            if _json_type(v) not in types and not (_json_type(v) == "integer" and "number" in types) \
                    and not (_json_type(v) == "number" and "integer" in types and float(v).is_integer()):
                continue
            if rest and not _valid(v, rest, self.root):
                continue
            kept.append(v)
        return _alt([self.literal_value(v, depth, f"{path}/enum") for v in kept]) if kept else NOTHING

    def literal_value(self, v: Any, depth: int, path: str) -> Expr:
        """One JSON value in this layout; numbers in every spelling of their value that json writes."""
        if isinstance(v, dict):
            if not v:
                return self.empty("{", "}")
            item, key = self.seps(depth)
            o, c = self.brackets("{", "}", depth)
            members = [_seq(self.literal_value(k, depth, path), key, self.literal_value(x, depth + 1, path))
                       for k, x in v.items()]
            return _seq(o, *[x for i, m in enumerate(members) for x in ((item, m) if i else (m,))], c)
        if isinstance(v, list):
            if not v:
                return self.empty("[", "]")
            item, _ = self.seps(depth)
            o, c = self.brackets("[", "]", depth)
            vals = [self.literal_value(x, depth + 1, path) for x in v]
            return _seq(o, *[x for i, m in enumerate(vals) for x in ((item, m) if i else (m,))], c)
        if _int_like(v):
            if isinstance(v, float) and not math.isfinite(v):
                raise GrammarError(f"{v!r} is not a finite JSON number", path=path)
            d = Decimal(repr(v)) if isinstance(v, float) else Decimal(v)
            return parse_regex(number_interval(d, False, d, False))
        if isinstance(v, str):
            return literal(_json_text(v))
        if v is None or isinstance(v, bool):
            return literal(_json_text(v))
        raise GrammarError(f"{v!r} is not a JSON value", path=path)

    def number(self, s: dict, path: str, integer: bool) -> Expr:
        lo, lo_x, hi, hi_x = _bounds(s, path)
        mult = s.get("multipleOf")
        if mult is not None:
            if not _int_like(mult) or mult <= 0:
                raise GrammarError(f"'multipleOf' must be a positive number, not {mult!r}", path=f"{path}/multipleOf")
            if float(mult).is_integer():
                integer, mult = True, int(mult)
            else:
                raise GrammarError(f"'multipleOf' {mult} on a non-integer is not supported (only whole multipleOf)",
                                   path=f"{path}/multipleOf")
        if integer:
            ilo = None if lo is None else (int(lo) + 1 if lo_x and lo == int(lo) else math.ceil(lo))
            ihi = None if hi is None else (int(hi) - 1 if hi_x and hi == int(hi) else math.floor(hi))
            if mult and mult > 1:
                return self.multiples(mult, ilo, ihi, path)
            rx = int_interval(ilo, ihi)
        else:
            rx = number_interval(lo, lo_x, hi, hi_x)
        return parse_regex(rx) if rx else NOTHING

    def multiples(self, m: int, lo: int | None, hi: int | None, path: str) -> Expr:
        if lo is not None and hi is not None and (hi - lo) // m <= 200:
            first = -(-lo // m) * m
            return _alt([literal(str(v)) for v in range(first, hi + 1, m)]) or NOTHING
        if lo is not None and lo > 0 or hi is not None and hi < 0 or lo is not None and hi is not None:
            raise GrammarError(f"'multipleOf' {m} with bounds that admit more than 200 values is not supported",
                               path=f"{path}/multipleOf")
        # remainder automaton: rule r = digits read so far mod m, right-linear (tail calls only)
        names = {r: self.rule(f"mult_{m}_{r}", shared=True) for r in range(m)}
        for r in range(m):
            alts: list[Expr] = [EMPTY] if r == 0 else []
            for d in range(10):
                alts.append(_seq(literal(str(d)), Goto(names[(10 * r + d) % m])))
            self.rules[names[r]] = _alt(alts)
        pos = _seq(Chars(((49, 57),)), Goto(names[0])) if m == 1 else _alt(
            [_seq(literal(str(d)), Goto(names[d % m])) for d in range(1, 10)])
        parts = [literal("0")]
        if hi is None or hi >= 0:
            parts.append(pos)
        if lo is None or lo < 0:
            parts.append(_seq(literal("-"), pos))
        # Goto inside an Alt of the value is only allowed at the tail: wrap in a rule of its own
        return Ref(self.rule(f"multiple_of_{m}", _alt(parts)))

    def string(self, s: dict, path: str) -> Expr:
        lo = _count(s, "minLength", path, 0)
        hi = _count(s, "maxLength", path, None)
        if hi is not None and lo > hi:
            return NOTHING
        fmt = s.get("format")
        body: Expr | None = None
        chars: Expr | None = None
        if isinstance(fmt, str) and fmt in FORMATS:
            chars = parse_regex(FORMATS[fmt])
            body = _chars_to_json(chars)
        elif fmt is not None and self.strict_kw:
            raise GrammarError(f"unknown format {fmt!r} (strict_keywords)", path=f"{path}/format")
        if "pattern" in s:
            if not isinstance(s["pattern"], str):
                raise GrammarError(f"'pattern' must be a string, not {s['pattern']!r}", path=f"{path}/pattern")
            if body is not None:
                raise GrammarError("'pattern' beside 'format' is not supported (an intersection of two languages)",
                                   path=f"{path}/pattern")
            chars, body = pattern_expr(s["pattern"], f"{path}/pattern")
        for extra in s.get("_patterns", []):
            raise GrammarError(f"two patterns on one string (/{extra}/ from allOf) are not supported",
                               path=f"{path}/pattern")
        if body is not None:
            plo, phi = _length_bounds(chars)
            if plo < lo or (hi is not None and phi > hi):
                which = "minLength" if plo < lo else "maxLength"
                raise GrammarError(f"'{which}' beside a pattern or format that admits other lengths is not supported "
                                   "(an intersection of two languages)", path=f"{path}/{which}")
            return _seq(literal('"'), body, literal('"'))
        return _seq(literal('"'), Repeat(STR_CHAR, lo, hi), literal('"'))

    # containers
    def array(self, s: dict, path: str, depth: int) -> Expr:
        prefix = s.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise GrammarError("'prefixItems' must be an array", path=f"{path}/prefixItems")
        lo = _count(s, "minItems", path, 0)
        hi = _count(s, "maxItems", path, None)
        items_s = s.get("items", False if self.strict and "items" not in s else True)
        if "contains" in s:
            return self.contains(s, path, depth, prefix, items_s, lo, hi)
        if hi is not None and hi < lo:
            return NOTHING
        elems = [self.value(p, f"{path}/prefixItems/{i}", depth + 1) for i, p in enumerate(prefix)]
        rest = self.value(items_s, f"{path}/items", depth + 1) if items_s is not False else NOTHING
        n = len(elems)
        if hi is not None and hi < n:
            elems, n = elems[:hi], hi
        item, _ = self.seps(depth)
        o, c = self.brackets("[", "]", depth)
        # after k items: k < n -> prefix item k next (or end); k >= n -> rest items
        def tail(k: int) -> Expr:
            if k < n:
                nxt = _seq(item if k else EMPTY, elems[k], tail(k + 1))
                return nxt if k < lo else _alt([EMPTY, nxt])
            if rest == NOTHING:
                return EMPTY if k >= lo else NOTHING
            need = max(0, lo - k)
            more = None if hi is None else hi - k
            if more == 0:
                return EMPTY
            if k == 0:
                first = _seq(rest, Repeat(_seq(item, rest), max(0, need - 1), None if more is None else more - 1))
                return first if need else _alt([EMPTY, first])
            return Repeat(_seq(item, rest), need, more)

        body = tail(0)
        alts = []
        if lo == 0:
            alts.append(self.empty("[", "]"))
        nonempty = _strip_empty(body)
        if nonempty is not None:
            alts.append(_seq(o, nonempty, c))
        return _alt(alts) if alts else NOTHING

    def contains(self, s: dict, path: str, depth: int, prefix: list, items_s: Any, lo: int, hi: int | None) -> Expr:
        mc = _count(s, "minContains", path, 1)
        if prefix or hi is not None or lo > 1 or mc > 1:
            raise GrammarError("'contains' together with prefixItems, maxItems, minItems > 1 or minContains > 1 "
                               "is not supported", path=f"{path}/contains")
        if mc == 0:
            return self.array({k: v for k, v in s.items() if k not in ("contains", "minContains")}, path, depth)
        items_f = self.flatten(items_s, f"{path}/items")
        cont_f = self.flatten(s["contains"], f"{path}/contains")
        if isinstance(items_f, dict) and "$ref" in items_f or isinstance(cont_f, dict) and "$ref" in cont_f:
            raise GrammarError("'contains' with a recursive $ref is not supported", path=f"{path}/contains")
        both = _merge(items_f, cont_f, f"{path}/contains")
        any_item = self.value(items_s, f"{path}/items", depth + 1)
        hit = self.value(both, f"{path}/contains", depth + 1)
        item, _ = self.seps(depth)
        o, c = self.brackets("[", "]", depth)
        before = Repeat(_seq(any_item, item), 0, None)
        after = Repeat(_seq(item, any_item), 0, None)
        return _seq(o, before, hit, after, c)

    def object(self, s: dict, path: str, depth: int) -> Expr:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise GrammarError("'properties' must be an object", path=f"{path}/properties")
        required = s.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise GrammarError("'required' must be an array of property names", path=f"{path}/required")
        pats = s.get("patternProperties", {})
        if not isinstance(pats, dict):
            raise GrammarError("'patternProperties' must be an object", path=f"{path}/patternProperties")
        addl = s.get("additionalProperties", False if self.strict and "additionalProperties" not in s else True)
        names_s = s.get("propertyNames")
        lo = _count(s, "minProperties", path, 0)
        hi = _count(s, "maxProperties", path, None)
        deps = s.get("dependentRequired", {})
        if not isinstance(deps, dict):
            raise GrammarError("'dependentRequired' must be an object", path=f"{path}/dependentRequired")
        item, key_sep = self.seps(depth)
        o, c = self.brackets("{", "}", depth)
        # named properties (and required ones not listed, which then come from the other keys)
        extra_keys = list(required) + list(deps) + [x for need in deps.values() if isinstance(need, list) for x in need]
        for r in extra_keys:
            if r not in props and isinstance(r, str):
                # a required key not listed comes from patternProperties or additionalProperties: its schema
                matching = [pv for p, pv in pats.items() if _search(p, r, f"{path}/patternProperties")]
                if matching:
                    props = {**props, r: {"allOf": matching} if len(matching) > 1 else matching[0]}
                elif addl is not False:
                    props = {**props, r: addl}
        if any(r not in props for r in required):
            return NOTHING
        named: list[tuple[str, Any]] = []
        for k, v in props.items():
            extra = [pv for p, pv in pats.items() if _search(p, k, f"{path}/patternProperties")]
            sub = {"allOf": [v, *extra]} if extra else v
            if names_s is not None and not _valid(k, names_s, self.root):
                if k in required:
                    return NOTHING
                continue
            named.append((k, sub))
        named_keys = {k for k, _ in named}
        if names_s is not None and pats:
            raise GrammarError("'propertyNames' beside 'patternProperties' is not supported",
                               path=f"{path}/propertyNames")
        # the other keys
        other: Expr | None = None
        if pats:
            if addl is not False and addl is not True or (addl is True and any(v is not True and v != {} for v in pats.values())):
                raise GrammarError("'patternProperties' beside additionalProperties other than false is not supported "
                                   "(it needs the complement of the patterns)", path=f"{path}/patternProperties")
            if addl is True:
                other = _seq(self.key_excluding([k for k, _ in named]), key_sep, self.any_value(path))
            else:
                other = _alt([_seq(literal('"'), pattern_expr(p, f"{path}/patternProperties/{_esc(p)}")[1],
                                   literal('"'), key_sep,
                                   self.value(pv, f"{path}/patternProperties/{_esc(p)}", depth + 1))
                              for p, pv in pats.items()])
        elif addl is not False:
            val = self.value(addl, f"{path}/additionalProperties", depth + 1)
            if val != NOTHING:
                if names_s is not None:
                    ns = self.flatten(names_s, f"{path}/propertyNames")
                    if ns is False:
                        key = NOTHING
                    else:
                        ns = _merge(ns, {"type": "string"}, f"{path}/propertyNames") if isinstance(ns, dict) and "$ref" not in ns else ns
                        key = self.value(ns, f"{path}/propertyNames", depth + 1)
                    # a named key is excluded by order only: it may come again here (documented)
                else:
                    key = self.key_excluding([k for k, _ in named])
                other = _seq(key, key_sep, val) if key != NOTHING else None
        # dependentRequired: keys whose presence must be tracked
        dep_keys: set[str] = set()
        for k, need in deps.items():
            if not isinstance(need, list) or not all(isinstance(x, str) for x in need):
                raise GrammarError("'dependentRequired' values must be arrays of property names",
                                   path=f"{path}/dependentRequired/{_esc(k)}")
            if k not in named_keys and other is not None:
                raise GrammarError(f"dependentRequired on '{k}', which is not a named property, is not supported",
                                   path=f"{path}/dependentRequired/{_esc(k)}")
            if k not in named_keys:
                continue  # k cannot occur: nothing to require
            if any(x not in named_keys for x in need):
                if k in required:
                    return NOTHING
                named = [(nk, nv) for nk, nv in named if nk != k]  # k would need a key that cannot occur
                named_keys.discard(k)
                continue
            if k in required:
                required = required + [x for x in need if x not in required]
            else:
                dep_keys |= {k, *need}
        req = [k for k in named_keys if k in required]
        deps = {k: [x for x in v if x != k] for k, v in deps.items() if k in dep_keys}
        # Members in any order (JSON objects are unordered): the state is (members so far, capped; the
        # tracked keys seen). Tracked: required keys, dependentRequired keys, and every named key when
        # there are few (then no named key can come twice). Untracked optional keys may repeat: a
        # text with a duplicate key has no defined meaning (RFC 8259) and no json.dumps output has one.
        must = set(req) | dep_keys
        tracked = set(named_keys) if len(named_keys) <= TRACK_ALL else set(must)
        cap = max(lo, (hi + 1) if hi is not None else 0, 1)
        if len(must) > MAX_TRACKED:
            raise GrammarError(f"{len(must)} required (or dependentRequired) properties: accepting them in any order "
                               f"needs 2^{len(must)} grammar states; at most {MAX_TRACKED} are supported",
                               path=f"{path}/required")
        oid = len(self.rules)
        pairs = []
        for i, (k, v) in enumerate(named):
            val = self.value(v, f"{path}/properties/{_esc(k)}", depth + 1)
            if val == NOTHING:
                if k in required:
                    return NOTHING
                continue
            pairs.append((k, Ref(self.rule(f"obj{oid}_{k}", _seq(literal(_json_text(k)), key_sep, val)))))
        other_ref = Ref(self.rule(f"obj{oid}_other", other)) if other is not None else None
        memo: dict[tuple, str] = {}

        def state(cnt: int, present: frozenset) -> Expr:
            key = (cnt, present)
            if key not in memo:
                name = memo[key] = self.rule(f"obj{oid}_s{cnt}", shared=True)
                self.rules[name] = build(cnt, present)
            return Goto(memo[key])

        def build(cnt: int, present: frozenset) -> Expr:
            alts: list[Expr] = []
            if cnt >= max(lo, 1) and all(k in present for k in req) \
                    and all(set(deps.get(k, [])) <= present for k in present):
                alts.append(EMPTY)
            if hi is None or cnt < hi:
                sep = item if cnt else EMPTY
                nxt = min(cnt + 1, cap)
                for k, pair in pairs:
                    if k in present:
                        continue
                    alts.append(_seq(sep, pair, state(nxt, present | {k} if k in tracked else present)))
                if other_ref is not None:
                    alts.append(_seq(sep, other_ref, state(nxt, present)))
            return _alt(alts) if alts else NOTHING

        alts = []
        if not req and lo == 0:
            alts.append(self.empty("{", "}"))
        nonempty = build(0, frozenset())
        if nonempty != NOTHING:
            alts.append(_seq(o, Ref(self.rule(f"obj{oid}_members", nonempty)), c))
        return _alt(alts) if alts else NOTHING

    def key_excluding(self, keys: list[str]) -> Expr:
        """A JSON string whose text is none of `keys` (json.dumps-escaped): a trie over the texts, left
        through any other character into the rest of a string."""
        rest = Seq((Repeat(STR_CHAR, 0, None), literal('"')))
        if not keys:
            return Seq((literal('"'),) + rest.items)
        trie: dict = {}
        for key in keys:
            node = trie
            for ch in _json_text(key)[1:-1]:
                node = node.setdefault(ch, {})
            node[""] = {}

        def emit(node: dict, state: int) -> Expr:  # 0 plain, 1 after '\', 2..5 before hex digit 1..4
            kids = {ch: n for ch, n in node.items() if ch}
            taken = [(ord(ch), ord(ch)) for ch in kids]
            alts: list[Expr] = [literal('"')] if state == 0 and "" not in node else []
            if state == 0:
                safe = _minus([(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x10FFFF)], taken)
                if safe:
                    alts.append(_seq(Chars(tuple(safe)), rest))
                if "\\" not in kids:
                    alts.append(_seq(_ESCAPE, rest))
            elif state == 1:
                left = [c for c in '"\\/bfnrt' if c not in kids]
                if left:
                    alts.append(_seq(Chars(normalize(map(ord, left))), rest))
                if "u" not in kids:
                    alts.append(_seq(literal("u"), _HEX, _HEX, _HEX, _HEX, rest))
            else:
                hexes = _minus([(48, 57), (65, 70), (97, 102)], taken)
                if hexes:
                    alts.append(_seq(Chars(tuple(hexes)), *([_HEX] * (5 - state)), rest))
            for ch, nxt_node in kids.items():
                nxt = (1 if ch == "\\" else 0) if state == 0 else (2 if ch == "u" else 0) if state == 1 else (state + 1) % 6
                alts.append(_seq(literal(ch), emit(nxt_node, nxt)))
            return _alt(alts)

        return _seq(literal('"'), emit(trie, 0))


def _strip_empty(e: Expr) -> Expr | None:
    """`e` without its empty alternative (the caller writes the empty container itself)."""
    if e == EMPTY:
        return None
    if isinstance(e, Alt) and EMPTY in e.items:
        rest = [x for x in e.items if x != EMPTY]
        return _alt(rest) if rest else None
    if isinstance(e, Repeat) and e.min == 0:
        return Repeat(e.item, 1, e.max) if e.max != 0 else None
    return e


def _search(pattern: str, key: str, path: str) -> bool:
    try:
        return re.search(pattern, key) is not None
    except re.error as e:
        raise GrammarError(f"malformed pattern /{pattern}/: {e}", path=path) from None


def _count(s: dict, key: str, path: str, default: int | None) -> Any:
    n = s.get(key, default)
    if n is None:
        return None
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise GrammarError(f"'{key}' must be a non-negative integer, not {n!r}", path=f"{path}/{key}")
    if n > MAX_COUNT:
        if key.startswith("max"):
            return None
        raise GrammarError(f"'{key}' {n} is above the supported {MAX_COUNT}", path=f"{path}/{key}")
    return n


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int) or isinstance(v, float) and v.is_integer():
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(v), "?")


def _types(s: dict, path: str) -> list[str]:
    t = s.get("type", list(TYPES))
    ts = t if isinstance(t, list) else [t]
    for i, x in enumerate(ts):
        if x not in TYPES:
            raise GrammarError(f"unsupported type {x!r}; one of {', '.join(TYPES)}",
                               path=f"{path}/type" + (f"/{i}" if isinstance(t, list) else ""))
    if "_types" in s:
        ts = [x for x in ts if x in s["_types"] or (x == "integer" and "number" in s["_types"])]
    return [x for x in TYPES if x in ts]


def _bounds(s: dict, path: str) -> tuple[Decimal | None, bool, Decimal | None, bool]:
    def dec(k: str) -> Decimal | None:
        v = s.get(k)
        if v is None:
            return None
        if not _int_like(v) or (isinstance(v, float) and not math.isfinite(v)):
            raise GrammarError(f"'{k}' must be a number, not {v!r}", path=f"{path}/{k}")
        return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)

    lo, hi, xlo, xhi = dec("minimum"), dec("maximum"), dec("exclusiveMinimum"), dec("exclusiveMaximum")
    lo_x = hi_x = False
    if xlo is not None and (lo is None or xlo >= lo):
        lo, lo_x = xlo, True
    if xhi is not None and (hi is None or xhi <= hi):
        hi, hi_x = xhi, True
    return lo, lo_x, hi, hi_x


def _normalize(s: dict, path: str) -> dict:
    """Draft-04/07 spellings -> 2020-12: items as an array, boolean exclusive bounds, dependencies."""
    s = dict(s)
    for k, b in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(s.get(k), bool):
            if s.pop(k) and b in s:
                s[k] = s.pop(b)
    if isinstance(s.get("items"), list):
        s["prefixItems"] = s.pop("items")
        if "additionalItems" in s:
            s["items"] = s.pop("additionalItems")
    else:
        s.pop("additionalItems", None)  # without an array of items it has no effect
    if "dependencies" in s:
        deps = s.pop("dependencies")
        if not isinstance(deps, dict):
            raise GrammarError("'dependencies' must be an object", path=f"{path}/dependencies")
        for k, v in deps.items():
            if isinstance(v, list):
                s.setdefault("dependentRequired", {})[k] = v
            else:
                raise GrammarError("'dependencies' with a schema (dependentSchemas) is not supported",
                                   path=f"{path}/dependencies/{_esc(k)}")
    if s.get("uniqueItems") is False:
        del s["uniqueItems"]
    for k in ("then", "else"):
        if "if" not in s:
            s.pop(k, None)
    if "if" in s and "then" not in s and "else" not in s:
        del s["if"]
    return s


def _merge(a: Any, b: Any, path: str) -> Any:
    """The schema of what is valid against both a and b (flattened dicts or booleans)."""
    if a is True or a == {}:
        return b
    if b is True or b == {}:
        return a
    if a is False or b is False:
        return False
    if "$ref" in a or "$ref" in b:
        return {"allOf": [a, b]} if False else _merge_ref(a, b, path)
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
            continue
        w = out[k]
        if w == v:
            continue
        if k == "type":
            ta = set(w if isinstance(w, list) else [w])
            tb = set(v if isinstance(v, list) else [v])
            both = (ta & tb) | ({"integer"} if ("integer" in ta and "number" in tb) or ("number" in ta and "integer" in tb) else set())
            out[k] = sorted(both)
        elif k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains"):
            out[k] = max(w, v)
        elif k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            out[k] = min(w, v)
        elif k == "required":
            out[k] = list(dict.fromkeys([*w, *v]))
        elif k in ("properties", "patternProperties"):
            merged = dict(w)
            for pk, pv in v.items():
                merged[pk] = {"allOf": [merged[pk], pv]} if pk in merged else pv
            out[k] = merged
        elif k in ("additionalProperties", "items", "propertyNames", "contains"):
            out[k] = {"allOf": [w, v]}
        elif k == "dependentRequired":
            merged = dict(w)
            for dk, dv in v.items():
                merged[dk] = list(dict.fromkeys([*merged.get(dk, []), *dv]))
            out[k] = merged
        elif k in ("enum", "const"):
            wa = [w] if k == "const" else w
            vb = [v] if k == "const" else v
            out.pop("const", None)
            out["enum"] = [x for x in wa if any(_json_eq(x, y) for y in vb)]
        elif k == "pattern":
            out.setdefault("_patterns", []).append(v)
        elif k in ("anyOf", "oneOf"):
            out[k] = [_merge_any(x, y) for x in w for y in v]
        elif k == "multipleOf" and _int_like(w) and _int_like(v) and float(w).is_integer() and float(v).is_integer():
            out[k] = math.lcm(int(w), int(v))
        elif k in ANNOTATIONS or k not in VALIDATION:
            continue
        else:
            raise GrammarError(f"cannot merge two different '{k}' (allOf or keywords beside $ref)", path=path)
    if "const" in out and "enum" in out:
        out["enum"] = [x for x in out.pop("enum") if _json_eq(x, out["const"])]
        del out["const"]
    # additionalProperties of one side constrains the other side's extra named properties
    for x, y in ((a, b), (b, a)):
        ap = x.get("additionalProperties")
        if ap is not None and ap is not True and "properties" in y:
            xp, xpat = x.get("properties", {}), x.get("patternProperties", {})
            props = dict(out.get("properties", {}))
            for pk in y["properties"]:
                if pk not in xp and not any(re.search(p, pk) for p in xpat):
                    props[pk] = False if ap is False else {"allOf": [props[pk], ap]}
            out["properties"] = props
    return out


def _merge_any(x: Any, y: Any) -> Any:
    return {"allOf": [x, y]}


def _merge_ref(a: dict, b: dict, path: str) -> Any:
    return {"allOf": [a, b]} if not ("$ref" in a and "$ref" in b and a["$ref"] == b["$ref"]) else a


def _json_eq(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if _int_like(x) and _int_like(y):
        return x == y
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_json_eq(a, b) for a, b in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_json_eq(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


def _valid(v: Any, schema: Any, root: Any) -> bool:
    """Whether `v` is valid against `schema` (a subschema of `root`), by the jsonschema package."""
    import jsonschema

    s = {k: x for k, x in schema.items() if not k.startswith("_")} if isinstance(schema, dict) else schema
    if isinstance(s, dict) and isinstance(root, dict):
        s = {**{k: root[k] for k in ("$defs", "definitions") if k in root}, **s}
    try:
        cls = jsonschema.validators.validator_for(root if isinstance(root, dict) else {}, default=jsonschema.Draft202012Validator)
        return cls(s, format_checker=cls.FORMAT_CHECKER).is_valid(v)
    except Exception:  # a schema jsonschema cannot read: keep the value, the grammar decides
        return True


# -- lark text -----------------------------------------------------------------------------------------
def to_lark(g: Grammar) -> str:
    """A `Grammar` as lark EBNF text (Goto written as a plain rule reference)."""
    def rx_char(c: int) -> str:
        ch = chr(c)
        if ch in "\\^$.|?*+()[]{}-/\"":
            return "\\" + ch
        if 0x20 <= c < 0x7F:
            return ch
        return f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"

    def text(e: Expr) -> str:
        if isinstance(e, (Ref, Goto)):
            return e.name
        if isinstance(e, Chars):
            if not e.ranges:
                return r"/[^\x00-\U0010ffff]/"
            return "/[" + "".join(rx_char(a) if a == b else f"{rx_char(a)}-{rx_char(b)}" for a, b in e.ranges) + "]/"
        if isinstance(e, Seq):
            return "(" + " ".join(map(text, e.items)) + ")" if e.items else '_empty'
        if isinstance(e, Alt):
            return "(" + " | ".join(map(text, e.items)) + ")" if e.items else r"/[^\x00-\U0010ffff]/"
        inner = text(e.item)
        if e.max is None:
            return f"{inner}*" if e.min == 0 else f"{inner}+" if e.min == 1 else f"{inner} ~ {e.min} {inner}*"
        if e.max == 0:
            return '_empty'
        return f"[{inner}]" if (e.min, e.max) == (0, 1) else f"[{inner} ~ 1..{e.max}]" if e.min == 0 else f"{inner} ~ {e.min}..{e.max}"

    out = "".join(f"{name}: {text(body)}\n" for name, body in g.rules.items())
    return out + "_empty: \n" if "_empty" in out else out  # lark has no empty terminal, but empty rules
