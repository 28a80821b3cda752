"""JSON Schema -> lark EBNF text for `Grammar.from_lark` (character level: rules, "literals" and
/regexes/ only; the start rule is `start`). The language is XGrammar 0.2.8's (`Grammar.from_json_schema`),
not the spec's, so that both engines let a model write the same texts:
- Whitespace [ \\t\\n\\r]* after `[ { , :` and before `, : ] }` when `any_whitespace`, else exactly ", "
  and ": "; never around the root value.
- Keywords: type (a name or a list), properties, required, additionalProperties, items, prefixItems,
  minItems, maxItems, enum, const, pattern, minLength, maxLength, anyOf, oneOf (a union, as in
  XGrammar), allOf of one schema, $ref to "#" or "#/..." (recursive, but not left-recursive), $defs,
  definitions. Annotations are ignored; any other keyword is a GrammarError naming it.
- As in XGrammar, the first of $ref, const, enum, anyOf, oneOf, allOf, type, properties or
  additionalProperties (an object), items or prefixItems (an array) decides, and the schema's other
  keywords are ignored; with none of them, any JSON value.
- Objects: properties in schema order, optional ones skippable, additional ones (other keys) after
  them. strict_mode: without additionalProperties (items) nothing extra is allowed, except that a bare
  {"type": "object"} ({"type": "array"}) not reached through $ref or allOf admits any object (array).
- enum and const values are written compactly, numbers as picojson prints them (1.0 -> 1).
- pattern: a full match (anchors ignored) that never takes '"', '\\' or a control character.
  minLength/maxLength count raw characters other than '"' '\\' CR LF (no escapes); a pattern wins.
"""
from __future__ import annotations

import json
import math
import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

from ir.errors import GrammarError

ANNOTATIONS = {"title", "description", "$schema", "$id", "examples", "default", "$comment", "deprecated",
               "readOnly", "writeOnly"}
# XGrammar reuses its any-object / any-array rule for a schema equal to {"type": "object"} (or
# "array") once these are dropped; "$id" is not among them.
_XG_ANNOTATIONS = ANNOTATIONS - {"$id"}
# Every supported keyword, and the types its value may have (a bool is not an int here).
KEYWORDS: dict[str, tuple[type, ...]] = {
    "type": (str, list), "properties": (dict,), "required": (list,), "additionalProperties": (bool, dict),
    "items": (bool, dict), "prefixItems": (list,), "minItems": (int,), "maxItems": (int,), "enum": (list,),
    "const": (), "pattern": (str,), "minLength": (int,), "maxLength": (int,), "anyOf": (list,),
    "oneOf": (list,), "allOf": (list,), "$ref": (str,), "$defs": (dict,), "definitions": (dict,),
}
_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", bool: "a boolean", int: "an integer"}
TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
_INT32 = 2**31 - 1  # XGrammar's repetition bound; a larger maxLength/maxItems means unbounded

_ALL = [(0, 0x10FFFF)]
_UNSAFE = [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]  # must be escaped inside a JSON string
_REST = r'(?:[^"\\\x00-\x1f]|\\(?:["\\\/bfnrt]|u[0-9A-Fa-f]{4}))*"'  # the rest of a JSON string
BASICS = {
    "ws": r"/[ \t\n\r]+/?",
    "json_value": "json_number | json_string | json_boolean | json_null | json_array | json_object",
    "json_integer": "/0|-?[1-9][0-9]*/",
    "json_number": r"/-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/",
    "json_string": f'/"{_REST}/',
    "json_rest": f"/{_REST}/",  # after the first character of a string
    "json_boolean": '"true" | "false"',
    "json_null": '"null"',
}


def schema_to_lark(schema: dict | str | bool, *, any_whitespace: bool = True, strict_mode: bool = True) -> str:
    """Lark EBNF text whose language is the JSON texts XGrammar admits for `schema` (a dict, a bool or
    JSON text). Raises GrammarError, with the JSON-pointer path of the culprit, for a malformed schema or
    a keyword this converter does not implement."""
    if isinstance(schema, str):
        def constant(name: str) -> Any:
            raise GrammarError(f"{name} is not a JSON value; write a number")

        try:
            schema = json.loads(schema, parse_constant=constant)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the schema is not valid JSON: {e.msg}", line=e.lineno, column=e.colno) from None
    return _Converter(schema, any_whitespace, strict_mode).convert()


def _esc(key: str) -> str:
    """A key as a JSON-pointer segment."""
    return key.replace("~", "~0").replace("/", "~1")


def _json_str(s: str) -> str:
    """`s` as a JSON string, escaped as picojson (and so XGrammar) writes it."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(short.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or c == "\x7f" else c)
                         for c in s) + '"'


def _dump(v: Any, path: str) -> str:
    """A JSON value written compactly as picojson does: integers within int64 exactly, other numbers as
    doubles ("%.f" when whole and below 2**53, else "%.17g"), object keys in the given order."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and -(2**63) <= v < 2**63:
        return str(v)
    if isinstance(v, (int, float)):
        f = float(v) if isinstance(v, float) or abs(v) < 2**1024 else math.inf
        if not math.isfinite(f):
            raise GrammarError(f"{v!r} is not a finite JSON number", path=path)
        return "%.f" % f if abs(f) < 2**53 and f.is_integer() else "%.17g" % f
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, list):
        return "[" + ",".join(_dump(x, f"{path}/{i}") for i, x in enumerate(v)) + "]"
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return "{" + ",".join(_json_str(k) + ":" + _dump(x, f"{path}/{_esc(k)}") for k, x in v.items()) + "}"
    raise GrammarError(f"{v!r} is not a JSON value", path=path)


def _char(c: int, special: str) -> str:
    """One character inside a lark literal or regex: printable ASCII as is (backslashed if special),
    anything else as a \\u or \\U escape (lark's literals and Python's re both read those)."""
    if chr(c) in special:
        return "\\" + chr(c)
    if 0x20 <= c < 0x7F:
        return chr(c)
    return f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def _lit(text: str) -> str:
    return '"' + "".join(_char(ord(c), '"\\') for c in text) + '"'


def _rx_char(c: int) -> str:
    return _char(c, "\\^$.|?*+()[]{}-/\"")


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


def _class(ranges: list[tuple[int, int]], json_safe: bool = True) -> str:
    """A regex matching one character of `ranges` (less those a JSON string must escape, if json_safe)."""
    ranges = _minus(ranges, _UNSAFE if json_safe else [])
    if not ranges:
        return r"[^\x00-\U0010ffff]"  # nothing
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _rx_char(ranges[0][0])
    neg = _minus(_ALL, ranges)
    body, caret = (ranges, "") if len(ranges) <= len(neg) else (neg, "^")
    return "[" + caret + "".join(_rx_char(a) + ("" if a == b else "-" + _rx_char(b)) for a, b in body) + "]"


_CATEGORIES = {C.CATEGORY_DIGIT: [(48, 57)], C.CATEGORY_WORD: [(48, 57), (65, 90), (95, 95), (97, 122)],
               C.CATEGORY_SPACE: [(9, 13), (32, 32)]}  # ASCII, as XGrammar reads \d \w \s
for _pos, _neg in ((C.CATEGORY_DIGIT, C.CATEGORY_NOT_DIGIT), (C.CATEGORY_WORD, C.CATEGORY_NOT_WORD),
                   (C.CATEGORY_SPACE, C.CATEGORY_NOT_SPACE)):
    _CATEGORIES[_neg] = _minus(_ALL, _CATEGORIES[_pos])
_ANCHORS = (C.AT_BEGINNING, C.AT_END, C.AT_BEGINNING_STRING, C.AT_END_STRING)


def _pattern(pattern: str, path: str) -> str:
    """A JSON Schema pattern as a Python regex over the string's raw characters: read by the standard
    library's parser, then written back with every character class cut to what a JSON string may hold
    unescaped, \\d \\w \\s made ASCII and anchors dropped (XGrammar ignores them; the match is full)."""
    try:
        tree = P.parse(pattern)
    except re.error as e:
        raise GrammarError(f"malformed pattern /{pattern}/: {e}", path=path) from None
    if tree.state.flags & ~C.SRE_FLAG_UNICODE:
        raise GrammarError(f"inline flags in pattern /{pattern}/ are not supported", path=path)

    def emit(items: Any) -> str:
        out = []
        for op, av in items:
            if op is C.LITERAL or op is C.NOT_LITERAL:
                out.append(_class([(av, av)] if op is C.LITERAL else _minus(_ALL, [(av, av)])))
            elif op is C.ANY:
                out.append(_class(_minus(_ALL, [(10, 10)])))
            elif op is C.IN:
                ranges: list[tuple[int, int]] = []
                for o, a in av:
                    ranges += [(a, a)] if o is C.LITERAL else [a] if o is C.RANGE else _CATEGORIES.get(a, [])
                out.append(_class(_minus(_ALL, ranges) if av[0][0] is C.NEGATE else ranges))
            elif op is C.BRANCH:
                out.append("(?:" + "|".join(emit(b) for b in av[1]) + ")")
            elif op is C.SUBPATTERN and not av[1] and not av[2]:
                out.append("(?:" + emit(av[3]) + ")")
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):  # lazy or greedy: same language
                lo, hi, sub = av
                q = "{%d,}" % lo if hi is C.MAXREPEAT else "{%d}" % lo if lo == hi else "{%d,%d}" % (lo, hi)
                out.append("(?:" + emit(sub) + ")" + {"{0,}": "*", "{1,}": "+", "{0,1}": "?"}.get(q, q))
            elif not (op is C.AT and av in _ANCHORS):
                raise GrammarError(f"pattern /{pattern}/ uses {str(op).lower()} {str(av).lower()}, which "
                                   "is not supported (a pattern here is a regular language)", path=path)
        return "".join(out)

    return emit(tree)


def _key_excluding(keys: list[str]) -> str:
    """A lark expression for a JSON string whose text is none of `keys`, the escaped texts of the named
    properties: a trie over those texts, left through any other character into the rest of a string
    (XGrammar builds the same trie, though over the unescaped bytes)."""
    trie: dict = {}
    for key in keys:
        node = trie
        for ch in key:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict, state: int) -> str:  # state 0: plain text, 1: after '\', 2..5: before hex digit 1..4
        kids = {c: n for c, n in node.items() if c}
        taken = [(ord(c), ord(c)) for c in kids]
        alts = [_lit('"')] if state == 0 and "" not in node else []
        if state == 0:
            alts.append(f"/{_class(_minus(_ALL, taken))}/ json_rest")
            alts += [] if "\\" in kids else [r'/\\(?:["\\\/bfnrt]|u[0-9A-Fa-f]{4})/ json_rest']
        elif state == 1:
            left = [(ord(c), ord(c)) for c in '"\\/bfnrt' if c not in kids]
            alts += [f"/{_class(left, json_safe=False)}/ json_rest"] if left else []
            alts += [] if "u" in kids else ["/u[0-9A-Fa-f]{4}/ json_rest"]
        elif hexes := _minus([(48, 57), (65, 70), (97, 102)], taken):
            alts.append(f"/{_class(hexes, json_safe=False)}{'[0-9A-Fa-f]' * (5 - state)}/ json_rest")
        for c, n in kids.items():
            nxt = (1 if c == "\\" else 0) if state == 0 else (2 if c == "u" else 0) if state == 1 else (state + 1) % 6
            alts.append(f"{_lit(c)} {emit(n, nxt)}")
        return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"

    return f"{_lit(chr(34))} {emit(trie, 0)}"


def _seq(*parts: str) -> str:
    return " ".join(p for p in parts if p)


class _Converter:
    def __init__(self, root: Any, any_ws: bool, strict: bool):
        self.root, self.any_ws, self.strict = root, any_ws, strict
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {"#": "start"}
        self.left: set[str] = {"#"}  # $refs being expanded with no character read since (left recursion)
        self.ws = "ws" if any_ws else ""
        self.comma = 'ws "," ws' if any_ws else '", "'
        self.colon = 'ws ":" ws' if any_ws else '": "'

    def convert(self) -> str:
        self.rules["start"] = ""
        self.rules["start"] = self._bare(self.root) or self.expr(self.root, "", "root")
        basics = dict(BASICS)
        basics["json_array"] = _seq('"["', self.ws, "json_value", f"({self.comma} json_value)*", self.ws, '"]"',
                                    "|", '"["', self.ws, '"]"')
        pair = _seq("json_string", self.colon, "json_value")
        basics["json_object"] = _seq('"{"', self.ws, pair, f"({self.comma} {pair})*", self.ws, '"}"',
                                     "|", '"{"', self.ws, '"}"')
        # Emit the shared rules that are used, found by scanning the bodies outside literals and regexes.
        todo, used = list(self.rules.values()), set()
        while todo:
            for name in re.findall(r'"(?:\\.|[^"\\])*"|/(?:\\.|[^/\\])*/|([a-z][a-z0-9_]*)', todo.pop()):
                if name in basics and name not in used:
                    used.add(name)
                    todo.append(basics[name])
        rules = {**self.rules, **{n: b for n, b in basics.items() if n in used}}
        return "".join(f"{name}: {body}\n" for name, body in rules.items())

    def rule(self, hint: str, body: str = "") -> str:
        """A new rule's unique name (made from `hint`), reserved with `body`."""
        base = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_") or "rule"
        base = base if base[0].isalpha() else "r_" + base
        name, i = base, 1
        while name in self.rules or name in BASICS or name in ("json_array", "json_object"):
            i += 1
            name = f"{base}_{i}"
        self.rules[name] = body
        return name

    def _bare(self, s: Any) -> str:
        """XGrammar's shortcut: {"type": "object"} or {"type": "array"} alone admits any object/array."""
        if isinstance(s, dict) and {k for k in s if k not in _XG_ANNOTATIONS} == {"type"} \
                and s["type"] in ("object", "array"):
            return "json_" + s["type"]
        return ""

    def sub(self, s: Any, path: str, hint: str) -> str:
        """The rule for a subschema (XGrammar's CreateRule, where the bare shortcut applies)."""
        if bare := self._bare(s):
            return bare
        name = self.rule(hint)
        body = self.expr(s, path, name)
        if re.fullmatch(r"[a-z][a-z0-9_]*", body):  # an alias: use the rule it names
            del self.rules[name]
            return body
        self.rules[name] = body
        return name

    def check(self, s: dict, path: str) -> None:
        for k, v in s.items():
            if k in ANNOTATIONS:
                continue
            if k not in KEYWORDS:
                how = ' (write "type": [..., "null"] instead)' if k == "nullable" else ""
                raise GrammarError(f"unsupported JSON Schema keyword '{k}'{how}; supported: "
                                   f"{', '.join(KEYWORDS)} and annotations", path=f"{path}/{_esc(k)}")
            want = KEYWORDS[k]
            if want and (not isinstance(v, want) or (isinstance(v, bool) and bool not in want)):
                raise GrammarError(f"'{k}' must be {' or '.join(_TYPE_NAMES[t] for t in want)}, not {v!r}",
                                   path=f"{path}/{_esc(k)}")

    def expr(self, s: Any, path: str, name: str) -> str:
        """The body of rule `name` for schema `s` at JSON pointer `path`."""
        if s is True:
            return "json_value"
        if not isinstance(s, dict):
            what = "false admits no value" if s is False else f"a schema must be an object or a boolean, not {s!r}"
            raise GrammarError(what, path=path)
        self.check(s, path)
        if "$ref" in s:
            return self.ref(s["$ref"], f"{path}/$ref")
        if "const" in s:
            return _lit(_dump(s["const"], f"{path}/const"))
        if "enum" in s:
            if not s["enum"]:
                raise GrammarError("'enum' must not be empty", path=f"{path}/enum")
            return " | ".join(_lit(_dump(v, f"{path}/enum/{i}")) for i, v in enumerate(s["enum"]))
        for kw in ("anyOf", "oneOf"):  # XGrammar admits the union for oneOf too
            if kw in s:
                if not s[kw]:
                    raise GrammarError(f"'{kw}' must not be empty", path=f"{path}/{kw}")
                return " | ".join(self.sub(o, f"{path}/{kw}/{i}", f"{name}_case_{i}") for i, o in enumerate(s[kw]))
        if "allOf" in s:
            if len(s["allOf"]) != 1:
                raise GrammarError("'allOf' is supported with one schema only (XGrammar does not intersect "
                                   "schemas); merge them into one", path=f"{path}/allOf")
            return self.expr(s["allOf"][0], f"{path}/allOf/0", name)  # no bare shortcut here, as in XGrammar
        t = s.get("type")
        for i, x in enumerate(t if isinstance(t, list) else [] if t is None else [t]):
            if x not in TYPES:
                raise GrammarError(f"unsupported type {x!r}; one of {', '.join(TYPES)}",
                                   path=f"{path}/type" + (f"/{i}" if isinstance(t, list) else ""))
        if isinstance(t, list):
            if not t:
                return self.sub({k: v for k, v in s.items() if k != "type"}, path, name)
            return " | ".join(self.sub({**s, "type": x}, path, f"{name}_{x}") for x in t)
        if t is None:
            t = "object" if {"properties", "additionalProperties"} & s.keys() else \
                "array" if {"items", "prefixItems"} & s.keys() else None
        if t is None:
            return "json_value"
        if t == "string":
            return self.string(s, path)
        if t in ("object", "array"):
            saved, self.left = self.left, set()  # "{" or "[" comes first: what follows is not left recursion
            body = self.object(s, path, name) if t == "object" else self.array(s, path, name)
            self.left = saved
            return body
        return "json_" + t

    def ref(self, uri: str, path: str) -> str:
        if uri in self.left:
            raise GrammarError(f"$ref '{uri}' reaches itself before any character is read (left recursion)",
                               path=path)
        if uri in self.refs:
            return self.refs[uri]
        if not uri.startswith("#/"):
            raise GrammarError(f"only local references ('#' or '#/...') are supported, not '{uri}'", path=path)
        target = self.root
        for part in filter(None, uri[2:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise GrammarError(f"$ref '{uri}' does not resolve: no '{part}'", path=path)
            target = target[part]
        name = self.refs[uri] = self.rule(uri[2:] or "ref")
        self.left.add(uri)
        self.rules[name] = self.expr(target, uri[1:], name)  # no bare shortcut here, as in XGrammar
        self.left.discard(uri)
        return name

    def count(self, s: dict, key: str, path: str, default: int | None) -> int | None:
        n = s.get(key, default)
        if n is not None and n < 0 and key in ("maxItems", "minLength", "maxLength"):
            raise GrammarError(f"'{key}' must not be negative", path=f"{path}/{key}")
        return None if n is not None and n > _INT32 and key.startswith("max") else n

    def string(self, s: dict, path: str) -> str:
        if "pattern" in s:
            return "/" + '"' + _pattern(s["pattern"], f"{path}/pattern") + '"' + "/"
        lo, hi = self.count(s, "minLength", path, 0), self.count(s, "maxLength", path, None)
        if lo > _INT32 or (hi is not None and lo > hi):
            raise GrammarError(f"minLength {lo} exceeds maxLength {hi if hi is not None else _INT32}",
                               path=f"{path}/minLength")
        if lo == 0 and hi is None:
            return "json_string"
        return r'/"[^"\\\n\r]{%d,%s}"/' % (lo, "" if hi is None else hi)

    def repeat(self, x: str, lo: int, hi: int | None) -> str:
        """`x` lo..hi times (hi None: unbounded)."""
        if hi == 0:
            return ""
        if hi is None:
            return f"({x})*" if lo == 0 else f"({x})+" if lo == 1 else f"({x}) ~ {lo} ({x})*"
        if lo == 0:
            return f"[{x}]" if hi == 1 else f"[({x}) ~ 1..{hi}]"
        return f"({x})" if lo == hi == 1 else f"({x}) ~ {lo}" if lo == hi else f"({x}) ~ {lo}..{hi}"

    def object(self, s: dict, path: str, name: str) -> str:
        props: dict = s.get("properties", {})
        required = s.get("required", [])
        for i, r in enumerate(required):
            if not isinstance(r, str):
                raise GrammarError(f"'required' must hold property names, not {r!r}", path=f"{path}/required/{i}")
        extra = s.get("additionalProperties", not self.strict)
        addl = None if extra is False else self.sub(extra, f"{path}/additionalProperties", f"{name}_addl")
        empty = _seq('"{"', self.ws, '"}"')
        if not props:
            if addl is None:
                return empty
            pair = _seq("json_string", self.colon, addl)
            return _seq('"{"', self.ws, pair, f"({self.comma} {pair})*", self.ws, '"}"', "|", empty)
        keys, req = list(props), set(required)
        pairs = [_seq(_lit(_json_str(k)), self.colon, self.sub(v, f"{path}/properties/{_esc(k)}", f"{name}_prop_{i}"))
                 for i, (k, v) in enumerate(props.items())]
        if addl:
            key = self.rule(f"{name}_addl_key", _key_excluding([_json_str(k)[1:-1] for k in keys]))
        other = _seq(key, self.colon, addl) if addl else ""
        # tails[i]: what may follow property i: the later properties, each optional unless required,
        # then any additional ones.
        tails = [""] * len(keys)
        if addl:
            tails[-1] = self.rule(f"{name}_part_{len(keys) - 1}", f"({self.comma} {other})*")
        for i in range(len(keys) - 2, -1, -1):
            more = _seq(self.comma, pairs[i + 1], tails[i + 1])
            body = more if keys[i + 1] in req else f"{tails[i + 1]} | {more}" if tails[i + 1] else f"[{more}]"
            tails[i] = self.rule(f"{name}_part_{i}", body)
        firsts = []
        for i, k in enumerate(keys):  # the first property written: any up to the first required one
            firsts.append(_seq(pairs[i], tails[i]))
            if k in req:
                break
        if addl and not req:
            firsts.append(_seq(other, tails[-1]))
        full = _seq('"{"', self.ws, "(" + " | ".join(firsts) + ")", self.ws, '"}"')
        return f"{full} | {empty}" if not req else full

    def array(self, s: dict, path: str, name: str) -> str:
        prefix = s.get("prefixItems", [])
        lo, hi = max(0, self.count(s, "minItems", path, 0)), self.count(s, "maxItems", path, None)
        items = [self.sub(p, f"{path}/prefixItems/{i}", f"{name}_item_{i}") for i, p in enumerate(prefix)]
        if "items" in s:
            addl = None if s["items"] is False else \
                self.sub(s["items"], f"{path}/items", f"{name}_additional" if items else f"{name}_item")
        else:
            addl = None if self.strict else "json_value"
        if hi is not None and lo > hi:
            raise GrammarError(f"minItems {lo} exceeds maxItems {hi}", path=f"{path}/minItems")
        if hi is not None and hi < len(items):
            raise GrammarError(f"maxItems {hi} is less than the {len(items)} prefixItems", path=f"{path}/maxItems")
        if addl is None and lo > len(items):
            raise GrammarError(f"minItems {lo} needs more than the {len(items)} prefixItems, and no other items "
                               "are allowed" + (" (strict_mode)" if "items" not in s else ""), path=f"{path}/minItems")
        empty = _seq('"["', self.ws, '"]"')
        if not items:
            if addl is None or hi == 0:
                return empty
            more = self.repeat(_seq(self.comma, addl), max(lo - 1, 0), None if hi is None else hi - 1)
            full = _seq('"["', self.ws, addl, more, self.ws, '"]"')
            return f"{full} | {empty}" if lo == 0 else full
        # The first min(minItems, n) prefix items are written; each later one may end the array;
        # additional items only after all of them.
        n, head = len(items), min(lo, len(items))
        suffix = self.repeat(_seq(self.comma, addl), max(0, lo - n), None if hi is None else hi - n) if addl else ""
        for k in range(n - 1, max(head, 1) - 1, -1):
            suffix = self.rule(f"{name}_suffix_{k}", f"[{_seq(self.comma, items[k], suffix)}]")
        if head == 0:
            suffix = self.rule(f"{name}_suffix_0", f"[{_seq(items[0], suffix)}]")
        return _seq('"["', self.ws, f" {self.comma} ".join(items[:head]), suffix, self.ws, '"]"')
