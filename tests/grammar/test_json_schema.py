"""schema_to_lark checked against the JSON Schema spec, as the `jsonschema` package reads it.

Until issue 21 this file asserted that we accept exactly XGrammar's language (strict_mode, the first
of anyOf's keywords decides, patterns matched in full, properties in schema order). Issue 21 made our
language the spec's instead (unknown keywords ignored, patterns searched, objects' members in any
order, bounds and formats enforced), so the reference is now the spec: for each schema, candidate
texts -- valid instances written in several layouts, and near misses (mutations) -- are fed byte by
byte to our matcher, and each verdict must equal "json.loads reads it, without a
duplicate key, `jsonschema` says it is valid, and it is written in the layout asked for". XGrammar is
kept as a second reference only where the two languages coincide by construction
(`test_same_language_as_xgrammar_where_they_coincide`). Then the errors: every keyword we cannot
enforce, and every malformed value, is a GrammarError naming the keyword and its JSON-pointer path."""
from __future__ import annotations

import functools
import json
import random
import re

import jsonschema
import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.grammar import GrammarMatcher, TokenizerInfo, compile_grammar
from compiler.grammar.json_schema import schema_to_grammar, schema_to_lark
from ir.errors import GrammarError

SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAYOUTS = {"default": {}, "compact": {"separators": (",", ":")}, "ws": {"any_whitespace": True}}


BYTES = TokenizerInfo([bytes([i]) for i in range(256)] + [b"<eos>"], stop_token_ids=[256])


@functools.lru_cache(maxsize=None)
def _ours(schema_json: str, options: str):
    compiled = compile_grammar(schema_to_grammar(schema_json, **json.loads(options)), BYTES)

    def ours(text: str) -> bool:
        m = GrammarMatcher(compiled)
        return all(m.accept_token(b) for b in text.encode()) and m.accept_token(256)

    return ours


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|[^\s"]+')


def in_layout(text: str, options: dict) -> bool:
    """Whether the whitespace outside strings is where the layout puts it: never around the root;
    any_whitespace: anywhere between tokens; else exactly the separators' and nothing else."""
    if text != text.strip(" \t\n\r"):
        return False
    if options.get("any_whitespace"):
        return True
    item, key = options.get("separators", (", ", ": "))
    parts = _TOKEN.findall(text)
    for i, p in enumerate(parts):
        if p.isspace():
            prev = parts[i - 1] if i else ""
            if not (prev.endswith(",") and p == item[1:] or prev.endswith(":") and p == key[1:]):
                return False
        elif not p.startswith('"'):
            if ("," in p[:-1] and item[1:]) or (":" in p[:-1] and key[1:]) or \
                    (p.endswith(",") and item[1:] and i + 1 < len(parts) and not parts[i + 1].isspace()) or \
                    (p.endswith(":") and key[1:] and i + 1 < len(parts) and not parts[i + 1].isspace()):
                return False
    return True


def spec_verdict(schema, text: str, options: dict) -> bool:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError:
        return False
    cls = jsonschema.validators.validator_for(schema if isinstance(schema, dict) else {},
                                              default=jsonschema.Draft202012Validator)
    return in_layout(text, options) and cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(value)


def disagreements(schema, texts, **options) -> tuple[list, int]:
    """The texts on which ours and the spec differ, with both verdicts, and how many the spec accepts."""
    ours = _ours(json.dumps(schema), json.dumps(options, sort_keys=True))
    verdicts = [(t, spec_verdict(schema, t, options), ours(t)) for t in sorted(set(texts))]
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
                            "required": ["zz"], "additionalProperties": {"type": "integer"}},  # from the other keys
                           [{}, {"a": 1}, {"b": 2}, {"q": 1}, {"a": 1, "q": [1]}, {"zz": 1}]),
    "one_of": ({"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "number"}},
                           "required": ["kind"]},
                          {"type": "object", "properties": {"kind": {"const": "b"}}, "required": ["kind"]}]},
               [{"kind": "a"}, {"kind": "a", "x": 1}, {"kind": "b"}, {"kind": "b", "x": 1}, {"kind": "c"}]),
    # a bare {"type": "object"/"array"} admits anything of that type, however it is reached
    "bare": ({"type": "object", "properties": {"o": {"type": "object"}, "a": {"type": "array", "title": "t"},
                                               "r": {"$ref": "#/definitions/o"}, "l": {"allOf": [{"type": "object"}]},
                                               "i": {"type": "object", "$id": "x"}, "q": {"type": "object", "required": []}},
              "definitions": {"o": {"type": "object"}}},
             [{"o": {"x": 1}, "a": [1, {}]}, {"r": {}}, {"r": {"x": 1}}, {"l": {"x": 1}}, {"l": {}}, {"i": {"x": 1}},
              {"q": {"x": 1}}, {"q": {}, "i": {}}]),
    "any": ({}, [1, "a", None, [1, {"a": [True]}], {"x": -1.5e+10}]),
    "numbers": ({"type": ["number", "integer"]}, [0, -0.0, 1.5, -1e10, 1e-7, 10**30, 0.1]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_language_as_the_spec(case, layout):
    schema, instances = CASES[case]
    rng = random.Random(case)
    texts = set().union(*(renderings(v) for v in instances))
    for t in sorted(texts):
        texts.update(mutations(t, rng, 12))
    bad, accepted = disagreements(schema, texts, **LAYOUTS[layout])
    assert not bad, f"(text, spec, ours): {bad[:5]}"
    assert 0 < accepted < len(texts)  # neither vacuous nor trivial


def test_members_in_any_order_and_at_most_once():
    """JSON objects are unordered (regressions: MaskBench's Github_medium---o45395 and
    MCPspec---CallToolResult have valid instances with the required keys first)."""
    s = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {}},
         "required": ["b", "c"], "additionalProperties": False}
    bad, _ = disagreements(s, ['{"c": 1, "b": "x"}', '{"b": "x", "a": 1, "c": null}', '{"c": 1, "a": 2, "b": "x"}',
                               '{"a": 1, "b": "x"}', '{"b": "x", "c": 1, "b": "y"}', '{"c": 1, "a": "x", "b": "x"}'])
    assert not bad, bad


@pytest.mark.parametrize("pattern, values", [
    ("a.c", ["abc", 'a"c', "a\\c", "aéc", "a\x7fc", "a😀c", "ac"]),  # '.' never matches what JSON escapes
    ("\\S+\\s\\w", ["a b", "é\tb", "a  b", "a b_"]),  # ASCII \s \w; \S takes any other character
    ("[^a-c]{2}", ["dd", "ad", '""', "é😀", "\\\\"]),
    ("(ab|c)*d?$", ["", "abcd", "abc", "d", "dd"]),
    ("[\\d.]+|\\.\\*\\/", ["1.2", "..", "a", ".*/"]),
    ("a{2,}b{0,1}", ["aa", "aab", "a", "aaaabb"]),
    ("é+|[\\]\\-]", ["é", "éé", "e", "]", "-"]),
])
def test_pattern_same_language(pattern, values):
    rng = random.Random(pattern)
    # non-ASCII characters as written (UTF-8): see test_pattern_unicode_escapes for \\uXXXX
    texts = set().union(*(renderings(v) for v in values))
    texts.update(m for t in sorted(texts) for m in mutations(t, rng, 10))
    texts = {t for t in texts if "\\u" not in t}
    bad, accepted = disagreements({"type": "string", "pattern": pattern}, texts)
    assert not bad and accepted, bad[:5]


@pytest.mark.xfail(reason="known gap: inside pattern/format strings a character JSON need not escape is "
                   "matched as written, not as a \\uXXXX escape (json.dumps(ensure_ascii=True) writes é so)",
                   strict=True)
def test_pattern_unicode_escapes():
    bad, _ = disagreements({"type": "string", "pattern": "a.c"}, ['"a\\u00e9c"'])
    assert not bad


def test_anchor_inside_a_pattern_is_refused_with_its_path():
    with pytest.raises(GrammarError) as e:
        schema_to_lark({"type": "string", "pattern": "x^y"})
    assert e.value.path == "/pattern"


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
@given(schema=SCHEMAS, seed=st.integers(0, 2**32), layout=st.sampled_from(sorted(LAYOUTS)))
def test_random_schemas_same_language(schema, seed, layout):
    try:
        schema_to_lark(schema, **LAYOUTS[layout])
    except GrammarError as e:  # only what we refuse on purpose
        assert "required" in str(e) or "not supported" in str(e), str(e)
        return
    try:
        _ours(json.dumps(schema), json.dumps(LAYOUTS[layout], sort_keys=True))
    except GrammarError as e:  # a schema that admits nothing: then the spec accepts none of the samples
        assert "never finish" in str(e), str(e)
        rng = random.Random(seed)
        assert not any(spec_verdict(schema, t, LAYOUTS[layout]) for _ in range(6)
                       for t in renderings(sample(schema, rng)))
        return
    rng = random.Random(seed)
    texts = set()
    for _ in range(6):
        texts |= renderings(sample(schema, rng))
    texts.update(m for t in sorted(texts) for m in mutations(t, rng, 3))
    bad, _ = disagreements(schema, texts, **LAYOUTS[layout])
    assert not bad, f"{json.dumps(schema)}: (text, spec, ours): {bad[:5]}"


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
    bad, _ = disagreements(schema, [text], any_whitespace=True)
    assert not bad, bad


# XGrammar as a second reference where the two languages coincide by construction: every keyword
# below means the same in both (no pattern, no format or bound, no object with two keys that could
# come in either order, strict_mode=True with the extras closed explicitly).
XG_CASES = {
    "one_key": {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
                "required": ["a"], "additionalProperties": False},
    "arrays": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2},
               "maxItems": 3},
    "enum": {"enum": ["red", 1, 2.5, True, None]},  # not containers: XGrammar writes those compactly
    "types": {"type": ["string", "integer", "null", "boolean"]},
    "any_of": {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "null"}}, {"type": "null"}]},
}
# (Not here: strings with minLength/maxLength -- XGrammar counts an escape such as \\n differently.)
XG_VALUES = [1, 1.5, -0.0, "ab", "abcde", "é\n", None, True, [], [[1]], [[1, 2], [3e5]], [[1, 2, 3]], [[]], {},
             {"a": []}, {"a": [1, 2]}, {"a": [1.5]}, {"a": [], "b": 1}, "red", [1, "a"], {"k": "v"}, 2.5]


@pytest.mark.parametrize("any_whitespace", [False, True], ids=["compact", "ws"])
@pytest.mark.parametrize("case", sorted(XG_CASES))
def test_same_language_as_xgrammar_where_they_coincide(case, any_whitespace):
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _get_matcher_from_grammar

    schema = XG_CASES[case]
    matcher = _get_matcher_from_grammar(xgrammar.Grammar.from_json_schema(
        json.dumps(schema), any_whitespace=any_whitespace, strict_mode=True))
    ours = _ours(json.dumps(schema), json.dumps({"any_whitespace": any_whitespace}, sort_keys=True))
    rng = random.Random(case)
    texts = set().union(*(renderings(v) for v in XG_VALUES))
    texts.update(m for t in sorted(texts) for m in mutations(t, rng, 4))
    bad = []
    for t in sorted(texts):
        matcher.reset()
        theirs = matcher.accept_string(t) and matcher.is_terminated()
        if theirs != ours(t):
            bad.append((t, theirs))
    assert not bad, f"(text, XGrammar): {bad[:5]}"


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
    ints = lark.Lark(schema_to_lark('{"type": "integer"}'), start="start")
    # "-0" (an integer to the spec) is a known gap: no int is written so by json.dumps
    for t, ok in [("0", True), ("-12", True), ("07", False), ("-0", False), ("1.5", False), ("1e3", False)]:
        try:
            ints.parse(t)
            assert ok, t
        except lark.exceptions.LarkError:
            assert not ok, t


@pytest.mark.parametrize("schema, path, words", [
    ({"items": {"type": "array", "uniqueItems": True}}, "/items/uniqueItems", "uniqueItems"),
    ({"properties": {"a": {"not": {"type": "string"}}}}, "/properties/a/not", "not"),
    ({"if": {"type": "string"}, "then": {"minLength": 1}}, "/if", "if"),
    ({"dependentSchemas": {"a": {}}}, "/dependentSchemas", "dependentSchemas"),
    ({"dependencies": {"a": {"required": ["b"]}}}, "/dependencies/a", "dependencies"),
    ({"type": "number", "multipleOf": 0.5}, "/multipleOf", "multipleOf"),
    ({"type": "string", "pattern": "a", "format": "date"}, "/pattern", "pattern"),
    ({"type": "object", "required": [f"k{i}" for i in range(11)]}, "/required", "required"),
    ({"type": "object", "required": "a"}, "/required", "must be an array"),
    ({"type": "object", "required": [1]}, "/required", "property names"),
    ({"type": "array", "minItems": "2"}, "/minItems", "non-negative integer"),
    ({"type": "array", "minItems": True}, "/minItems", "non-negative integer"),
    ({"type": "string", "maxLength": -1}, "/maxLength", "non-negative"),
    ({"type": "date"}, "/type", "unsupported type"),
    ({"type": ["string", 3]}, "/type/1", "unsupported type"),
    ({"anyOf": []}, "/anyOf", "non-empty"),
    ({"$ref": "#/$defs/missing"}, "/$ref", "does not resolve"),
    ({"$ref": "https://example.com/s.json"}, "/$ref", "local"),
    ({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"},
     "/$defs/a/$ref", "left recursion"),
    ({"anyOf": [{"$ref": "#"}]}, "/$ref", "left recursion"),
    ({"properties": {"x": 3}}, "/properties/x", "must be an object or a boolean"),
    ({"type": "string", "pattern": "a(?=b)"}, "/pattern", "not supported"),
    ({"type": "string", "pattern": "(?i)a"}, "/pattern", "flags"),
    ({"type": "string", "pattern": "a("}, "/pattern", "malformed"),
    ({"const": float("nan")}, "/enum", "finite"),
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
    assert lark.Lark(schema_to_lark(False), start="start")  # admits nothing, but is a grammar


def test_annotations_are_ignored():
    plain = {"type": "object", "properties": {"a": {"type": "string"}}}
    noted = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "title": "T", "description": "d",
             "examples": [{}], "default": {}, "$comment": "c",
             "type": "object", "properties": {"a": {"type": "string", "title": "A", "default": "z"}}}
    assert schema_to_lark(noted) == schema_to_lark(plain)
