"""What every fuzz surface shares: the runner, the contract, and the mutators (docs/fuzzing.md).

The contract (issue 27, "bad input never crashes, hangs or runs code"), checked on every example:
- only Tritium's own errors escape (`ir.errors.TritiumError` and its subclasses: ParseError, ArtifactError,
  GrammarError, ...), and none of them hides a MemoryError or RecursionError (an input that made Tritium
  allocate or recurse without bound);
- the example ends within its surface's `slow_s` seconds; one that runs HANG_S seconds is a hang: the
  watchdog (faulthandler) prints every thread's stack and ends the process, since a hang in C cannot be
  interrupted from Python;
- the process's peak memory grows by at most MEMORY_MB over the run;
- a signal (a segfault in a kernel) ends the process: pytest reports the crash and faulthandler the stack.

`fuzz(strategy, check, examples)` runs `check` on `examples` drawn examples in the normal test run (the
conftest's hypothesis profile: derandomized by default and in CI, so the same slice runs every time), or,
with TRITIUM_FUZZ_MINUTES=m in the environment, on fresh random examples, batch after batch, for m minutes
(the terminal summary says how many ran). Hypothesis shrinks a failure and prints its reproducer: add it to the test's
@example list, or as a regression test beside the code it exercises, with the fix.
"""
from __future__ import annotations

import faulthandler
import os
import re
import resource
import time
from typing import Any, Callable, Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ir.errors import TritiumError

MINUTES = float(os.environ.get("TRITIUM_FUZZ_MINUTES") or 0)
HANG_S = 300  # the watchdog: an example running this long ends the process with every thread's stack
MEMORY_MB = 4096  # the most the process's peak memory may grow over one surface's run
LOG = os.environ.get("TRITIUM_FUZZ_LOG")  # a file: every wrapped error's message is appended to it
BATCH = 25  # examples per hypothesis run in a timed (TRITIUM_FUZZ_MINUTES) run
COUNTS: dict[str, dict[str, int]] = {}  # surface -> {"examples": n, "typed errors": n, "wrapped errors": n}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _hidden(e: BaseException) -> BaseException | None:
    """A MemoryError or RecursionError behind a TritiumError (its cause or context chain), if any."""
    seen = 0
    c: BaseException | None = e
    while c is not None and seen < 32:
        if isinstance(c, (MemoryError, RecursionError)):
            return c
        c, seen = c.__cause__ or c.__context__, seen + 1
    return None


_current: dict[str, int] = {}


def ours(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), or the TritiumError it raised (returned, not raised). Any other exception
    propagates: a fuzz failure. So does a TritiumError that hides a MemoryError or RecursionError."""
    try:
        return fn(*args, **kwargs)
    except TritiumError as e:
        bad = _hidden(e)
        if bad is not None:
            raise AssertionError(f"{type(e).__name__} hides a {type(bad).__name__} (unbounded memory or "
                                 f"recursion): {str(e)[:500]}") from e
        _current["typed errors"] = _current.get("typed errors", 0) + 1
        if isinstance(e.__cause__, Exception) and not isinstance(e.__cause__, TritiumError):
            _current["wrapped errors"] = _current.get("wrapped errors", 0) + 1  # a runtime wrapped a plain error
            if LOG:
                with open(LOG, "a") as f:
                    f.write(f"{type(e).__name__}: {str(e)[:300]!r}\n")
        return e


def failed(x: Any) -> bool:
    return isinstance(x, TritiumError)


def fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[Any], None], examples: int,
         slow_s: float = 60.0, found: Sequence[Any] = ()) -> int:
    """Run check(x) under the contract on each of `found` (what fuzzing found before: regressions, always run),
    then on drawn x: `examples` of them (deterministic), or for $TRITIUM_FUZZ_MINUTES minutes of fresh ones.
    Returns how many ran."""
    global _current
    _current = COUNTS.setdefault(name, {"examples": 0})
    base = _peak_mb()

    def one(x: Any) -> None:
        _current["examples"] += 1
        faulthandler.dump_traceback_later(HANG_S, exit=True)
        t0 = time.monotonic()
        try:
            check(x)
        finally:
            faulthandler.cancel_dump_traceback_later()
        took = time.monotonic() - t0
        assert took < slow_s, f"one example took {took:.1f} s (the limit is {slow_s} s): a hang in the making"
        grew = _peak_mb() - base
        assert grew < MEMORY_MB, f"peak memory grew by {grew:.0f} MB (the limit is {MEMORY_MB} MB)"

    common: dict[str, Any] = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    start = _current["examples"]
    for x in found:
        one(x)
    if not MINUTES:
        if examples:  # (0: only the `found` ones in the normal test run)
            settings(max_examples=examples, **common)(given(strategy)(one))()
    else:
        stop = time.monotonic() + 60 * MINUTES
        while time.monotonic() < stop:
            settings(max_examples=BATCH, derandomize=False, **common)(given(strategy)(one))()
    return _current["examples"] - start


# -- text mutation -------------------------------------------------------------------------------------
BOUNDARY_INTS = [0, 1, -1, 2, 3, 7, 8, 15, 16, 63, 64, 127, 128, 255, 256, 1023, 1024, 2**15, 2**16, 2**31 - 1,
                 2**31, 2**32, 2**53, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64, -2**31, -2**31 - 1, -2**63,
                 -2**63 - 1, 10**30, 10**400]
BOUNDARY_FLOATS = ["nan", "inf", "-inf", "1e308", "1e309", "-1e309", "1e-320", "-0.0", "0.0", "5e-324", "1e-5",
                   "2.5", "0x10", "1_000", "1e", ".5", "5.", "-", "+1"]
_INT = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d*(?:e[-+]?\d+)?(?![\w.])")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@st.composite
def mutated(draw: st.DrawFn, text: str, words: list[str], pieces: list[str]) -> str:
    """`text` after 1-4 mutations: an integer or float literal replaced by a boundary value, a word replaced
    by another from `words` (op, dtype, attribute names ...), a piece of `pieces` inserted, a span deleted or
    duplicated, lines dropped, duplicated or swapped, a random character inserted."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["int", "int", "int", "float", "word", "word", "insert", "delete",
                                     "duplicate", "line", "char"]))
        if kind in ("int", "float", "word"):
            pattern = {"int": _INT, "float": _FLOAT, "word": _WORD}[kind]
            spots = list(pattern.finditer(text))
            if not spots:
                continue
            m = spots[draw(st.integers(0, len(spots) - 1))]
            new = (str(draw(st.sampled_from(BOUNDARY_INTS))) if kind == "int" else
                   draw(st.sampled_from(BOUNDARY_FLOATS)) if kind == "float" else draw(st.sampled_from(words)))
            text = text[:m.start()] + new + text[m.end():]
        elif kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(pieces)) + text[at:]
        elif kind in ("delete", "duplicate"):
            i = draw(st.integers(0, len(text)))
            j = draw(st.integers(i, min(len(text), i + 40)))
            text = text[:i] + text[j:] if kind == "delete" else text[:j] + text[i:j] + text[j:]
        elif kind == "line":
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            how = draw(st.sampled_from(["drop", "dup", "swap"]))
            if how == "drop":
                del lines[i]
            elif how == "dup":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.characters()) + text[at:]
    return text


# -- JSON values ------------------------------------------------------------------------------------------
NAMES = ["builtins.dict", "collections.OrderedDict", "os.system", "evil.X", "builtins_evil.X", "transformers.x",
         "transformers.modeling_outputs.CausalLMOutputWithPast", "subprocess.Popen", "__import__", "..", "/etc/passwd",
         "model.ir", "weights.safetensors", "tritium-artifact", "f32", "i3", "uint8", "-", ""]


def json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    """Random JSON values: boundary numbers, type and file names, and nests of them."""
    leaves = st.one_of(st.none(), st.booleans(), st.sampled_from(BOUNDARY_INTS), st.integers(),
                       st.floats(allow_nan=False), st.sampled_from(NAMES), st.text(max_size=12))
    return st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8)),
                                                                       kids, max_size=4)), max_leaves=depth * 4)
