"""Numeric JSON Schema keywords as regular languages over JSON number text (regex strings).

Bounds are exact. Integers: every canonical JSON integer (`0`, `-?[1-9][0-9]*`) in [lo, hi].
Numbers: sign, integer part and fraction compared digit by digit with the bound, so `minimum: 0.5`
admits `0.5`, `0.50`, `0.51`, `1` and not `0.49`. An exponent (`1e3`) is admitted only where the
bounds are 0 or absent (the sign alone decides); under any other bound a number must be written
without one: `{x >= b}` over `m e n` is not a regular language (`0.000...01e+N` against N), so this
is a documented restriction of the language, never an approximation that admits a wrong value.
"""
from __future__ import annotations

from decimal import Decimal

from ir.errors import GrammarError

DIGITS = "[0-9]"
FRAC_ANY = r"(?:\.[0-9]+)?"
EXP = r"(?:[eE][+-]?[0-9]+)?"


def _alt(parts: list[str]) -> str:
    parts = [p for p in parts if p is not None]
    if not parts:
        return ""
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _digit_range(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _same_len(a: str, b: str) -> str:
    """Digit strings of len(a) == len(b) between a and b inclusive (leading zeros allowed)."""
    if not a:
        return ""
    if a == b:
        return a
    if a[0] == b[0]:
        return a[0] + _same_len(a[1:], b[1:])
    n = len(a) - 1
    if a[1:] == "0" * n and b[1:] == "9" * n:
        return _digit_range(int(a[0]), int(b[0])) + (f"[0-9]{{{n}}}" if n else "")
    parts = [a[0] + _same_len(a[1:], "9" * n)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        parts.append(_digit_range(int(a[0]) + 1, int(b[0]) - 1) + (f"[0-9]{{{n}}}" if n else ""))
    parts.append(b[0] + _same_len("0" * n, b[1:]))
    return _alt(parts)


def uint_range(lo: int, hi: int | None) -> str | None:
    """Canonical decimal strings (no leading zeros) of the integers in [lo, hi] (lo >= 0); None if empty."""
    if hi is not None and hi < lo:
        return None
    parts = []
    a = str(lo)
    top = len(a) if hi is None else len(str(hi))
    for n in range(len(a), top + 1):
        lo_s = a if n == len(a) else "1" + "0" * (n - 1)
        hi_s = str(hi) if hi is not None and n == len(str(hi)) else "9" * n
        parts.append(_same_len(lo_s, hi_s))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{len(a)},}}")
    return _alt(parts)


def int_interval(lo: int | None, hi: int | None) -> str | None:
    """JSON integers in [lo, hi] (None: unbounded); None if the interval is empty."""
    if lo is not None and hi is not None and hi < lo:
        return None
    parts = []
    if lo is None or lo < 0:  # negatives: "-" then a magnitude in [max(1, -hi), -lo]
        mag = uint_range(max(1, -hi) if hi is not None else 1, None if lo is None else -lo)
        if mag is not None:
            parts.append("-" + mag)
    if hi is None or hi >= 0:
        mag = uint_range(max(0, lo) if lo is not None else 0, hi)
        if mag is not None:
            parts.append(mag)
    return _alt(parts) or None


# -- fractions: tails t (the digits after the point, maybe none), compared as 0.t ----------------------
def _ge(f: str, strict: bool) -> tuple[str | None, bool]:
    """{t : 0.t >= 0.f} (> if strict), f without trailing zeros: (regex for non-empty t, empty t in it)."""
    if not f:
        return ("[0-9]*[1-9][0-9]*" if strict else "[0-9]+"), not strict
    d = int(f[0])
    parts = [f"[{d + 1}-9][0-9]*" if d < 8 else "9[0-9]*" if d == 8 else None]
    rest, eps = _ge(f[1:], strict)
    parts.append(_tail(f[0], rest, eps))
    return _alt([p for p in parts if p]) or None, False


def _le(f: str, strict: bool) -> tuple[str | None, bool]:
    """{t : 0.t <= 0.f} (< if strict)."""
    if not f:
        return (None, False) if strict else ("0+", True)
    d = int(f[0])
    parts = [(f"[0-{d - 1}][0-9]*" if d > 1 else "0[0-9]*") if d > 0 else None]
    rest, eps = _le(f[1:], strict)
    parts.append(_tail(f[0], rest, eps))
    return _alt([p for p in parts if p]) or None, True


def _between(fa: str, sa: bool, fb: str, sb: bool) -> tuple[str | None, bool]:
    """{t : 0.fa <= 0.t <= 0.fb} (strict ends as flagged)."""
    if not fa and not sa:
        return _le(fb, sb)
    if not fb:
        return None, False  # 0.t <= 0 and 0.t > 0.fa >= 0: nothing (0.t >= fa > 0 or > 0)
    a = int(fa[0]) if fa else 0
    b = int(fb[0])
    if a > b:
        return None, False
    if a == b:
        rest, eps = _between(fa[1:], sa, fb[1:], sb) if fa else _between("", sa, fb[1:], sb)
        return _tail(str(a), rest, eps), False
    parts = []
    lo_rest, lo_eps = _ge(fa[1:], sa) if fa else _ge("", sa)
    parts.append(_tail(str(a), lo_rest, lo_eps))
    if a + 1 <= b - 1:
        parts.append(_digit_range(a + 1, b - 1) + "[0-9]*")
    hi_rest, hi_eps = _le(fb[1:], sb)
    parts.append(_tail(str(b), hi_rest, hi_eps))
    return _alt([p for p in parts if p]) or None, False


def _tail(digit: str, rest: str | None, eps: bool) -> str | None:
    if rest is None and not eps:
        return None
    if rest is None:
        return digit
    return digit + (f"(?:{rest})?" if eps else rest)


def _frac(lang: tuple[str | None, bool]) -> str | None:
    """The JSON fraction part (absent, or "." digits) for a tail language."""
    rest, eps = lang
    if rest is None:
        return "" if eps else None
    return rf"(?:\.{rest})?" if eps else rf"\.{rest}"


def _split(x: Decimal) -> tuple[int, str]:
    i = int(x)  # x >= 0
    f = format(x - i, "f")
    f = f.split(".")[1].rstrip("0") if "." in f else ""
    return i, f


def _magnitude(a: Decimal, sa: bool, b: Decimal | None, sb: bool) -> str | None:
    """Unsigned JSON number text (no exponent) with value in [a, b] (a >= 0; b None: unbounded)."""
    ai, af = _split(a)
    parts: list[str | None] = []
    if b is None:
        parts.append(_cat(uint_range(ai + 1, None), FRAC_ANY))
        parts.append(_cat(str(ai), _frac(_ge(af, sa))))
        return _alt([p for p in parts if p]) or None
    if b < a or (b == a and (sa or sb)):
        return None
    bi, bf = _split(b)
    if ai < bi:
        parts.append(_cat(str(ai), _frac(_ge(af, sa))))
        parts.append(_cat(uint_range(ai + 1, bi - 1), FRAC_ANY))
        parts.append(_cat(str(bi), _frac(_le(bf, sb))))
    else:
        parts.append(_cat(str(ai), _frac(_between(af, sa, bf, sb))))
    return _alt([p for p in parts if p]) or None


def _cat(a: str | None, b: str | None) -> str | None:
    return None if a is None or b is None else a + b


def number_interval(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool) -> str | None:
    """JSON numbers with value in the interval (None: unbounded); None if it is empty."""
    if lo is None and hi is None:
        return r"-?(?:0|[1-9][0-9]*)" + FRAC_ANY + EXP
    if all(x is None or x == 0 for x in (lo, hi)):  # the sign decides: exponents allowed
        body = r"(?:0|[1-9][0-9]*)" + FRAC_ANY + EXP
        zero = r"0(?:\.0+)?(?:[eE][+-]?[0-9]+)?"
        nonzero = r"(?:[1-9][0-9]*(?:\.[0-9]+)?|0\.0*[1-9][0-9]*)(?:[eE][+-]?[0-9]+)?"
        zero_in = (lo is None or not lo_strict) and (hi is None or not hi_strict)
        parts = []
        if lo is None:
            parts.append("-" + (body if zero_in else nonzero))
        elif zero_in:
            parts.append("-" + zero)
        if hi is None:
            parts.append(body if zero_in else nonzero)
        elif zero_in:
            parts.append(zero)
        return _alt(parts) or None
    if lo is not None and hi is not None and (hi < lo or (hi == lo and (lo_strict or hi_strict))):
        return None
    zero_in = (lo is None or lo < 0 or (lo == 0 and not lo_strict)) and (hi is None or hi > 0 or (hi == 0 and not hi_strict))
    parts = []
    if lo is None or lo < 0:  # "-" m, m in [max(0, -hi), -lo]
        if hi is not None and hi < 0:
            m = _magnitude(-hi, hi_strict, None if lo is None else -lo, lo_strict)
        else:
            m = _magnitude(Decimal(0), not zero_in, None if lo is None else -lo, lo_strict)
        if m is not None:
            parts.append("-" + m)
    elif zero_in:
        parts.append(r"-0(?:\.0+)?")  # -0 is 0
    if hi is None or hi >= 0:
        if lo is not None and lo > 0:
            m = _magnitude(lo, lo_strict, hi, hi_strict)
        else:
            m = _magnitude(Decimal(0), not zero_in, hi, hi_strict)
        if m is not None:
            parts.append(m)
    return _alt(parts) or None


def multiple_of_rules(m: int) -> dict[int, list[tuple[str, int | None]]]:
    """Right-linear rules for the digit strings of multiples of m: state r = value so far mod m;
    returns {r: [(digit, next state)]}; state 0 may end. (Used with a leading [1-9].)"""
    if not 1 <= m <= 10_000:
        raise GrammarError(f"multipleOf {m} is too large to enumerate remainders (limit 10000)")
    return {r: [(str(d), (10 * r + d) % m) for d in range(10)] for r in range(m)}
