"""Regular expressions (Python `re` syntax, parsed by the standard library's own parser) -> `Expr`.

A regex here denotes a language: the strings it matches in full. So anchors, lookarounds and
backreferences have no meaning and are refused; greedy and lazy repeats are the same. The classes
\\d \\w \\s are ASCII ([0-9], [A-Za-z0-9_], [ \\t\\n\\r\\f\\v]), as in JSON Schema and XGrammar, not
Python's Unicode ones; `.` is any code point but \\n (with the s flag: any).
"""
from __future__ import annotations

import re
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]

from ir.errors import GrammarError

from .grammar import Alt, Chars, Expr, Repeat, Seq, complement, normalize

_CATEGORIES = {
    C.CATEGORY_DIGIT: ((48, 57),),
    C.CATEGORY_WORD: normalize([(48, 57), (65, 90), (95, 95), (97, 122)]),
    C.CATEGORY_SPACE: normalize([(9, 13), (32, 32)]),
}
_CATEGORIES[C.CATEGORY_NOT_DIGIT] = complement(_CATEGORIES[C.CATEGORY_DIGIT])
_CATEGORIES[C.CATEGORY_NOT_WORD] = complement(_CATEGORIES[C.CATEGORY_WORD])
_CATEGORIES[C.CATEGORY_NOT_SPACE] = complement(_CATEGORIES[C.CATEGORY_SPACE])
MAX_REPEAT = 10_000  # a bound above this is refused (the automaton would hold that many copies)
_FLAGS = {"i": re.I, "s": re.S, "x": re.X, "m": re.M, "u": 0}


def parse_regex(pattern: str, flags: str = "", where: tuple[int, int] = (0, 0)) -> Expr:
    """The language of `pattern` (flags: any of "isxmu", as in lark's /.../flags)."""
    bits = 0
    for f in flags:
        if f not in _FLAGS:
            raise GrammarError(f"regex flag '{f}' is not supported in /{pattern}/", *where)
        bits |= _FLAGS[f]
    try:
        parsed = P.parse(pattern, bits)
    except re.error as e:
        raise GrammarError(f"malformed regular expression /{pattern}/: {e}", *where) from None
    except OverflowError:
        raise GrammarError(f"a repetition bound in /{pattern}/ is too large (limit {MAX_REPEAT})", *where) from None
    except RecursionError:
        raise GrammarError(f"/{pattern}/ nests too deeply", *where) from None
    return _Converter(pattern, where).seq(parsed, bool(parsed.state.flags & re.I), bool(parsed.state.flags & re.S))


class _Converter:
    def __init__(self, pattern: str, where: tuple[int, int]):
        self.pattern, self.where = pattern, where

    def fail(self, what: str) -> GrammarError:
        return GrammarError(f"{what} in /{self.pattern}/ is not supported: a grammar's regex denotes the strings it "
                            "matches in full", *self.where)

    def seq(self, items, icase: bool, dotall: bool) -> Expr:
        out = [self.item(op, av, icase, dotall) for op, av in items]
        return out[0] if len(out) == 1 else Seq(tuple(out))

    def item(self, op, av, icase: bool, dotall: bool) -> Expr:
        if op is C.LITERAL:
            return Chars(_case(((av, av),), icase))
        if op is C.NOT_LITERAL:
            return Chars(complement(_case(((av, av),), icase)))
        if op is C.ANY:
            return Chars(((0, 0x10FFFF),) if dotall else complement(((10, 10),)))
        if op is C.IN:
            return Chars(self.charset(av, icase))
        if op in (C.MAX_REPEAT, C.MIN_REPEAT):  # greedy or lazy: the same language
            lo, hi, sub = av
            hi = None if hi is C.MAXREPEAT else hi
            if lo > MAX_REPEAT or (hi is not None and hi > MAX_REPEAT):
                raise GrammarError(f"a repetition bound in /{self.pattern}/ is above the limit {MAX_REPEAT}", *self.where)
            return Repeat(self.seq(sub, icase, dotall), lo, hi)
        if op is C.SUBPATTERN:
            _, add, remove, sub = av
            icase = (icase or bool(add & re.I)) and not remove & re.I
            dotall = (dotall or bool(add & re.S)) and not remove & re.S
            return self.seq(sub, icase, dotall)
        if op is C.BRANCH:
            return Alt(tuple(self.seq(b, icase, dotall) for b in av[1]))
        names = {getattr(C, "POSSESSIVE_REPEAT", C.AT): "a possessive repeat (*+, ++, ?+)",
                 getattr(C, "ATOMIC_GROUP", C.AT): "an atomic group (?>...)",
                 C.AT: "an anchor (^, $, \\b)", C.ASSERT: "a lookahead/lookbehind", C.ASSERT_NOT: "a negative lookaround",
                 C.GROUPREF: "a backreference", C.GROUPREF_EXISTS: "a conditional group"}
        raise self.fail(names.get(op, f"'{op}'"))

    def charset(self, items, icase: bool) -> tuple[tuple[int, int], ...]:
        negate, ranges = False, []
        for op, av in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                ranges.append((av, av))
            elif op is C.RANGE:
                ranges.append(av)
            elif op is C.CATEGORY:
                if av not in _CATEGORIES:
                    raise self.fail(f"class {av}")
                ranges.extend(_CATEGORIES[av])
            else:
                raise self.fail(f"'{op}' in a character class")
        rs = _case(normalize(ranges), icase)
        return complement(rs) if negate else rs


def _case(ranges: tuple[tuple[int, int], ...], icase: bool) -> tuple[tuple[int, int], ...]:
    """Add the other case of every letter (simple case folding) under the i flag."""
    if not icase:
        return ranges
    extra = []
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            c = chr(cp)
            extra += [ord(v) for v in (c.lower(), c.upper()) if len(v) == 1]
    return normalize(list(ranges) + extra)

