"""kvquant and the cache quantizer it shares with xquant: the NumPy quantizer's error contract (ragged
groups, constant rows, outliers), bit-plane packing, its graph form equal to it bit for bit, and the
rewritten KV-cache step equal to the float one within the quantization error."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ir
from frontends.hf_models import tiny
from frontends.kv_cache import export_with_cache
from passes import parse_pipeline
from passes.kvquant import (Emit, bytes_per_token, dequantize_rows, emit_dequantize_rows, emit_quantize_rows, grow_states,
                            pack, packed_bytes, planes, quantize_rows, state_arrays, unpack)


# -- the quantizer ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 70), st.integers(1, 40), st.integers(0, 2**31 - 1),
       st.sampled_from(["normal", "zeros", "constant", "outlier"]))
@example(4, 10, 4, 0, "outlier")  # a short last group (10 = 4 + 4 + 2)
@example(2, 3, 64, 0, "zeros")  # a group wider than the row
def test_round_trip_is_within_half_a_step(bits: int, n: int, group: int, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, n)).astype(np.float32)
    if kind == "zeros":
        x[:] = 0
    elif kind == "constant":
        x[:] = np.float32(rng.standard_normal())
    elif kind == "outlier":
        x[rng.integers(3), rng.integers(n)] = 1e4
    data, params = quantize_rows(x, bits, group)
    assert data.dtype == np.uint8 and data.shape == (3, packed_bytes(n, bits))
    ng = -(-n // min(group, n))
    assert params.dtype == np.float32 and params.shape == (3, 2 * ng)
    y = dequantize_rows(data, params, n, bits, group)
    step = np.repeat(params[:, :ng], min(group, n), -1)[:, :n]
    err = np.abs(y - x)
    assert (err <= step / 2 * (1 + 1e-5) + 1e-6 * np.abs(x).max(initial=1)).all()
    if kind in ("zeros", "constant"):
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_round_trips(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, (5, 24)).astype(np.float32)
    data = pack(codes, bits)
    assert data.shape == (5, 3 * bits) and data.dtype == np.uint8  # b bits per code, not a byte
    np.testing.assert_array_equal(unpack(data, bits), codes)
    assert sum(w for w, _ in planes(bits)) == bits


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 8), st.integers(1, 40), st.sampled_from([1, 3, 8, 16, 64]), st.integers(0, 2**31 - 1))
def test_graph_form_equals_numpy(bits: int, n: int, group: int, seed: int) -> None:
    g = ir.parse(f"graph @q(%x: f32[2, s0, {n}]) {{\n  return %x\n}}\n")
    e = Emit(g, "q")
    data, params = emit_quantize_rows(e, "%x", bits, group)
    back = emit_dequantize_rows(e, data, params, n, bits, group)
    g.nodes, g.outputs = e.flush(), [data, params, back]
    ir.verify(g)
    x = np.random.default_rng(seed).standard_normal((2, 5, n)).astype(np.float32) * 3
    got = ir.run(g, [x])
    want = quantize_rows(x, bits, group)
    for a, b in zip(got, [*want, dequantize_rows(*want, n, bits, group)]):
        np.testing.assert_array_equal(a, b)


# -- the pass on a KV-cache step ---------------------------------------------------------------------
@functools.cache
def step_graph() -> ir.Graph:
    g = export_with_cache(tiny("llama"), batch=1).graph
    for p in parse_pipeline("fold_transposes,constant_fold,cse,dce"):
        g = p.run(g)
    return g


def logits(g: ir.Graph, ids: np.ndarray, prompt: int, capacity: int = 24) -> np.ndarray:
    """Prefill `prompt` tokens, then one token per step; the logits of every step [steps, V]."""
    state, out, past, n = state_arrays(g, 1, capacity), [], 0, prompt
    while past < ids.shape[1]:
        o = ir.run(g, [ids[:, past:past + n], np.arange(past, past + n)[None], np.ones((1, past + n), np.int64),
                       np.array(past), *state])
        state, past, n = o[:-1], past + n, 1
        out.append(o[-1])
    return np.concatenate(out)


def rewrite(spec: str) -> ir.Graph:
    g = parse_pipeline(spec)[0].run(step_graph())
    assert ir.parse(str(g)) == g  # the text round-trips
    return g


def test_state_layout_and_bytes() -> None:
    g = rewrite("kvquant{bits=4,group=8,vgroup=16}")
    kinds = {n: str(t) for n, t in g.inputs if n.startswith("kv_")}
    assert kinds == {"kv_k0": "u8[1, 2, s2, 8]", "kv_k0_p": "f32[1, 2, s2, 4]", "kv_k0_r": "f32[1, 2, 8, 16]",
                     "kv_v0": "u8[1, 2, s2, 8]", "kv_v0_p": "f32[1, 2, s2, 2]",
                     **{k.replace("0", "1"): v for k, v in [("kv_k0", "u8[1, 2, s2, 8]"), ("kv_k0_p", "f32[1, 2, s2, 4]"),
                                                             ("kv_k0_r", "f32[1, 2, 8, 16]"), ("kv_v0", "u8[1, 2, s2, 8]"),
                                                             ("kv_v0_p", "f32[1, 2, s2, 2]")]}}
    # per token and layer: codes 2 x 2 heads x 8 bytes, key params 2 x 4 x 4, value params 2 x 2 x 4
    assert bytes_per_token(g) == (2 * (32 + 32 + 16), 2 * 2 * 8 * 16 * 4)
    assert bytes_per_token(step_graph()) == (2 * 2 * 2 * 16 * 4, 0)
    assert parse_pipeline("kvquant")[0].run(g) is g  # no float cache left: nothing to do
    grown = grow_states(g, state_arrays(g, 1, 8), 4)
    assert [a.shape[2] for a in grown][:3] == [12, 12, 8]  # the open key group does not grow


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 11), st.integers(1, 9), st.sampled_from([2, 4, 8]), st.integers(0, 2**31 - 1))
def test_steps_match_the_float_cache(prompt: int, steps: int, group: int, seed: int) -> None:
    """8 bits: the logits of every step within 1% of the float cache's, whatever the prompt length and
    wherever the key groups close (prefill across several groups, decode steps closing them)."""
    ids = np.random.default_rng(seed).integers(0, 128, (1, prompt + steps))
    want = logits(step_graph(), ids, prompt)
    got = logits(rewrite(f"kvquant{{bits=8,group={group},vgroup=8}}"), ids, prompt)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def test_fewer_bits_more_error_and_f16() -> None:
    ids = np.random.default_rng(0).integers(0, 128, (1, 14))
    want = logits(step_graph(), ids, 5)
    errs = [np.abs(logits(rewrite(f"kvquant{{bits={b},group=8}}"), ids, 5) - want).max() for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]
    f16 = logits(rewrite("kvquant{bits=16}"), ids, 5)
    assert np.abs(f16 - want).max() <= 1e-3 * np.abs(want).max()


def test_sink_keeps_the_first_tokens_exact() -> None:
    """With the first 3 tokens kept exact, a 3-token prefill reads only exact keys and values."""
    ids = np.random.default_rng(1).integers(0, 128, (1, 6))
    want = logits(step_graph(), ids, 3)
    got = logits(rewrite("kvquant{bits=2,group=8,sink=3}"), ids, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert np.abs(got[1:] - want[1:]).max() > 1e-4  # later tokens are quantized


def test_bad_options() -> None:
    with pytest.raises(ir.PassError, match="power of two"):
        parse_pipeline("kvquant{group=6}")[0].run(step_graph())
    with pytest.raises(ir.PassError, match="bits"):
        parse_pipeline("kvquant{bits=9}")[0].run(step_graph())


def test_cpu_backend_runs_it() -> None:
    """The CPU backend (native or NumPy module) runs the rewritten step like the reference runtime."""
    from backends import get_backend
    from compiler.pass_manager import lower
    from passes.donate_state import DonateState

    g = DonateState().run(rewrite("kvquant{bits=4,group=8}"))
    backend = get_backend("cpu")
    exe = backend.build(lower(backend, g))
    ids = np.random.default_rng(2).integers(0, 128, (1, 4))
    args = [ids, np.arange(4)[None], np.ones((1, 4), np.int64), np.array(0), *state_arrays(g, 1, 16)]
    want = ir.run(g, [np.array(a, copy=True) for a in args])
    got = exe(args)
    assert np.abs(got[-1] - want[-1]).max() <= 1e-4 * np.abs(want[-1]).max()
