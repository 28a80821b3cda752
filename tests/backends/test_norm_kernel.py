"""The generated C `rms_norm` kernel (backends/cpu/norm_kernel.py) against the op's NumPy reference: lengths
that are no multiple of 8, one row to many, an empty batch, zeros, tiny and huge values, NaN/inf, with and
without a weight; the portable C build; the factory's choices; and a model on target="cpu" with the kernel.

Each length compiles a library once per session (into a temporary cache), so hypothesis draws the data for
a fixed set of lengths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu.norm_kernel import RmsNorm, rms_norm_kernel

from compare import require_c_compiler

require_c_compiler("rms_norm")

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
OP = ir.OPS["rms_norm"]
F32 = np.float32
LENGTHS = [1, 7, 8, 37, 576]


@pytest.fixture(scope="module")
def kernels(c_build):
    """Kernels by (D, eps, portable); portable: without -mavx2."""
    return lambda D, eps, portable=False: c_build(lambda: RmsNorm(D, eps), portable)


def check(got: np.ndarray, args: list[np.ndarray], eps: float) -> None:
    """Non-finite values where the reference has them (NaN as NaN), else within 1e-5 relative: only the sum
    of squares adds in another order."""
    with np.errstate(all="ignore"):
        want = OP.reference(args, {"eps": eps, "axes": 1})
    assert got.dtype == F32 and got.shape == want.shape
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-30)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(LENGTHS), st.sampled_from([(), (0,), (1,), (3,), (2, 5)]), st.sampled_from([1e-5, 1e-6, 0.0]),
       st.booleans(), st.booleans(), st.integers(0, 2**31 - 1))
def test_kernel_matches_reference(kernels, D: int, lead: tuple, eps: float, weighted: bool, portable: bool,
                                  seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, D)) * 10.0 ** rng.integers(-20, 20)).astype(F32)
    flat = x.reshape(-1, D)
    if len(flat):
        flat[rng.random(len(flat)) < 0.2] = 0.0  # all-zero rows: r = 1 / sqrt(eps), inf with eps 0
        flat[rng.random(flat.shape) < 0.05] *= F32(1e6)  # outliers
        for v in (np.nan, np.inf, -np.inf):
            flat[rng.random(flat.shape) < rng.choice([0.0, 0.01])] = v
    args = [x] + ([rng.standard_normal(D).astype(F32)] if weighted else [])
    k = kernels(D, float(F32(eps)), portable)
    check(k(*args), args, eps)
    check(k(*args), args, eps)  # again: the held weight and the result buffer are reused


def test_a_new_weight_array_is_picked_up(kernels) -> None:
    k = kernels(37, 1e-5)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 37)).astype(F32)
    for _ in range(3):
        w = rng.standard_normal(37).astype(F32)
        check(k(x, w), [x, w], 1e-5)


@pytest.mark.parametrize("text,used", [
    ("%x: f32[2, 6]) {\n  param @w: f32[6]\n  %y: f32[2, 6] = rms_norm(%x, @w) {eps = 1e-05, axes = 1}", True),
    ("%x: f32[2, 6]) {\n  %y: f32[2, 6] = rms_norm(%x) {eps = 1e-05, axes = 1}", True),
    ("%x: f32[2, 6], %w: f32[6]) {\n  %y: f32[2, 6] = rms_norm(%x, %w) {eps = 1e-05, axes = 1}", False),
    ("%x: f32[2, 6]) {\n  %y: f32[2, 6] = rms_norm(%x) {eps = 1e-05, axes = 2}", False),
    ("%x: f16[2, 6]) {\n  %y: f16[2, 6] = rms_norm(%x) {eps = 1e-05, axes = 1}", False),
    ("%x: f32[2, s0]) {\n  %y: f32[2, s0] = rms_norm(%x) {eps = 1e-05, axes = 1}", False),
])
def test_factory_choices(text: str, used: bool) -> None:
    """f32 over the last axis of static length, weighted by a parameter or not; others keep the template."""
    g = ir.parse(f"graph @g({text}\n  return %y\n}}\n")
    assert (rms_norm_kernel(g.nodes[-1], g) is not None) == used


def test_model_on_cpu_runs_the_kernel_and_matches_reference(monkeypatch) -> None:
    from backends.cpu import CpuBackend
    from compiler.pass_manager import PassManager
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    g = export(tiny("llama"), (torch.zeros((1, 7), dtype=torch.int64),)).graph
    g = PassManager("fold_transposes,cse,dce").run(g)
    monkeypatch.setenv("TRITIUM_CPU_MODE", "numpy")  # the NumPy module, which calls the per-op kernels
    exe = CpuBackend().build(PassManager(CpuBackend.lowering).run(g))
    assert sum(isinstance(k, RmsNorm) for k in exe._kernels.values()) == 5  # 2 layers x 2, and the final norm
    ids = np.random.default_rng(0).integers(0, 128, (1, 7))
    for T in (1, 7):
        want, got = ir.run(g, [ids[:, :T]])[0], exe([ids[:, :T]])[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
