"""The C `sdpa` kernel (backends/cpu/attention_kernel.py) against the op's NumPy reference: grouped-query
heads, empty queries and keys, head dims that are no multiple of 8, causal, bool and float masks of every
broadcast shape the op takes, fully masked rows, NaN/inf in q, k, v and the mask; the portable C build;
the factory's choices; and a model on target="cpu" with the kernel in the generated code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu.attention_kernel import Sdpa, sdpa_kernel

from compare import require_c_compiler

require_c_compiler("sdpa")

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
OP = ir.OPS["sdpa"]
F32 = np.float32


@pytest.fixture(scope="module")
def kernels(c_build):
    """Kernels by (scale, causal, portable); portable: without -mavx2."""
    return lambda scale, causal, portable=False: c_build(lambda: Sdpa(scale, causal), portable)


def check(got: np.ndarray, args: list[np.ndarray], attrs: dict) -> None:
    """Non-finite where the reference is (NaN as NaN); else close: the dot products add in another order."""
    with np.errstate(all="ignore"):
        want = OP.reference(args, attrs)
    assert got.dtype == F32 and got.shape == want.shape
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    scale = max(float(np.abs(args[2][np.isfinite(args[2])]).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-4, atol=1e-5 * scale)


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    B = draw(st.integers(1, 2))
    KH, rep = draw(st.sampled_from([(1, 1), (1, 2), (2, 2), (3, 3), (2, 1)]))
    H, L, S = KH * rep, draw(st.integers(0, 4)), draw(st.integers(0, 7))
    E, Ev = draw(st.sampled_from([1, 8, 13, 64])), draw(st.sampled_from([1, 5, 16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    q, k, v = (rng.standard_normal(s).astype(F32) for s in ((B, H, L, E), (B, KH, S, E), (B, KH, S, Ev)))
    if draw(st.booleans()):  # non-finite values somewhere
        for a in (q, k, v):
            if a.size and rng.random() < 0.5:
                a.flat[rng.integers(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
    args = [q, k, v]
    mshape = draw(st.sampled_from([None, (L, S), (1, 1, L, S), (B, H, L, S), (B, 1, 1, S), (1, H, L, 1)]))
    if mshape is not None:
        if draw(st.booleans()):
            m = rng.random(mshape) < draw(st.sampled_from([0.0, 0.5, 0.9]))  # 0.0: every key masked
        else:
            m = (rng.standard_normal(mshape) * 3).astype(F32)
            m[rng.random(mshape) < 0.3] = -np.inf
        args.append(m)
    attrs = {"scale": float(F32(draw(st.sampled_from([0.125, 0.5, 1.0])))), "causal": draw(st.booleans())}
    return args, attrs, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(cases())
def test_kernel_matches_reference(kernels, case) -> None:
    args, attrs, portable = case
    k = kernels(attrs["scale"], attrs["causal"], portable)
    check(k(*args), args, attrs)


def test_non_contiguous_inputs_and_a_transposed_mask(kernels) -> None:
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 64, 3)).astype(F32).transpose(0, 1, 3, 2)  # [1, 4, 3, 64], strided
    k = rng.standard_normal((1, 2, 64, 5)).astype(F32).transpose(0, 1, 3, 2)
    v = rng.standard_normal((1, 2, 5, 16)).astype(F32)
    m = rng.random((5, 3)).T < 0.7  # [3, 5], strided
    args, attrs = [q, k, v, m], {"scale": 0.125, "causal": False}
    check(kernels(0.125, False)(*args), args, attrs)


@pytest.mark.parametrize("dtype,used", [("f32", True), ("f16", False)])
def test_factory_takes_f32(dtype: str, used: bool) -> None:
    g = ir.parse(f"graph @g(%q: {dtype}[1, 2, 3, 4], %k: {dtype}[1, 1, 5, 4], %v: {dtype}[1, 1, 5, 4]) {{\n"
                 f"  %a: {dtype}[1, 2, 3, 4] = sdpa(%q, %k, %v) {{scale = 0.5, causal = true}}\n  return %a\n}}\n")
    k = sdpa_kernel(g.nodes[-1], g)
    assert (k is not None) == used and (not used or (k.scale, k.causal) == (0.5, True))


def test_model_on_cpu_runs_the_kernel_and_matches_reference(monkeypatch) -> None:
    from backends.cpu import CpuBackend
    from compiler.pass_manager import PassManager
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    g = export(tiny("llama"), (torch.zeros((1, 7), dtype=torch.int64),)).graph
    g = PassManager("fold_transposes,cse,dce").run(g)
    monkeypatch.setenv("TRITIUM_CPU_MODE", "numpy")  # the NumPy module, which calls the per-op kernels
    exe = CpuBackend().build(PassManager(CpuBackend.lowering).run(g))
    assert sum(isinstance(k, Sdpa) for k in exe._kernels.values()) == 2
    ids = np.random.default_rng(0).integers(0, 128, (1, 7))
    for T in (1, 7):
        want, got = ir.run(g, [ids[:, :T]])[0], exe([ids[:, :T]])[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
