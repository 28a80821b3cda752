"""schema_to_lark against XGrammar's converter: for each schema, two independent acceptors -- XGrammar's
matcher on its own grammar, lark's Earley parser on ours -- must agree on every candidate text: valid
instances written in many ways, and near misses (mutations, reordered or missing properties, extra
items, whitespace around the root). Then the errors: every unsupported keyword or malformed value is a
GrammarError naming the keyword and its JSON-pointer path."""
from __future__ import annotations

import functools
import json
import random

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.grammar.json_schema import schema_to_lark
from ir.errors import GrammarError

xgrammar = pytest.importorskip("xgrammar")
from xgrammar.testing import _get_matcher_from_grammar  # noqa: E402  (XGrammar's own string matcher)

SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def _acceptors(schema_json: str, any_whitespace: bool, strict_mode: bool):
    """(XGrammar's acceptor, ours), or None for a schema XGrammar refuses."""
    try:
        grammar = xgrammar.Grammar.from_json_schema(schema_json, any_whitespace=any_whitespace, strict_mode=strict_mode)
    except RuntimeError:
        return None
    matcher = _get_matcher_from_grammar(grammar)
    parser = lark.Lark(schema_to_lark(schema_json, any_whitespace=any_whitespace, strict_mode=strict_mode),
                       start="start", parser="earley", lexer="dynamic")

    def theirs(text: str) -> bool:
        matcher.reset()
        return matcher.accept_string(text) and matcher.is_terminated()

    def ours(text: str) -> bool:
        try:
            parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False

    return theirs, ours


def disagreements(schema, texts, **options) -> tuple[list, int]:
    """The texts on which the two acceptors differ, with both verdicts, and how many XGrammar accepts."""
    theirs, ours = _acceptors(json.dumps(schema), options.get("any_whitespace", True), options.get("strict_mode", True))
    verdicts = [(t, theirs(t), ours(t)) for t in sorted(set(texts))]
    return [v for v in verdicts if v[1] != v[2]], sum(v[1] for v in verdicts)


def renderings(value) -> set[str]:
    """`value` written compactly, spaced, indented, with odd whitespace, and with non-ASCII escaped or not."""
    out = set()
    for kw in ({}, {"separators": (",", ":")}, {"indent": 2}, {"indent": "\t"}, {"separators": (" ,\n", " :\r")},
               {"indent": " \t", "ensure_ascii": False}, {"ensure_ascii": False, "separators": (",", ":")}):
        text = json.dumps(value, **kw)
        out |= {text, " " + text, text + "\n"}  # whitespace around the root: never accepted
    return out


ALPHABET = ' \n\t,:{}[]"\\0123456789-.eE+abtrufnlxz\x01é'


def mutations(text: str, rng: random.Random, n: int) -> list[str]:
    """Near misses: one character deleted, inserted or replaced."""
    out = []
    for _ in range(n):
        i, c = rng.randrange(len(text) + 1), rng.choice(ALPHABET)
        out.append(rng.choice([text[:i - 1] + text[i:], text[:i] + c + text[i:], text[:i - 1] + c + text[i:]]))
    return out


NODE = {"type": "object", "properties": {"value": {"type": "integer"},
                                         "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value"]}
# (schema, instances): the instances include invalid ones on purpose.
CASES = {
    "object": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                 "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["name"]},
               [{"name": "x"}, {"name": "x", "age": 3}, {"name": "é\n\"", "tags": ["a", "b"]}, {"age": 3, "name": "x"},
                {"name": "x", "age": -0.5}, {"name": "x", "extra": 1}, {}, {"tags": []}]),
    "nested_arrays": ({"type": "array", "maxItems": 3,
                       "items": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2}},
                      [[], [[1]], [[1, 2], [3.5e3]], [[1, 2, 3]], [[]], [[1], [2], [3], [4]], [[-0.0, 1e-5]]]),
    "enum": ({"enum": ["red", "green", 1, 2.5, True, None, [1, "a"], {"k": "v"}]},
             ["red", "green", 1, 1.0, 2.5, True, False, None, [1, "a"], {"k": "v"}, "blue"]),
    "const": ({"const": {"a": [1, 2.0, {"b": None}]}}, [{"a": [1, 2, {"b": None}]}, {"a": [1, 2.0, {"b": None}]}, {"a": [1]}]),
    "pattern": ({"type": "string", "pattern": "^[a-z]+-\\d{2,3}$"}, ["ab-12", "a-123", "ab-1", "AB-12", "-12", "ab-1234"]),
    "ref_recursion": ({"$defs": {"node": NODE}, "$ref": "#/$defs/node"},
                      [{"value": 1}, {"value": 1, "children": []}, {"children": []}, {"value": 1, "children": [{}]},
                       {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}]),
    "root_ref": ({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"$ref": "#"}]}},
                 [[], [1, [2, [3, []]]], [[[[]]]], [1, "a"], [[1], {}]]),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}, {"type": "null"}]},
              [1, "abc", "abcd", None, 1.5, True, ""]),
    "type_list": ({"type": ["string", "integer", "null", "boolean"]}, ["a", 1, None, True, 1.5, [], {}]),
    "additional": ({"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
                    "additionalProperties": {"type": "integer"}},
                   [{}, {"a": True}, {"b": None, "x": 1}, {"x": 1}, {"x": 1, "a": True}, {"a": True, "b": None, "c": 3},
                    {"a": True, "a2": 1, "ab": 2}, {"b": None, "a": True}, {"a": 1}, {"b": 7}, {"": 1}]),
    "prefix_items": ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                      "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4},
                     [[], [1], [1, "a"], [1, "a", True], [1, "a", True, False], [1, "a", True, False, True], ["a"],
                      [1, True]]),
    "length": ({"type": "string", "minLength": 2, "maxLength": 4}, ["ab", "abcd", "a", "abcde", "a\tb", "a\\nb", "éé"]),
    "required_elsewhere": ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                            "required": ["zz"], "additionalProperties": True},  # names no property: XGrammar's rules
                           [{}, {"a": 1}, {"b": 2}, {"q": 1}, {"a": 1, "q": [1]}, {"zz": 1}]),
    "one_of": ({"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "number"}},
                           "required": ["kind"]},
                          {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]},
               [{"kind": "a"}, {"kind": "a", "x": 1}, {"kind": "b"}, {"kind": "b", "x": 1}, {"kind": "c"}]),
    # XGrammar's cache: a bare {"type": "object"/"array"} admits anything of that type, even strictly,
    # but not through $ref or allOf, nor with "$id" or "required" beside it.
    "bare": ({"type": "object", "properties": {"o": {"type": "object"}, "a": {"type": "array", "title": "t"},
                                               "r": {"$ref": "#/definitions/o"}, "l": {"allOf": [{"type": "object"}]},
                                               "i": {"type": "object", "$id": "x"}, "q": {"type": "object", "required": []}},
              "definitions": {"o": {"type": "object"}}},
             [{"o": {"x": 1}, "a": [1, {}]}, {"r": {}}, {"r": {"x": 1}}, {"l": {"x": 1}}, {"l": {}}, {"i": {"x": 1}},
              {"q": {"x": 1}}, {"q": {}, "i": {}}]),
    "any": ({}, [1, "a", None, [1, {"a": [True]}], {"x": -1.5e+10}]),
    "numbers": ({"type": ["number", "integer"]}, [0, -0.0, 1.5, -1e10, 1e-7, 10**30, 0.1]),
}


@pytest.mark.parametrize("options", [{}, {"any_whitespace": False}, {"strict_mode": False}], ids=["ws", "compact", "lax"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_language_as_xgrammar(case, options):
    schema, instances = CASES[case]
    rng = random.Random(case)
    texts = set().union(*(renderings(v) for v in instances))
    for t in sorted(texts):
        texts.update(mutations(t, rng, 12))
    bad, accepted = disagreements(schema, texts, **options)
    assert not bad, f"(text, XGrammar, ours): {bad[:5]}"
    assert 0 < accepted < len(texts)  # neither vacuous nor trivial


@pytest.mark.parametrize("pattern, values", [
    ("a.c", ["abc", 'a"c', "a\\c", "aéc", "a\x7fc", "a😀c", "ac"]),  # '.' never matches what JSON escapes
    ("\\S+\\s\\w", ["a b", "é\tb", "a  b", "a b_"]),  # ASCII \s \w; \S takes any other character
    ("[^a-c]{2}", ["dd", "ad", '""', "é😀", "\\\\"]),
    ("(ab|c)*d?$", ["", "abcd", "abc", "d", "dd"]),
    ("x^y", ["xy", "x^y"]),  # anchors are ignored, even in the middle
    ("[\\d.]+|\\.\\*\\/", ["1.2", "..", "a", ".*/"]),
    ("a{2,}b{0,1}", ["aa", "aab", "a", "aaaabb"]),
    ("é+|[\\]\\-]", ["é", "éé", "e", "]", "-"]),
])
def test_pattern_same_language(pattern, values):
    rng = random.Random(pattern)
    texts = set().union(*(renderings(v) for v in values))
    texts.update(m for t in sorted(texts) for m in mutations(t, rng, 10))
    bad, accepted = disagreements({"type": "string", "pattern": pattern}, texts)
    assert not bad and accepted


# Random schemas over the supported keywords, and texts sampled from them (valid or nearly so).
NAMES = ["a", "b", "ab", "c_d"]
LEAVES = st.sampled_from([
    {"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "boolean"}, {"type": "null"}, {},
    {"type": "string", "maxLength": 2}, {"type": "string", "pattern": "[a-c]+x?"}, {"enum": ["x", 1, None]},
    {"const": [1, "y"]}, {"type": ["integer", "null"]}, {"type": "object"}, {"type": "array"}])


@st.composite
def objects(draw, kids):
    props = draw(st.dictionaries(st.sampled_from(NAMES), kids, max_size=3))
    s = {"type": "object", "properties": props}
    if required := draw(st.lists(st.sampled_from(list(props) or NAMES), unique=True, max_size=2)):
        s["required"] = required
    extra = draw(st.sampled_from(["absent", False, True, "schema"]))
    if extra != "absent":
        s["additionalProperties"] = draw(kids) if extra == "schema" else extra
    return s


@st.composite
def arrays(draw, kids):
    s: dict = {"type": "array"}
    if prefix := draw(st.lists(kids, max_size=2)):
        s["prefixItems"] = prefix
    items = draw(st.sampled_from(["absent", False, "schema"]))
    if items != "absent":
        s["items"] = draw(kids) if items == "schema" else False
    lo = draw(st.integers(0, 2))
    if lo:
        s["minItems"] = lo
    if draw(st.booleans()):
        s["maxItems"] = draw(st.integers(lo, lo + 2))
    return s


SCHEMAS = st.recursive(LEAVES, lambda kids: st.one_of(
    objects(kids), arrays(kids), st.builds(lambda xs: {"anyOf": xs}, st.lists(kids, min_size=1, max_size=3))),
    max_leaves=6)


def sample(s, rng: random.Random, depth: int = 0):
    """A value for `s`, valid more often than not."""
    if not isinstance(s, dict) or depth > 4:
        return rng.choice([0, "v", None, [1], {"k": 2}])
    if "const" in s or "enum" in s:
        return s["const"] if "const" in s else rng.choice(s["enum"])
    if "anyOf" in s:
        return sample(rng.choice(s["anyOf"]), rng, depth + 1)
    t = s.get("type")
    t = rng.choice(t) if isinstance(t, list) else t
    if t == "object":
        out = {k: sample(v, rng, depth + 1) for k, v in s.get("properties", {}).items()
               if k in s.get("required", []) or rng.random() < 0.6}
        if rng.random() < 0.3:
            out[rng.choice(["zz", "a", "abc"])] = sample(s.get("additionalProperties", {}), rng, depth + 1)
        return out
    if t == "array":
        prefix = s.get("prefixItems", [])
        out = [sample(p, rng, depth + 1) for p in prefix[:rng.randint(0, len(prefix))]]
        return out + [sample(s.get("items", {}), rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {"integer": rng.choice([0, 7, -13, 1.5]), "number": rng.choice([0, -1.25, 3e8]), "boolean": True,
            "string": rng.choice(["", "a", "abc", "bax", "é\"\\"]), "null": None}.get(t, rng.choice([1, "s", [], {}]))


@SLOW
@given(schema=SCHEMAS, seed=st.integers(0, 2**32), options=st.sampled_from(
    [{}, {"any_whitespace": False}, {"strict_mode": False}]))
def test_random_schemas_same_language(schema, seed, options):
    try:
        schema_to_lark(schema, **options)
    except GrammarError:  # then XGrammar must refuse it too (e.g. minItems beyond what is allowed)
        assert _acceptors(json.dumps(schema), options.get("any_whitespace", True), options.get("strict_mode", True)) is None
        return
    rng = random.Random(seed)
    texts = set()
    for _ in range(6):
        texts |= renderings(sample(schema, rng))
    texts.update(m for t in sorted(texts) for m in mutations(t, rng, 3))
    bad, _ = disagreements(schema, texts, **options)
    assert not bad, f"{json.dumps(schema)}: (text, XGrammar, ours): {bad[:5]}"


@SLOW
@given(data=st.data())
def test_random_mutations_agree(data):
    case = data.draw(st.sampled_from(["object", "additional", "prefix_items", "ref_recursion"]))
    schema, instances = CASES[case]
    text = data.draw(st.sampled_from(sorted(set().union(*(renderings(v) for v in instances)))))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        text = text[:i] + data.draw(st.sampled_from(["", " ", ",", '"', "}", "]", "1", "null", '"a":'])) + \
            text[i + data.draw(st.integers(0, 2)):]
    bad, _ = disagreements(schema, [text])
    assert not bad, bad


def test_key_with_escapes_excluded_by_its_json_text():
    """XGrammar's trie over a property's unescaped bytes admits invalid JSON ({"a"": 1}); ours excludes
    the escaped text, so additional keys stay valid JSON strings other than the property's."""
    parser = lark.Lark(schema_to_lark({"properties": {'a"\\é': {"type": "integer"}}, "additionalProperties": True}),
                       start="start", parser="earley", lexer="dynamic")

    def ok(text: str) -> bool:
        try:
            parser.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False

    assert ok('{"a\\"\\\\é": 1}') and not ok('{"a\\"\\\\é": "x"}') and not ok('{"a"": 1}')
    assert ok('{"a\\"\\\\éx": "x"}') and ok('{"a\\"\\\\": "x"}') and ok('{"a\\u0022": "x"}')


def test_grammar_text_shape():
    text = schema_to_lark(CASES["object"][0])
    assert text.startswith("start: ")
    assert "%" not in text and not any(line[:1].isupper() for line in text.splitlines())
    assert schema_to_lark('{"type": "integer"}') == "start: json_integer\njson_integer: /0|-?[1-9][0-9]*/\n"
    assert 'start: "1" | "0.10000000000000001" | "1e+22" | "-0"' in schema_to_lark({"enum": [1.0, 0.1, 1e22, -0.0]})


@pytest.mark.parametrize("schema, path, words", [
    ({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}}, "/properties/age/minimum", "minimum"),
    ({"type": "string", "format": "date"}, "/format", "format"),
    ({"type": "integer", "nullable": True}, "/nullable", '"null"'),
    ({"items": {"type": "array", "uniqueItems": True}}, "/items/uniqueItems", "uniqueItems"),
    ({"type": "object", "required": "a"}, "/required", "must be an array"),
    ({"type": "object", "required": [1]}, "/required/0", "property names"),
    ({"type": "array", "minItems": 3, "maxItems": 2, "items": {}}, "/minItems", "exceeds maxItems"),
    ({"type": "array", "minItems": "2"}, "/minItems", "must be an integer"),
    ({"type": "array", "minItems": True}, "/minItems", "must be an integer"),
    ({"type": "array", "minItems": 1}, "/minItems", "strict_mode"),
    ({"type": "array", "prefixItems": [{}, {}], "maxItems": 1}, "/maxItems", "prefixItems"),
    ({"type": "string", "maxLength": -1}, "/maxLength", "negative"),
    ({"type": "string", "minLength": 3, "maxLength": 2}, "/minLength", "exceeds"),
    ({"type": "date"}, "/type", "unsupported type"),
    ({"type": ["string", 3]}, "/type/1", "unsupported type"),
    ({"enum": []}, "/enum", "empty"),
    ({"anyOf": []}, "/anyOf", "empty"),
    ({"allOf": [{}, {}]}, "/allOf", "one schema"),
    ({"$ref": "#/$defs/missing"}, "/$ref", "does not resolve"),
    ({"$ref": "https://example.com/s.json"}, "/$ref", "local"),
    ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"},
     "/$defs/a/anyOf/0/$ref", "left recursion"),
    ({"anyOf": [{"$ref": "#"}]}, "/anyOf/0/$ref", "left recursion"),
    ({"properties": {"x": False}}, "/properties/x", "false"),
    ({"properties": {"x": 3}}, "/properties/x", "must be an object or a boolean"),
    ({"type": "string", "pattern": "a(?=b)"}, "/pattern", "not supported"),
    ({"type": "string", "pattern": "(?i)a"}, "/pattern", "flags"),
    ({"type": "string", "pattern": "a("}, "/pattern", "malformed"),
    ({"const": float("nan")}, "/const", "finite"),
    ({"properties": {"a/b": {"type": "integer", "exclusiveMaximum": 3}}}, "/properties/a~1b/exclusiveMaximum", "exclusiveMaximum"),
])
def test_errors_name_the_keyword_and_path(schema, path, words):
    with pytest.raises(GrammarError) as e:
        schema_to_lark(schema)
    assert e.value.path == path and words in str(e.value) and path in str(e.value)


def test_malformed_json_gives_line_and_column():
    with pytest.raises(GrammarError) as e:
        schema_to_lark('{"type": "object",\n  "properties": {"a" {}}}')
    assert (e.value.line, e.value.column) == (2, 22) and "line 2, column 22" in str(e.value)
    with pytest.raises(GrammarError, match="NaN"):
        schema_to_lark('{"const": NaN}')
    with pytest.raises(GrammarError, match="false admits no value"):
        schema_to_lark(False)


def test_annotations_are_ignored():
    plain = {"type": "object", "properties": {"a": {"type": "string"}}}
    noted = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "title": "T", "description": "d",
             "examples": [{}], "default": {}, "$comment": "c",
             "type": "object", "properties": {"a": {"type": "string", "title": "A", "default": "z"}}}
    assert schema_to_lark(noted) == schema_to_lark(plain)
