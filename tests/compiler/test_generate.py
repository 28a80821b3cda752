"""compiled.generate / stream: the same token ids as Hugging Face generate (greedy, with left
padding, across a cache growth), reproducible sampling, stop tokens, decoding hooks (a bitmask in
the compiled graph, a logits processor, the accept callback) and clear errors."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compiler
import compiler.generate as gen
import ir
from compiler.generate import DecodingHook, allowed_bitmask
from frontends.hf_models import tiny
from ir.errors import CompileError, UnsupportedOpError

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
from banned_words import BannedTokens  # noqa: E402


@functools.cache
def model(arch: str) -> torch.nn.Module:
    return tiny(arch)


@functools.cache
def compiled(arch: str, target: str) -> compiler.Compiled:
    return compiler.compile(model(arch), target=target)


def prompt(n: int = 9, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(1, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def hf(arch: str, ids: torch.Tensor, n: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(arch).generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_greedy_equals_hugging_face(arch: str, target: str) -> None:
    ids = prompt()
    out = compiled(arch, target).generate(ids, max_new_tokens=24)
    assert isinstance(out, torch.Tensor) and torch.equal(out, hf(arch, ids, 24))
    st = compiled(arch, target).generator.stats
    assert st.prompt_tokens == 9 and st.prefill_s > 0 and len(st.step_s) == 23


def test_left_padded_batch_equals_hugging_face() -> None:
    a, b = prompt(9, 1)[0].tolist(), prompt(5, 2)[0].tolist()
    out = compiled("llama", "cpu").generate([a, b], max_new_tokens=12, pad_token_id=0)
    ids = torch.tensor([a, [0] * 4 + b])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    np.testing.assert_array_equal(out, hf("llama", ids, 12, attention_mask=mask).numpy())
    alone = compiled("llama", "cpu").generate([b], max_new_tokens=12)  # padding changes nothing
    np.testing.assert_array_equal(out[1, 9:], alone[0, 5:])


def test_the_cache_grows_when_full(monkeypatch) -> None:
    monkeypatch.setattr(gen, "CACHE_BLOCK", 8)  # 9 + 30 tokens: the cache is copied into larger ones
    ids = prompt()
    assert torch.equal(compiled("llama", "cpu").generate(ids, max_new_tokens=30), hf("llama", ids, 30))


def test_stop_tokens_and_streaming() -> None:
    c, ids = compiled("llama", "cpu"), prompt()
    free = c.generate(ids, max_new_tokens=10)[0, 9:].tolist()
    stop = free[3]
    out = c.generate(ids, max_new_tokens=10, eos_token_id=[stop, 127 if stop != 127 else 126])
    assert out[0, 9:].tolist() == free[: free.index(stop) + 1]
    steps = list(c.stream(ids, max_new_tokens=5))
    assert [int(t[0]) for t in steps] == free[:5] and all(t.dtype == np.int64 and t.shape == (1,) for t in steps)
    assert c.generate(ids, max_new_tokens=0).shape == (1, 9)


def test_sampling_is_reproducible_and_follows_the_warpers() -> None:
    c, ids = compiled("llama", "cpu"), prompt()
    one = c.generate(ids, max_new_tokens=16, do_sample=True, seed=3)
    assert torch.equal(one, c.generate(ids, max_new_tokens=16, do_sample=True, seed=3))
    assert not torch.equal(one, c.generate(ids, max_new_tokens=16, do_sample=True, seed=4))
    greedy = c.generate(ids, max_new_tokens=16)
    assert torch.equal(c.generate(ids, max_new_tokens=16, do_sample=True, top_k=1, seed=5), greedy)
    assert torch.equal(c.generate(ids, max_new_tokens=16, do_sample=True, top_p=1e-6, seed=5), greedy)
    assert torch.equal(c.generate(ids, max_new_tokens=16, do_sample=True, temperature=1e-4, seed=5), greedy)


def test_sampler_frequencies() -> None:
    """Top-k 2 at temperature 1 over logits log([0.5, 0.3, 0.2]): tokens 0 and 1 at 5:3, never 2."""
    logits = np.log(np.array([[0.5, 0.3, 0.2]] * 4000, np.float32))
    tok = gen._choose(logits, True, 1.0, 2, None, np.random.default_rng(0))
    counts = np.bincount(tok, minlength=3) / tok.size
    assert counts[2] == 0 and abs(counts[0] - 0.625) < 0.03
    tok = gen._choose(logits, True, 1.0, None, 0.6, np.random.default_rng(0))  # top-p 0.6 keeps 0.5 and 0.3
    assert np.bincount(tok, minlength=3)[2] == 0


class Record(DecodingHook):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def process_logits(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[:, 7] = 1e9  # always token 7
        return out

    def accept_token(self, tokens: np.ndarray) -> None:
        self.seen.append(int(tokens[0]))


def test_hooks_bitmask_in_the_graph_processor_and_accept() -> None:
    c, ids = compiled("llama", "cpu"), prompt()
    free = c.generate(ids, max_new_tokens=12)[0, 9:].tolist()
    ban = BannedTokens(free[:4])
    held = c.generate(ids, max_new_tokens=12, hooks=[ban])[0, 9:].tolist()
    assert not set(held) & set(ban.banned) and ban.accepted == 12
    spec, _ = c.generator.step_for(1, True)
    assert "mask_logits(" in str(spec.graph) and any(n == "token_bitmask" for n, _ in spec.graph.inputs)
    rec = Record()
    out = c.generate(ids, max_new_tokens=5, hooks=[rec])[0, 9:].tolist()
    assert out == rec.seen == [7] * 5

    class Only(DecodingHook):  # a bitmask that allows two tokens
        uses_bitmask = True

        def token_bitmask(self, input_ids, vocab):
            allowed = np.zeros((1, vocab), bool)
            allowed[0, [5, 9]] = True
            return allowed_bitmask(allowed)

    assert set(c.generate(ids, max_new_tokens=8, hooks=[Only()])[0, 9:].tolist()) <= {5, 9}


def test_allowed_bitmask_layout() -> None:
    allowed = np.zeros((1, 70), bool)
    allowed[0, [0, 31, 32, 69]] = True
    words = allowed_bitmask(allowed)
    assert words.dtype == np.int32 and words.shape == (1, 3)
    assert words.view(np.uint32).tolist() == [[1 | 1 << 31, 1, 1 << 5]]


def test_errors() -> None:
    c, ids = compiled("llama", "cpu"), prompt()
    with pytest.raises(CompileError, match="pad on the left"):
        c.generate(ids, attention_mask=torch.tensor([[1] * 8 + [0]]), max_new_tokens=2)
    with pytest.raises(CompileError, match="temperature"):
        c.generate(ids, do_sample=True, temperature=0.0)
    with pytest.raises(CompileError, match="top_p"):
        c.generate(ids, do_sample=True, top_p=1.5)

    class NoTokens(DecodingHook):
        uses_bitmask = True

        def token_bitmask(self, input_ids, vocab):
            return np.zeros((1, -(-vocab // 32)), np.int32)

    with pytest.raises(CompileError, match="every token is masked"):
        c.generate(ids, max_new_tokens=2, hooks=[NoTokens()])
    with pytest.raises(UnsupportedOpError, match="Hugging Face causal LM"):
        compiler.compile(tiny("bert"), target="reference").generate(ids, max_new_tokens=2)


@pytest.mark.parametrize("call, match", [
    (dict(input_ids=[[1, 2, 3], []]), "empty"),                      # issue 27: it invented tokens for the empty row
    (dict(input_ids=[[1, -2, 3]]), "out of range"),                   # negative ids wrapped to the last rows
    (dict(input_ids=[[1, 2, 128]]), "out of range"),                  # vocab 128
    (dict(input_ids=torch.tensor([[1.5, 2.0]])), "integers"),        # floats were truncated
    (dict(input_ids=[[1.0, 2.0]]), "integers"),
    (dict(input_ids="hello"), "integers"),
    (dict(input_ids=[[1, 2]], max_new_tokens=2.5), "max_new_tokens must be an integer"),
    (dict(input_ids=[[1, 2]], do_sample=True, top_k=2.5), "top_k must be an integer"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[0, 0]])), "all zeros"),
    (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[2, 1]])), "only 0"),
    (dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), "batch, length >= 1"),
    # found by tests/fuzz/test_fuzz_runtime.py: each raised a plain Python error
    (dict(input_ids=torch.tensor([[1, 2]], dtype=torch.bfloat16)), "must hold integers, got torch.bfloat16"),
    (dict(input_ids=[[1], [1, 2]], pad_token_id=float("nan")), "pad_token_id must be an integer token id"),
    (dict(input_ids=[[1, 2]], eos_token_id=10**30), "eos_token_id must be an integer token id"),
    (dict(input_ids=[[1, 2]], eos_token_id="x"), "eos_token_id must be an integer token id"),
    (dict(input_ids=[[1, 2]], bogus=1), r"unknown keyword argument\(s\) \['bogus'\]"),
    (dict(input_ids=[[1, 2]], hooks=[object()]), "hooks must be a list"),
])
def test_prompts_are_checked_as_hugging_face_does(call: dict, match: str) -> None:
    with pytest.raises(CompileError, match=match):
        compiled("llama", "cpu").generate(**{"max_new_tokens": 2, **call})


def test_a_huge_max_new_tokens_allocates_the_cache_as_it_goes() -> None:
    """Found by tests/fuzz/test_fuzz_runtime.py: max_new_tokens=10**12 allocated the whole cache up front
    (116 TiB: a MemoryError). The cache grows a block at a time, as the tokens come."""
    import itertools

    c = compiled("llama", "reference")
    steps = list(itertools.islice(c.stream([[1, 2, 3]], max_new_tokens=10**12), 3))
    assert len(steps) == 3 and np.array_equal(np.stack(steps, 1), c.generate([[1, 2, 3]], max_new_tokens=3)[:, 3:])

    class BadMask(DecodingHook):
        uses_bitmask = True

        def token_bitmask(self, input_ids, vocab):
            return "not a mask"

    with pytest.raises(CompileError, match="BadMask.token_bitmask must return int32"):
        c.generate([[1, 2]], max_new_tokens=2, hooks=[BadMask()])


def test_example_runs() -> None:
    import runpy

    runpy.run_path(str(Path(__file__).parents[2] / "examples" / "banned_words.py"), run_name="__main__")


@pytest.mark.slow
def test_smollm2_64_greedy_tokens_equal_hugging_face(smollm2) -> None:
    """The issue's bar: 64 greedy tokens from SmolLM2-135M, reference and cpu, HF's exact ids."""
    model, tok = smollm2
    ids = torch.tensor([tok.encode("The capital of France is a city that")])
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=tok.eos_token_id)
    for target in ("reference", "cpu"):
        got = compiler.compile(model, target=target).generate(ids, max_new_tokens=64, eos_token_id=tok.eos_token_id)
        assert torch.equal(got, want), (target, tok.decode(got[0, ids.shape[1]:]), tok.decode(want[0, ids.shape[1]:]))


def test_step_graph_saves_and_loads(tmp_path) -> None:
    """A quantized step graph written by save() serves a fresh compile without re-running the passes."""
    ids = prompt()
    first = compiler.compile(model("llama"), target="cpu", passes="rtn{bits=4,group=32}")
    want = first.generate(ids, max_new_tokens=8)
    first.generator.save(tmp_path / "step")
    second = compiler.compile(model("llama"), target="cpu", passes="no_such_pass")  # never run: the step is loaded
    second.generator.load(tmp_path / "step")
    assert torch.equal(second.generate(ids, max_new_tokens=8), want)
    assert "dequant_affine" in str(second.generator.step_for(1, False)[0].portable)
    from compiler.artifact import save

    save(ir.parse("graph @g(%x: f32[2]) {\n  %y: f32[2] = neg(%x)\n  return %y\n}\n"), tmp_path / "other")
    with pytest.raises(CompileError, match="not a KV-cache step graph"):
        second.generator.load(tmp_path / "other")
