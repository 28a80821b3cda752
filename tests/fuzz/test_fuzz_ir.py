"""Fuzz surface "ir": IR text, mutated from the hand-written graphs (tests/ir/*.ir) and random valid graphs
(tests/ir/strategies.py), and random text. Parsing either fails with a typed error or gives a graph that
prints and parses back to itself; a graph that parses is compiled (reference, cpu NumPy, cpu native) and
run on random inputs (ids in and out of range, NaN and inf): typed errors only, no crash (docs/fuzzing.md).

    pytest tests/fuzz/test_fuzz_ir.py                                 # the deterministic slice
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_ir.py -k text # one surface, 10 minutes
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from fuzzing import failed, fuzz, mutated, ours
from hypothesis import strategies as st
from strategies import graphs

import compiler
import ir
from backends.cpu import native
from ir.dtypes import DTYPES

SEEDS = sorted((Path(__file__).parent.parent / "ir").glob("*.ir"))
TEXTS = [p.read_text() for p in SEEDS]
WORDS = sorted(set(ir.OPS) | set(DTYPES) | {k for op in ir.OPS.values() for k in op.attrs} |
               {"graph", "param", "return", "s0", "s1", "true", "false", "nan", "inf"})
PIECES = ["%", "@", "{", "}", "(", ")", "[", "]", ",", " = ", ": ", "\n", '"', "\\", "//", "s0", "*", "+", "-", "**",
          "%x", "@w", "f32[2, s0]", "i64[]", "{dim = -1}", "{group = 4294967296}", "[" * 50, "(" * 50,
          "\n  %q: f32[2] = neg(%q)\n", "\n  param @w: u8[18446744073709551616]\n", "\ud800", "\x00", "é"]
CHARS = "".join(sorted(set("".join(TEXTS)))) + "\\\"'#$\x00\t"


def texts() -> st.SearchStrategy[str]:
    seeds = st.one_of(st.sampled_from(TEXTS), graphs(max_nodes=5).map(str))
    return st.one_of(
        seeds.flatmap(lambda t: mutated(t, WORDS, PIECES)),
        st.text(alphabet=CHARS, max_size=400),
        st.lists(st.sampled_from(WORDS + PIECES), max_size=60).map(" ".join),
        st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
    )


def check_text(text: str) -> None:
    g = ours(ir.parse, text)
    if failed(g):
        return
    again = ours(ir.parse, str(g))
    assert not failed(again), f"the printed graph does not parse back: {again}\n{g}"
    assert again == g and str(again) == str(g), "print -> parse -> print is not the identity"


def test_ir_text() -> None:
    """Any text: parse raises a typed error, or the graph round-trips through its text."""
    fuzz("ir text", texts(), check_text, examples=200, slow_s=20)


# -- compile and run what parses ----------------------------------------------------------------------------
MAX_NUMEL = 1 << 20  # the harness's own budget: graphs whose values at s = 2..3 are larger are not run


def _env(g: ir.Graph, k: int) -> dict[str, int] | None:
    env = {d: k for _, t in g.inputs for d in t.shape if isinstance(d, str) and d.isidentifier()}
    try:
        for t in [t for _, t in g.inputs] + list(g.params.values()) + [n.type for n in g.nodes]:
            if int(np.prod([ir.shapes.evaluate(d, env) for d in t.shape], dtype=object)) > MAX_NUMEL:
                return None
    except Exception:  # a symbol no input binds, a negative size: not runnable as drawn
        return None
    return env


def _array(rng: np.random.Generator, shape: tuple[int, ...], dt: ir.DType, wild: bool) -> np.ndarray:
    if dt.is_float:
        a = rng.standard_normal(shape).astype(np.float32)
        if wild:
            a.flat[rng.integers(0, max(a.size, 1), 3) % max(a.size, 1)] = rng.choice([np.nan, np.inf, -np.inf, 1e30]) if a.size else 0
        return a.astype(dt.np)
    if dt.name == "bool":
        return rng.random(shape) < 0.5
    lo, hi = (dt.lo, dt.hi) if wild else (max(dt.lo, -3), min(dt.hi, 3))
    a = rng.integers(0, 4, shape) if not wild else rng.choice(np.array([lo, hi, -1, 0, 1, 2, 127, 128], dtype=object), shape)
    return np.asarray(np.clip(np.asarray(a, dtype=object), dt.lo, dt.hi), dtype=object).astype(dt.np)


def _inputs(g: ir.Graph, seed: int, wild: bool) -> tuple[list[np.ndarray], dict] | None:
    env = _env(g, 2 + seed % 2)
    if env is None:
        return None
    rng = np.random.default_rng(seed)
    for p, t in g.params.items():
        g.weights[p] = _array(rng, tuple(int(d) for d in t.shape), t.dtype, False)
    return [_array(rng, tuple(ir.shapes.evaluate(d, env) for d in t.shape), t.dtype, wild) for _, t in g.inputs], env


TARGETS = [("reference", None), ("cpu", "numpy")] + ([("cpu", "native")] if native.available() else [])


def check_run(case: tuple[str, int, bool, str]) -> None:
    text, seed, wild, passes = case
    g = ours(ir.parse, text)
    if failed(g):
        return
    drawn = _inputs(g, seed, wild)
    if drawn is None:
        return
    xs, _ = drawn
    for target, mode in TARGETS:
        os.environ["TRITIUM_CPU_MODE"] = mode or "native"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fallbacks to NumPy, missing compilers
                c = ours(compiler.compile, g.copy(), target=target, passes=passes)
                if not failed(c):
                    ours(c, *[x.copy() for x in xs])
        finally:
            os.environ.pop("TRITIUM_CPU_MODE", None)


def runnable() -> st.SearchStrategy[str]:
    """Mostly mutations that keep the text parsing (numbers, words): more of them reach the backends."""
    seeds = st.one_of(st.sampled_from(TEXTS), graphs(max_nodes=5).map(str))
    return seeds.flatmap(lambda t: st.one_of(st.just(t), mutated(t, WORDS, [" "])))


def test_ir_run() -> None:
    """Graphs that parse compile and run on every CPU target (and the reference) with typed errors only."""
    cases = st.tuples(runnable(), st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from(["", compiler.DEFAULT_PASSES]))
    fuzz("ir run", cases, check_run, examples=12, slow_s=120)
