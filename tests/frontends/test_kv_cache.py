"""KV-cache step graphs: prefill then one-token steps over an explicit cache give the logits of a
full no-cache forward at every position (Llama, Qwen3, GPT-2), at any capacity; the cache comes back
with the new positions written and nothing else changed."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from frontends.hf_models import tiny
from frontends.kv_cache import STATE_INPUTS, cache_shapes, export_with_cache
from ir.errors import UnsupportedOpError


@functools.cache
def traced(arch: str):
    model = tiny(arch)
    return model, export_with_cache(model, batch=1)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["llama", "qwen3", "gpt2"]), st.integers(1, 9), st.integers(1, 4), st.integers(0, 6),
       st.integers(0, 2**31 - 1))
def test_steps_equal_a_full_forward(arch: str, prompt: int, steps: int, spare: int, seed: int) -> None:
    model, cg = traced(arch)
    g = cg.graph
    assert [n for n, _ in g.inputs[:STATE_INPUTS]] == ["input_ids", "position_ids", "attention_mask", "past_len"]
    ids = np.random.default_rng(seed).integers(0, 128, (1, prompt + steps))
    cache = [np.zeros(s, np.float32) for s in cache_shapes(model, 1, prompt + steps + spare)]
    past, n = 0, prompt
    while past < prompt + steps:
        x = ids[:, past:past + n]
        outs = ir.run(g, [x, np.arange(past, past + n)[None], np.ones((1, past + n), np.int64), np.array(past), *cache])
        new, logits = outs[:-1], outs[-1]
        for c, d in zip(cache, new):  # only positions past .. past+n-1 were written
            np.testing.assert_array_equal(np.delete(c, np.s_[past:past + n], axis=2), np.delete(d, np.s_[past:past + n], axis=2))
        cache, past, n = new, past + n, 1
        with torch.no_grad():
            want = model(torch.from_numpy(ids[:, :past]), use_cache=False).logits[:, -1].numpy()
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_only_causal_lms() -> None:
    with pytest.raises(UnsupportedOpError, match="causal LM"):
        export_with_cache(tiny("bert"))
