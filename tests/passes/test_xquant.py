"""xquant on a tiny Llama's KV-cache step: the state it caches, the rematerialized step equal to the float
one within the quantization error (every mode, prefill and decode), greedy decoding at 8 bits equal to
fp32, the artifact round trip, and the CPU and Triton backends running the rewritten step."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from frontends.hf_models import tiny
from frontends.kv_cache import export_with_cache
from passes import parse_pipeline
from passes.kvquant import bytes_per_token, state_arrays
from passes.xquant import rotation

MODES = ["rotate=false", "rotate=true", "cl=true", "latent=true", "cl=true,latent=true",
         "cl=true,sink=2", "latent=true,cl=true,sink=1"]


@functools.cache
def step_graph(arch: str = "llama") -> ir.Graph:
    g = export_with_cache(tiny(arch), batch=1).graph
    for p in parse_pipeline("fold_transposes,constant_fold,cse,dce"):
        g = p.run(g)
    return g


@functools.cache
def rewrite(spec: str, arch: str = "llama") -> ir.Graph:
    g = parse_pipeline(spec)[0].run(step_graph(arch))
    assert ir.parse(str(g)) == g  # the text round-trips
    return g


def step(g: ir.Graph, state: list[np.ndarray], ids: np.ndarray, past: int, run=None) -> tuple[np.ndarray, list[np.ndarray]]:
    s = ids.shape[1]
    args = [ids, np.arange(past, past + s)[None], np.ones((1, past + s), np.int64), np.array(past), *state]
    out = (run or (lambda a: ir.run(g, a)))(args)
    return out[-1], list(out[:-1])


def logits(g: ir.Graph, ids: np.ndarray, prompt: int, capacity: int = 24) -> np.ndarray:
    state, out, past, n = state_arrays(g, 1, capacity), [], 0, prompt
    while past < ids.shape[1]:
        lg, state = step(g, state, ids[:, past:past + n], past)
        out.append(lg)
        past, n = past + n, 1
    return np.concatenate(out)


def test_state_is_the_quantized_input() -> None:
    g = rewrite("xquant{bits=4,group=16}")
    # hidden 64 at 4 bits: 32 bytes of codes and 4 groups x (scale, minimum) per token and layer
    assert {n: str(t) for n, t in g.inputs if n.startswith("kv_")} == {
        "kv_x0": "u8[1, 1, s2, 32]", "kv_x0_p": "f32[1, 1, s2, 8]", "kv_x1": "u8[1, 1, s2, 32]", "kv_x1_p": "f32[1, 1, s2, 8]"}
    assert bytes_per_token(g) == (2 * (32 + 32), 0)
    assert [n for n, _ in g.inputs[:4]] == ["input_ids", "position_ids", "attention_mask", "past_len"]
    assert len(g.outputs) == 5 and g.outputs[:4] == [f"%{n}" for n in ("xq0.write", "xq0.write_1", "xq1.write", "xq1.write_1")]
    assert parse_pipeline("xquant")[0].run(g) is g  # no float cache left: nothing to do
    lat = rewrite("xquant{bits=4,group=16,latent=true,rank=40}")  # 40 latent channels instead of 64
    assert str(dict(lat.inputs)["kv_x0"]) == "u8[1, 1, s2, 20]"
    assert "@xquant.basis.0" in {"@" + p for p in lat.params}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_the_float_cache(mode: str) -> None:
    ids = np.random.default_rng(0).integers(0, 128, (1, 13))
    want = logits(step_graph(), ids, 6)
    got = logits(rewrite(f"xquant{{bits=8,group=16,{mode}}}"), ids, 6)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max(), mode


def test_a_truncated_basis_loses_more() -> None:
    """The random tiny model's [W_k; W_v] has a flat spectrum: dropping a third of it costs far more than 8 bits."""
    ids = np.random.default_rng(0).integers(0, 128, (1, 9))
    want = logits(step_graph(), ids, 4)
    err = [np.abs(logits(rewrite(f"xquant{{bits=8,group=16,latent=true,rank={r}}}"), ids, 4) - want).max() for r in (64, 40)]
    assert err[1] > 3 * err[0]


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 10), st.integers(1, 8), st.sampled_from(MODES[1:5]), st.integers(0, 2**31 - 1))
def test_prefill_and_steps_any_length(prompt: int, steps: int, mode: str, seed: int) -> None:
    ids = np.random.default_rng(seed).integers(0, 128, (1, prompt + steps))
    want = logits(step_graph(), ids, prompt)
    got = logits(rewrite(f"xquant{{bits=8,group=16,{mode}}}"), ids, prompt)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def test_fewer_bits_more_error_and_cl_helps() -> None:
    ids = np.random.default_rng(1).integers(0, 128, (1, 14))
    want = logits(step_graph(), ids, 5)
    err = {b: np.abs(logits(rewrite(f"xquant{{bits={b},group=16}}"), ids, 5) - want).max() for b in (2, 4, 8)}
    assert err[2] > err[4] > err[8]


def test_sink_rows_are_exact() -> None:
    """A prefill of as many tokens as the sink reads only exact rows: the float cache's logits."""
    ids = np.random.default_rng(2).integers(0, 128, (1, 5))
    want = logits(step_graph(), ids, 3)
    got = logits(rewrite("xquant{bits=2,group=16,sink=3,cl=true}"), ids, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 9), st.integers(1, 7), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_window_keeps_the_last_tokens_exact(prompt: int, steps: int, w: int, seed: int) -> None:
    """A window as long as the sequence makes the cache exact; a shorter one (its ring wrapped by the
    prefill or by the steps) keeps the prefill exact when the prompt fits in it."""
    ids = np.random.default_rng(seed).integers(0, 128, (1, prompt + steps))
    want = logits(step_graph(), ids, prompt)
    full = logits(rewrite(f"xquant{{bits=2,group=16,window={prompt + steps}}}"), ids, prompt)
    np.testing.assert_allclose(full, want, rtol=1e-4, atol=1e-5)
    some = logits(rewrite(f"xquant{{bits=2,group=16,window={w}}}"), ids, prompt)
    assert np.isfinite(some).all()
    if prompt <= w:
        np.testing.assert_allclose(some[0], want[0], rtol=1e-4, atol=1e-5)
    else:
        assert np.abs(some[0] - want[0]).max() > 1e-4


def test_rotation_is_orthogonal_and_seeded() -> None:
    r = rotation(24, 3)
    np.testing.assert_allclose(r @ r.T, np.eye(24), atol=1e-5)
    np.testing.assert_array_equal(r, rotation(24, 3))


def test_greedy_8_bits_equals_fp32() -> None:
    """32 greedy tokens with xquant{bits=8} are fp32's (bench/kv_memory.py checks SmolLM2-135M)."""
    def greedy(g: ir.Graph) -> list[int]:
        state = state_arrays(g, 1, 40)
        lg, state = step(g, state, np.array([[5, 17, 99, 3]]), 0)
        toks = [int(lg.argmax())]
        for t in range(31):
            lg, state = step(g, state, np.array([[toks[-1]]]), 4 + t)
            toks.append(int(lg.argmax()))
        return toks
    assert greedy(rewrite("xquant{bits=8}")) == greedy(step_graph())


def test_other_architectures() -> None:
    """Qwen3 normalizes k per head before RoPE: the copy of the K computation carries that norm along."""
    ids = np.random.default_rng(3).integers(0, 128, (1, 9))
    want = logits(step_graph("qwen3"), ids, 4)
    got = logits(rewrite("xquant{bits=8,group=16}", "qwen3"), ids, 4)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def test_artifact_round_trip(tmp_path) -> None:
    from compiler.artifact import read, save

    g = rewrite("xquant{bits=4,group=16,latent=true}")
    save(g, tmp_path / "step")
    back, _ = read(tmp_path / "step")
    assert back == g
    ids = np.random.default_rng(4).integers(0, 128, (1, 7))
    np.testing.assert_array_equal(logits(back, ids, 3), logits(g, ids, 3))


def _lowered(target: str, g: ir.Graph):
    from backends import get_backend
    from compiler.pass_manager import lower
    from passes.donate_state import DonateState

    backend = get_backend(target)
    g = DonateState().run(g)
    return g, backend.build(lower(backend, g))


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_backends_run_it(target: str) -> None:
    """The CPU backend and Triton (its interpreter here) run the rewritten step like the reference runtime."""
    g, exe = _lowered(target, rewrite("xquant{bits=4,group=16,cl=true,sink=1}"))
    ids = np.random.default_rng(5).integers(0, 128, (1, 6))
    state_r = state_arrays(g, 1, 12)
    state_x = [a.copy() for a in state_r]
    for past, n in ((0, 4), (4, 1), (5, 1)):
        want, state_r = step(g, state_r, ids[:, past:past + n], past)
        got, state_x = step(g, state_x, ids[:, past:past + n], past, run=lambda a: [np.asarray(o) for o in exe(a)])
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_generate_and_load(tmp_path) -> None:
    """Generator.load takes the rewritten step (its state inputs are named kv_*). generate() itself needs
    compiler/generate.py to allocate the state from the graph's input types (passes.kvquant.state_arrays);
    until it does, it feeds float [B, H, C, D] arrays and the step rejects them."""
    import compiler

    model = tiny("llama")
    c = compiler.compile(model, target="reference", passes="fold_transposes,constant_fold,cse,dce,xquant{bits=8}")
    path = tmp_path / "step"
    from compiler.artifact import save

    save(rewrite("xquant{bits=8}"), path)
    c.generator.load(path)
    prompt = np.array([[5, 17, 99, 3]])
    try:
        out = c.generate(prompt, max_new_tokens=8)
    except ir.RuntimeShapeError as e:
        pytest.xfail(f"compiler/generate.py allocates float KV arrays: {e}")
    ref = compiler.compile(model, target="reference").generate(prompt, max_new_tokens=8)
    np.testing.assert_array_equal(out, ref)
