"""The generated C `linear` kernel (backends/cpu/dense_kernel.py) against the op's NumPy reference: shapes
that are no multiple of 4, 8 or 16, one token to BLAS_ROWS and beyond (where NumPy's matmul takes over),
an empty batch, empty D or OUT, zeros, NaN/inf in x and in the weight, with and without a bias; the portable
C build; the factory's choices (f32 parameter weights only); and a model on target="cpu" against the
reference, with the kernel in the generated code.

Each shape compiles a library once per session (into a temporary cache), so hypothesis draws the data for
a fixed set of shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu.dense_kernel import BLAS_ROWS, PAR_MIN, DenseLinear, dense_linear_kernel

from compare import require_c_compiler

require_c_compiler("linear")

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN in, as BLAS
OP = ir.OPS["linear"]
F32 = np.float32
# (D, out): ragged everywhere, empty ones; the last is large enough (>= PAR_MIN) to split over threads
SHAPES = [(1, 1), (0, 5), (6, 0), (13, 7), (37, 70), (130, 257), (300, 333)]
assert 300 * 333 >= PAR_MIN


@pytest.fixture(scope="module")
def kernels(c_build):
    """Kernels by (shape, portable); portable: without -mavx2."""
    return lambda shape, portable=False: c_build(lambda: DenseLinear(*shape), portable)


def check(got: np.ndarray, args: list[np.ndarray]) -> None:
    """NaN and +-inf where the reference has them, else within 1e-5 of each output's sum of |terms| (the
    kernel sums in another order than BLAS)."""
    with np.errstate(all="ignore"):
        want = OP.reference(args, {})
        terms = np.abs(args[0].astype(np.float64)) @ np.abs(args[1].astype(np.float64)).T
    terms = terms + (np.abs(args[2]) if len(args) == 3 else 0)
    assert got.dtype == F32 and got.shape == want.shape
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])  # NaN == NaN here
    err = np.abs(got[fin].astype(np.float64) - want[fin])
    assert (err <= 1e-5 * terms[fin] + 1e-30).all(), err.max()


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    D, out = draw(st.sampled_from(SHAPES))
    lead = draw(st.sampled_from([(), (2,), (1, 3)]))
    n = draw(st.sampled_from([0, 1, 1, 2, 3, BLAS_ROWS - 1, BLAS_ROWS]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((*lead, n, D)).astype(F32)
    w = rng.standard_normal((out, D)).astype(F32)
    if draw(st.booleans()):  # zeros, and outliers many orders of magnitude above the rest
        x[rng.random(x.shape) < 0.3] = 0
        x[rng.random(x.shape) < 0.05] *= F32(1e4)
    for a in (x, w):
        for v in (np.nan, np.inf, -np.inf):
            a[rng.random(a.shape) < draw(st.sampled_from([0.0, 0.0, 0.01]))] = v
    args = [x, w] + ([rng.standard_normal(out).astype(F32)] if draw(st.booleans()) else [])
    return (D, out), args, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(cases())
def test_kernel_matches_reference(kernels, case) -> None:
    shape, args, portable = case
    k = kernels(shape, portable)
    check(k(*args), args)
    check(k(*args), args)  # again: the held weights and the result buffer are reused


def test_result_buffer_is_the_kernels_until_the_next_call(kernels) -> None:
    """Documented contract (kernels.py): the generated code never writes a kernel's result and copies it
    when it is an output, so one buffer per token count is reused; the values are right each time."""
    k = kernels((37, 70))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 37)).astype(F32)
    x1, x2 = (rng.standard_normal((1, 37)).astype(F32) for _ in range(2))
    y1 = k(x1, w).copy()
    y2 = k(x2, w)
    check(y2, [x2, w])
    assert not np.array_equal(y1, y2)


def test_a_new_weight_array_is_picked_up(kernels) -> None:
    k = kernels((13, 7))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 13)).astype(F32)
    for _ in range(3):
        w, b = rng.standard_normal((7, 13)).astype(F32), rng.standard_normal(7).astype(F32)
        check(k(x, w, b), [x, w, b])


def _linear_graph(wdtype: str, weight_param: bool) -> ir.Graph:
    w = "@w" if weight_param else "%w"
    head = f"%x: {wdtype}[2, 6]" + ("" if weight_param else f", %w: {wdtype}[3, 6]")
    body = f"  param @w: {wdtype}[3, 6]\n" if weight_param else ""
    return ir.parse(f"graph @g({head}) {{\n{body}  %y: {wdtype}[2, 3] = linear(%x, {w})\n  return %y\n}}")


@pytest.mark.parametrize("wdtype,param,used", [("f32", True, True), ("f32", False, False), ("f16", True, False)])
def test_factory_takes_f32_parameter_weights_only(wdtype, param, used) -> None:
    """Other linears keep the template (BLAS), which computes the same thing."""
    g = _linear_graph(wdtype, param)
    k = dense_linear_kernel(g.nodes[-1], g)
    assert (k is not None) == used


def test_model_on_cpu_runs_the_kernel_and_matches_reference(monkeypatch) -> None:
    """What compile(..., target="cpu") runs for a tiny Llama: its linears are this kernel, one token (C)
    and a prompt (BLAS) alike match the reference runtime."""
    from backends.cpu import CpuBackend
    from compiler.pass_manager import PassManager
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    g = export(tiny("llama"), (torch.zeros((1, 7), dtype=torch.int64),)).graph
    g = PassManager("fold_transposes,cse,dce").run(g)
    monkeypatch.setenv("TRITIUM_CPU_MODE", "numpy")  # the NumPy module, which calls the per-op kernels
    exe = CpuBackend().build(PassManager(CpuBackend.lowering).run(g))
    assert any(isinstance(k, DenseLinear) for k in exe._kernels.values())
    assert any(f.startswith("kernels/") and "dense_linear" in t for f, t in exe.files.items())
    ids = np.random.default_rng(0).integers(0, 128, (1, 7))
    for T in (1, 7):
        want, got = ir.run(g, [ids[:, :T]])[0], exe([ids[:, :T]])[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
