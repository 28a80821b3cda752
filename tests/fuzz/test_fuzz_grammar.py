"""Fuzz surface "grammar": lark EBNF, regular expressions and JSON Schemas (dicts and JSON text), mutated from
seeds (the built-in JSON grammar, hand-written grammars, schemas from ../shared/jsonschemabench when present)
and random. Each is compiled against a byte vocabulary and a matcher is driven with random tokens (ids in and
out of range), masks and rollbacks: typed errors (GrammarError) only, and fast (docs/fuzzing.md).

    pytest tests/fuzz/test_fuzz_grammar.py
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_grammar.py
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fuzzing import failed, fuzz, json_values, mutated, ours
from hypothesis import strategies as st

from compiler.grammar import Grammar, GrammarMatcher, TokenizerInfo, allocate_token_bitmask, compile_grammar
from compiler.grammar.grammar import JSON_GRAMMAR

BYTES = TokenizerInfo([bytes([i]) for i in range(256)] + [b"<eos>", b"ab", b"\xe4\xb8", b"{\"", b""],
                      stop_token_ids=[256])
LARK = [JSON_GRAMMAR, 'start: "a" start "b" | "ab"', 'start: x+\nx: /[0-9]{1,3}/ ("," | ";")', "%import common.INT\nstart: INT",
        'start: "(" start ")" start | ""', "start: a\na: b\nb: a | \"x\"", "start: /a{2,5}b?/ ~ 3"]
REGEX = [r"[a-z]+@[a-z]+\.com", r"(ab|cd){2,4}", r"\d{3}-\d{4}", r"[^\x00-\x1f]*", r"(?i)hello|world", r"a.b\s\w",
         r"(\((\d+)\))?", r"[\u4e00-\u9fff]{1,3}"]
SCHEMAS: list[Any] = [
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": -5}, "b": {"type": "string", "maxLength": 3}},
     "required": ["a"]},
    {"type": "array", "items": {"enum": [1, "x", None]}, "minItems": 1, "maxItems": 4},
    {"anyOf": [{"type": "number", "exclusiveMaximum": 1e300}, {"$ref": "#/$defs/s"}], "$defs": {"s": {"type": "string",
                                                                                                     "pattern": "^a+$"}}},
    {"type": "string", "format": "date-time"}, True, False, {},
]
_BENCH = Path(__file__).parents[3] / "shared" / "jsonschemabench" / "data"
if _BENCH.is_dir():
    def _required(s: Any) -> int:
        if isinstance(s, dict):
            r = s.get("required")
            return max([len(r) if isinstance(r, list) else 0] + [_required(v) for v in s.values()])
        return max([_required(v) for v in s] + [0]) if isinstance(s, list) else 0

    # not the large ones, nor objects of 5 or more required keys (members in any order: 2^n states): they take
    # seconds to compile (bounded by automaton.py's MAX_STATES), too few examples a minute
    SCHEMAS += [s for s in (json.loads(p.read_text())["schema"] for p in sorted(_BENCH.glob("*.json"))[::20])
                if len(json.dumps(s)) < 3000 and _required(s) < 5]
KEYWORDS = ["type", "properties", "required", "items", "prefixItems", "enum", "const", "anyOf", "oneOf", "allOf", "not",
            "$ref", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
            "minLength", "maxLength", "pattern", "format", "minItems", "maxItems", "uniqueItems",
            "additionalProperties", "patternProperties", "minProperties", "maxProperties", "if", "then", "else",
            "integer", "number", "string", "object", "array", "boolean", "null", "#", "#/$defs/x", "#/properties"]
LARK_WORDS = ["start", "x", "a", "b", "%import", "common", "INT", "WORD", "%ignore", "%declare", "~", "*", "+", "?",
              "|", "->", ".2", "_x", "?x", "!x", "X"]
REGEX_PIECES = ["(", ")", "[", "]", "{", "}", "{0,4294967295}", "{99999}", "*", "+", "?", "*?", "|", "\\", "\\1", "(?=",
                "(?<", "(?P<n>", "(?:", "^", "$", ".", "\\d", "\\p{L}", "\\u", "\\x", "[^", "-", "(" * 40]


def schemas() -> st.SearchStrategy[Any]:
    keyed = st.recursive(st.one_of(json_values(1), st.sampled_from(KEYWORDS)),
                         lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                st.dictionaries(st.sampled_from(KEYWORDS), kids, max_size=4)),
                         max_leaves=12)
    text = st.sampled_from(SCHEMAS).map(json.dumps).flatmap(lambda t: mutated(t, KEYWORDS, ['"', "{", "}", "[", ",", ":"]))
    return st.one_of(keyed, st.sampled_from(SCHEMAS), text, json_values())


def cases() -> st.SearchStrategy[tuple]:
    lark = st.one_of(st.sampled_from(LARK).flatmap(lambda t: mutated(t, LARK_WORDS, ['"', "/", "(", ")", "\n", ":"])),
                     st.text(max_size=80))
    regex = st.one_of(st.sampled_from(REGEX).flatmap(lambda t: mutated(t, ["a", "b", "\\d", "\\w"], REGEX_PIECES)),
                      st.text(alphabet="ab()[]{}*+?|^$\\.-,0123456789dwsux:=<!P", max_size=40))
    grammar = st.one_of(st.tuples(st.just("lark"), lark), st.tuples(st.just("regex"), regex),
                        st.tuples(st.just("json_schema"), schemas()))
    tokens = st.lists(st.one_of(st.integers(0, BYTES.vocab_size - 1),
                                st.sampled_from([-1, BYTES.vocab_size, 2**31, -2**63, 10**30])), max_size=12)
    return st.tuples(grammar, tokens, st.integers(-2, 20))


MAKE = {"lark": Grammar.from_lark, "regex": Grammar.from_regex, "json_schema": Grammar.from_json_schema}


def check(case: tuple) -> None:
    (kind, source), tokens, back = case
    g = ours(MAKE[kind], source)
    if failed(g):
        return
    c = ours(compile_grammar, g, BYTES)
    if failed(c):
        return
    m = GrammarMatcher(c)
    mask = allocate_token_bitmask(1, BYTES.vocab_size)
    for t in tokens:
        ours(m.fill_next_token_bitmask, mask, 0)
        ours(m.accept_token, t)
    ours(m.rollback, back)
    ours(m.accept_string, "{\"a\": 1}")
    m.is_terminated(), m.is_complete()


FOUND = [  # what fuzzing found: each raised a plain Python error before its fix
    (("lark", 'start: "a" start "b" | ""'), [], 0),  # lark.exceptions.GrammarError (an empty literal) escaped
]


def test_grammar() -> None:
    fuzz("grammar", cases(), check, examples=60, slow_s=30, found=FOUND)
