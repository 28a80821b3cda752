"""The grammar engine against independent oracles: the `regex` module's partial matching for regular
grammars, hand-written acceptors for recursive ones; the matcher API; errors with locations."""
from __future__ import annotations

import re

import numpy as np
import pytest
import regex as oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.grammar import Grammar, GrammarMatcher, TokenizerInfo, allocate_token_bitmask, compile_grammar
from ir.errors import GrammarError

STOP = 0
ALPHABET = "ab(),:-.0123456789é中 \"\n"


def vocab(tokens: list[str]) -> TokenizerInfo:
    """Token 0 is the stop token; then the given strings, deduplicated."""
    toks = list(dict.fromkeys(t for t in tokens if t))
    return TokenizerInfo([b"</s>"] + [t.encode() for t in toks], stop_token_ids=[STOP])


SINGLE = vocab(list(ALPHABET))
MULTI = vocab(list(ALPHABET) + ["ab", "ba", "((", "))", "()", ")(", "a)", "(a", "00", "-1", "1.5", "é中", "\"a\"", "aaa",
                                 "bbb", "abab", "),", ":(", "中a", "a b", "12", "3.", ".4", "e", "E"])


def allowed(m: GrammarMatcher) -> np.ndarray:
    w = allocate_token_bitmask(1, m.compiled.vocab_size)
    m.fill_next_token_bitmask(w, 0)
    return np.unpackbits(w.view(np.uint8), bitorder="little")[:m.compiled.vocab_size].astype(bool)


def texts(info: TokenizerInfo) -> list[str]:
    return [d.decode() for d in info.decoded]


# -- regular grammars: exact against `regex` partial matching ------------------------------------
PATTERNS = [r"a+b*", r"(ab|ba)*c?", r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", r"[^\"\n]{0,3}\"",
            r"(é|中)+a?", r"\(\d{2,4}\)", r"[a-b]*?(:|,)[^a]", r"(?i:AB)+", r"\w+\s\w+", r"(a|ab)(c|bcd)(d*)", r"\d+\.?", "."]


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_regex_mask_is_exact(pattern, data):
    info = MULTI
    c = compile_grammar(Grammar.from_regex(pattern), info)
    m = GrammarMatcher(c)
    py = re.compile(pattern.replace(r"\d", "[0-9]").replace(r"\w", "[A-Za-z0-9_]").replace(r"\s", "[ \t\n\r\f\v]"))
    prefix = ""
    for _ in range(data.draw(st.integers(0, 6))):
        a = allowed(m)
        expect = [oracle.fullmatch(py.pattern, prefix + t, partial=True) is not None for t in texts(info)[1:]]
        assert a[1:].tolist() == expect, f"after {prefix!r}"
        assert a[STOP] == (py.fullmatch(prefix) is not None) == m.is_complete()
        choices = np.flatnonzero(a[1:]) + 1
        if not choices.size:
            break
        t = int(data.draw(st.sampled_from(choices.tolist())))
        assert m.accept_token(t)
        prefix += texts(info)[t]


@settings(max_examples=200, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), text=st.text(ALPHABET + "cdABx\t", max_size=8))
def test_regex_accepts_exactly_its_language(pattern, text):
    m = GrammarMatcher(compile_grammar(Grammar.from_regex(pattern), SINGLE))
    py = pattern.replace(r"\d", "[0-9]").replace(r"\w", "[A-Za-z0-9_]").replace(r"\s", "[ \t\n\r\f\v]")
    ok = m.accept_string(text) and m.is_complete()
    assert ok == (re.fullmatch(py, text) is not None)


# -- recursive grammars: hand-written acceptors ----------------------------------------------------
PARENS = """
start: item*
item: "(" start ")" | "a"
"""


def parens_prefix_ok(s: str) -> bool:
    depth = 0
    for ch in s:
        if ch not in "()a":
            return False
        depth += {"(": 1, ")": -1, "a": 0}[ch]
        if depth < 0:
            return False
    return True


ANBN = 'start: "a" start "b" | "a" "b"'


def anbn_prefix_ok(s: str) -> bool:
    i = len(s) - len(s.lstrip("a"))
    rest = s[i:]
    return set(rest) <= {"b"} and (len(rest) <= i) and (i > 0 or not s)


@pytest.mark.parametrize("grammar, prefix_ok, complete", [
    (PARENS, parens_prefix_ok, lambda s: parens_prefix_ok(s) and s.count("(") == s.count(")")),
    (ANBN, anbn_prefix_ok, lambda s: bool(re.fullmatch("a+b+", s)) and s.count("a") == s.count("b")),
])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_recursive_grammar_mask_is_exact(grammar, prefix_ok, complete, data):
    info = MULTI
    m = GrammarMatcher(compile_grammar(grammar, info))
    prefix = ""
    for _ in range(data.draw(st.integers(0, 12))):
        a = allowed(m)
        assert a[1:].tolist() == [prefix_ok(prefix + t) for t in texts(info)[1:]], f"after {prefix!r}"
        assert a[STOP] == complete(prefix)
        choices = np.flatnonzero(a).tolist()
        t = data.draw(st.sampled_from(choices))
        assert m.accept_token(t)
        if t == STOP:
            assert m.is_terminated() and not allowed(m).any()
            break
        prefix += texts(info)[t]


def test_deep_nesting_and_rollback():
    m = GrammarMatcher(compile_grammar(PARENS, MULTI))
    ids = {t: i for i, t in enumerate(texts(MULTI))}
    for _ in range(200):  # a stack 200 calls deep
        assert m.accept_token(ids["(("])
    before = allowed(m).copy()
    assert m.accept_token(ids[")"]) and not m.accept_token(STOP)
    m.rollback(1)
    assert (allowed(m) == before).all()
    for _ in range(200):
        assert m.accept_token(ids["))"])
    assert m.is_complete() and m.accept_token(STOP) and m.is_terminated()
    assert not m.accept_token(ids["a"])
    m.reset()
    assert not m.is_terminated() and m.accept_token(ids["a"])
    with pytest.raises(GrammarError, match="cannot roll back 5 tokens"):
        m.rollback(5)


def test_refused_token_changes_nothing():
    m = GrammarMatcher(compile_grammar(ANBN, MULTI))
    ids = {t: i for i, t in enumerate(texts(MULTI))}
    assert m.accept_token(ids["aaa"]) and not m.accept_token(ids["(("]) and not m.accept_token(STOP)
    assert m.accept_string("bbb") and m.is_complete() and not m.accept_string("b")


def test_json_grammar_small_documents():
    import json

    info = MULTI
    c = compile_grammar(Grammar.json(), info)
    for doc in [{"a": [1, -2.5e3, None, True]}, [], {}, [{"é中": ""}], [[[[]]]]]:
        for text in (json.dumps(doc), json.dumps(doc, indent=1, ensure_ascii=False)):
            m = GrammarMatcher(c)
            assert m.accept_string(text) and m.is_complete(), text
    for bad in ['{"a" 1}', "[1,]", "01", '"top-level string"', "[1] ", " [1]", "[tru]", '{"a":1,}']:
        m = GrammarMatcher(c)
        assert not (m.accept_string(bad) and m.is_complete()), bad


def test_byte_tokens_split_characters():
    """Tokens that hold part of a UTF-8 character (as byte-level BPE has) are allowed when the
    character can still be completed, and a lone continuation byte never is."""
    info = TokenizerInfo([b"</s>", b"\xe4", b"\xb8\xad", b"\xb8", b"\xad", b"\x80", b"a", "中".encode()], stop_token_ids=[0])
    m = GrammarMatcher(compile_grammar('start: /[^a]/+', info))
    assert allowed(m).tolist() == [False, True, False, False, False, False, False, True]
    assert m.accept_token(1)  # \xe4 wants two continuation bytes
    assert allowed(m).tolist() == [False, False, True, True, True, True, False, False]
    assert m.accept_token(3)  # one more completes it: \xb8\xad would leave a stray byte, \xe4 is not a continuation
    assert allowed(m).tolist() == [False, False, False, True, True, True, False, False]


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message, line", [
    ('start: "a" (\n', "malformed grammar", 1),
    ('start: x\n', "not defined", 0),
    ('\nstart: a\na: a "x" | "y"\n', "left recursion: rule 'a'", 3),
    ('start: "a"\n%ignore " "\n', "%ignore is not supported", 2),
    ('start: b\nb: "x" b\n', "rule 'b' can never finish", 2),
    ('other: "a"\n', "no start rule 'start'", 0),
    ('start: /^a$/\n', "an anchor", 1),
    ('start: /(a)\\1/\n', "a backreference", 1),
    ('start: /a[/\n', "malformed", 0),
])
def test_grammar_errors_say_what_and_where(text, message, line):
    with pytest.raises(GrammarError, match=re.escape(message)) as e:
        compile_grammar(text, SINGLE)
    if line:
        assert e.value.line == line, str(e.value)


def test_stop_token_bytes_never_match_as_text():
    info = TokenizerInfo([b"</s>", b"<", b"/s>", b"x"], stop_token_ids=[0])
    m = GrammarMatcher(compile_grammar('start: /[^x]*/ "x"', info))
    a = allowed(m)
    assert a.tolist() == [False, True, True, True]
    m.accept_token(3)
    assert allowed(m).tolist() == [True, False, False, False]
