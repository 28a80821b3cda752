"""Fuzz surface "runtime": random arguments to a compiled tiny Llama (reference and cpu targets) and to its
`generate`: tensors of every dtype, rank and size with ids in and out of the vocabulary, NumPy arrays,
lists, strings, None; generate's keywords with wrong types and values (max_new_tokens=2.5, a huge one,
NaN temperatures, masks of zeros, stop tokens that are strings, junk hooks). Typed errors only, and a
huge max_new_tokens neither allocates its whole cache up front nor runs away (docs/fuzzing.md).

    pytest tests/fuzz/test_fuzz_runtime.py
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_runtime.py -k call
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_runtime.py -k generate
"""
from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np
import torch
from fuzzing import fuzz, ours
from hypothesis import strategies as st

import compiler
from compiler.generate import DecodingHook
from frontends.hf_models import tiny

VOCAB = 128
DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool, torch.float32, torch.float16, torch.bfloat16]
IDS = [0, 1, 2, VOCAB - 1, VOCAB, -1, -VOCAB, -VOCAB - 1, 2**31 - 1, -2**31, 2**62, -2**63, 10**8, -10**8]


@functools.cache
def compiled(target: str) -> compiler.Compiled:
    c = compiler.compile(tiny("llama"), target=target)
    c(torch.tensor([[1, 2, 3]]))  # traced once: later calls check their arguments against the trace
    return c


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    dt = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(st.one_of(st.sampled_from(IDS), st.integers(0, VOCAB - 1)), min_size=n, max_size=n))
    a = np.clip(np.array(vals, dtype=object), *(_range(dt))).astype(np.float64 if dt.is_floating_point else np.int64)
    t = torch.tensor(a.reshape(shape)).to(dt)
    if draw(st.integers(0, 5)) == 0 and t.ndim >= 2:
        t = t.transpose(0, 1)  # not contiguous
    return t


def _range(dt: torch.dtype) -> tuple[Any, Any]:
    if dt == torch.bool:
        return 0, 1
    if dt.is_floating_point:
        return -1e30, 1e30
    i = torch.iinfo(dt)
    return i.min, i.max


def values() -> st.SearchStrategy[Any]:
    """Anything a caller might pass as token ids."""
    return st.one_of(tensors(), tensors(), tensors().map(lambda t: t.numpy() if t.dtype != torch.bfloat16 else t),
                     st.lists(st.lists(st.sampled_from(IDS), max_size=4), max_size=3),
                     st.lists(st.sampled_from(IDS + [1.5, "a", None]), max_size=4),
                     st.sampled_from(["hello", "", b"ids", None, 3, 2.5, {"input_ids": [1]}, [], [[]], ((1, 2),)]))


# -- calling the compiled model ----------------------------------------------------------------------------
def check_call(case: tuple) -> None:
    target, args, kwargs = case
    ours(compiled(target), *args, **kwargs)


def test_runtime_call() -> None:
    """compiled(...) with anything: typed errors only (a NumPy array, a string: CompileError saying what it takes)."""
    kwargs = st.dictionaries(st.sampled_from(["input_ids", "attention_mask", "position_ids", "labels", "use_cache",
                                              "bogus"]), values(), max_size=2)
    cases = st.tuples(st.sampled_from(["reference", "cpu"]), st.lists(values(), max_size=2).map(tuple), kwargs)
    fuzz("runtime call", cases, check_call, examples=40, slow_s=120, found=CALLS)


CALLS = [  # the reproducers (each raised AttributeError), then what fuzzing found
    ("reference", (np.array([[1, 2, 3]]),), {}), ("cpu", ("hello",), {}), ("cpu", (np.array([[1, 2, 3]]),), {}),
    ("reference", (torch.tensor(0), torch.tensor(0)), {"input_ids": []}),  # TypeError binding the arguments
]


# -- generate ----------------------------------------------------------------------------------------------
class Junk:
    """Not a DecodingHook."""


class BadMask(DecodingHook):
    uses_bitmask = True

    def token_bitmask(self, input_ids: np.ndarray, vocab: int) -> Any:
        return "not a mask"


ODD = st.sampled_from([None, -1, 0, 1, 2, 2.5, float("nan"), float("inf"), -0.0, True, "3", [1], 10**30, 2**63, 1e-300])


def generate_kwargs() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={
        "max_new_tokens": st.one_of(st.integers(-2, 4), ODD, st.just(10**12)),
        "attention_mask": values(),
        "do_sample": st.one_of(st.booleans(), ODD),
        "temperature": ODD,
        "top_k": ODD,
        "top_p": ODD,
        "seed": st.one_of(ODD, st.sampled_from([2**64, -2**70])),
        "eos_token_id": st.one_of(ODD, st.sampled_from(IDS), st.lists(st.sampled_from(IDS + ["x"]), max_size=3)),
        "pad_token_id": st.one_of(ODD, st.sampled_from(IDS)),
        "hooks": st.sampled_from([(), [Junk()], None, "hook", [BadMask()]]),
        "grammar": st.sampled_from(['start: "a"', "start: (", 7]),
        "json_schema": st.sampled_from([{"type": "integer"}, "{", 3]),
        "tokenizer": st.sampled_from([None, "gpt2", object()]),
        "bogus": st.just(1),
    })


def check_generate(case: tuple) -> None:
    ids, kwargs = case
    kwargs = {"max_new_tokens": 2, **kwargs}
    n = kwargs["max_new_tokens"]
    if not (isinstance(n, int) and n > 64):  # a huge one is a long generation, as asked: only its first steps
        ours(compiled("reference").generate, ids, **kwargs)
    it = ours(compiled("reference").stream, ids, **kwargs)
    if not isinstance(it, Exception):
        ours(lambda: list(itertools.islice(it, 3)))  # a generator: its errors come with the first steps


def test_runtime_generate() -> None:
    """generate / stream with anything: typed errors only, as Hugging Face would refuse it (issue 27). The checks
    are the generator's, before any step runs: the reference target serves (no C to compile)."""
    ids = st.one_of(values(), st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=5), min_size=1, max_size=3))
    fuzz("runtime generate", st.tuples(ids, generate_kwargs()), check_generate, examples=40, slow_s=120, found=GENERATE)


GENERATE = [  # the reproducers (tests/compiler/test_generate.py has them too) and what fuzzing found
    ([[1, 2, 3], []], {}), ([[1, -2, 3]], {}), ([[1.5, 2.0]], {}), ("hello", {}),
    (torch.tensor([[1, 2]]), {"max_new_tokens": 2.5}), (torch.tensor([[1, 2]]), {"attention_mask": torch.tensor([[0, 0]])}),
    ([[1, 2]], {"max_new_tokens": 10**12}),  # the whole cache allocated up front: a MemoryError
    ([[1, 2]], {"bogus": 1}),  # TypeError: an unknown keyword
    (torch.tensor([[1, 2]], dtype=torch.bfloat16), {}),  # TypeError from .numpy()
    ([0], {"hooks": None}), ([0], {"hooks": [Junk()]}), ([0], {"hooks": [BadMask()]}),  # TypeError, AttributeError, ValueError
    ([[0], [0, 0]], {"pad_token_id": float("nan")}), ([[0]], {"eos_token_id": 10**30}),  # ValueError, OverflowError
]

