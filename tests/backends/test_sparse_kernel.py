"""The generated C `sparse_input_linear` kernel (backends/cpu/sparse_kernel.py) against the op's NumPy
reference: the same kept entries (ties, zeros, NaN/inf, keep = 0 and D, threshold mode), sums equal up
to their order, on shapes that are no multiple of 8 or 64, one token (row streaming) to many (masked x
and BLAS), an empty batch, weight rows holding inf; the portable C build; the NumPy fallback without a
compiler; a tiny Llama under wina and teal on target="cpu" against target="reference".

Each shape compiles a library once per session (into a temporary cache), so hypothesis draws the data
for a fixed set of shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu import cc
from backends.cpu.sparse_kernel import BLAS_ROWS, PAR_MIN, SparseInputLinear, sparse_input_linear_kernel
from ir.ops.nn import sparsify_keep

from compare import require_c_compiler

require_c_compiler("sparse_input_linear")

OP = ir.OPS["sparse_input_linear"]
F32 = np.float32
# (D, out): ragged everywhere; the last keeps enough rows x outputs (>= PAR_MIN) to run on every thread
SHAPES = [(1, 1), (5, 3), (37, 70), (130, 257), (700, 333)]
assert 700 * 333 * 3 // 4 >= PAR_MIN


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """Kernels by (shape, keep, threshold, portable), compiled into a temporary cache; portable: without
    -mavx2, so the portable C path runs."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITIUM_CACHE", str(tmp_path_factory.mktemp("tritium-cache")))
    real = cc.features

    def get(shape: tuple, keep: int, threshold: float, portable: bool = False) -> SparseInputLinear:
        with pytest.MonkeyPatch.context() as m:
            if portable:
                m.setattr(cc, "features", lambda: real() - {"avx2"})
            return SparseInputLinear(*shape, keep, threshold)  # one library per shape: cached after the first

    yield get
    mp.undo()


def check(got: np.ndarray, x: np.ndarray, w: list[np.ndarray], attrs: dict) -> None:
    """NaN and +-inf where the reference has them, else within 1e-5 of each output's sum of |terms| (the
    kernel sums the kept rows in another order than BLAS)."""
    with np.errstate(all="ignore"):
        want = OP.reference([x, *w], attrs)
        keep = sparsify_keep(np.abs(x) * w[0], attrs["keep"], attrs["threshold"])
        terms = np.abs(np.where(keep, x, 0).astype(np.float64)) @ np.abs(w[1].astype(np.float64))
    terms = terms + (np.abs(w[2]) if len(w) == 3 else 0)
    assert got.dtype == F32 and got.shape == want.shape
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin], want[~fin])  # NaN == NaN here
    err = np.abs(got[fin].astype(np.float64) - want[fin])
    assert (err <= 1e-5 * terms[fin]).all(), err.max()


@st.composite
def cases(draw: st.DrawFn) -> tuple:
    shape = draw(st.sampled_from(SHAPES))
    D, out = shape
    lead = draw(st.sampled_from([(), (2,), (1, 3)]))
    n = draw(st.sampled_from([0, 1, 1, 2, BLAS_ROWS, 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = (rng.integers(-6, 7, (*lead, n, D)) / 4).astype(F32)  # a coarse grid: many ties, many zeros
    if draw(st.booleans()):
        x = (x * rng.standard_normal(x.shape)).astype(F32)
    for v in (np.nan, np.inf, -np.inf):
        x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.02]))] = v
    scale = draw(st.sampled_from(["ones", "norms", "ties", "signs"]))
    scale = {"ones": np.ones(D, F32), "norms": np.abs(rng.standard_normal(D)).astype(F32) + F32(0.1),
             "ties": (rng.integers(0, 3, D) / 2).astype(F32),  # zeros: 0 * inf is a NaN score
             "signs": rng.standard_normal(D).astype(F32)}[scale]
    w = [scale, rng.standard_normal((D, out)).astype(F32)] + ([rng.standard_normal(out).astype(F32)] if draw(st.booleans()) else [])
    keep = draw(st.sampled_from([-1, 0, 1, D // 2, D - 1, D, D + 3]))
    threshold = draw(st.sampled_from([0.0, 0.3, -1.0, 1.0]))
    return shape, x, w, {"keep": max(keep, -1), "threshold": threshold}


@settings(max_examples=60, deadline=None)
@given(cases())
def test_kernel_matches_reference(kernels, case) -> None:
    shape, x, w, attrs = case
    with np.errstate(all="ignore"):
        got = kernels(shape, attrs["keep"], attrs["threshold"])(x, *w)
    check(got, x, w, attrs)


@settings(max_examples=10, deadline=None)
@given(cases())
def test_portable_kernel_matches_reference(kernels, case) -> None:
    shape, x, w, attrs = case
    k = kernels(shape, attrs["keep"], attrs["threshold"], portable=True)
    if "avx2" in cc.features():  # else both are the portable build
        assert k.lib._name != kernels(shape, attrs["keep"], attrs["threshold"]).lib._name
    with np.errstate(all="ignore"):
        got = k(x, *w)
    check(got, x, w, attrs)


def test_top_k_ties_pick_exactly_the_reference_entries(kernels) -> None:
    """Unit weights read back which inputs were kept: identity wt, so y = the masked x itself. (NaN and inf
    scores make every output NaN: the hypothesis tests check those by NaN positions.)"""
    D = 37
    k = kernels((D, D), 5, 0.0)
    x = np.zeros((3, D), F32)
    x[0, [3, 9, 20, 30, 36]] = [1, 1, 1, 1, 1]
    x[0, [1, 2]] = -1  # ties with the ones: the lower indices win
    x[1] = 0.5
    x[1, 33], x[1, 34] = 3.0, -2.0  # the largest two, then ties in index order
    x[2, :] = -0.0
    x[2, 10] = 0.0
    eye = np.eye(D, dtype=F32)
    got = k(x, np.ones(D, F32), eye)
    assert list(np.flatnonzero(got[0])) == [1, 2, 3, 9, 20]
    assert list(np.flatnonzero(got[1] != 0)) == [0, 1, 2, 33, 34]
    assert not got[2].any()


def test_dropped_rows_that_are_not_finite_give_nan_as_the_reference(kernels) -> None:
    """The reference's dense product adds 0 * inf = NaN for a dropped input whose weights hold inf: so does
    the kernel (it reads that row with a zero), in both paths."""
    D, out = SHAPES[2]
    rng = np.random.default_rng(3)
    scale = np.ones(D, F32)
    wt = rng.standard_normal((D, out)).astype(F32)
    wt[4, 7] = np.inf
    k = kernels((D, out), 10, 0.0)
    for n in (1, BLAS_ROWS + 1):
        x = rng.standard_normal((n, D)).astype(F32)
        x[:, 4] = 0.0  # never among the 10 kept
        with np.errstate(all="ignore"):
            got = k(x, scale, wt)
        assert np.isnan(got[:, 7]).all() and not np.isnan(np.delete(got, 7, axis=1)).any()
        check(got, x, [scale, wt], {"keep": 10, "threshold": 0.0})


def test_new_weights_are_used(kernels) -> None:
    D, out = SHAPES[2]
    rng = np.random.default_rng(4)
    k = kernels((D, out), 12, 0.0)
    x = rng.standard_normal((1, D)).astype(F32)
    s, wt, b = np.ones(D, F32), rng.standard_normal((D, out)).astype(F32), rng.standard_normal(out).astype(F32)
    for w in ([s, wt, b], [s, wt], [s, 2 * wt, b], [2 * s + np.arange(D, dtype=F32), wt], [s, wt, -b]):
        check(k(x, *w), x, w, {"keep": 12, "threshold": 0.0})


# -- the factory: f32 nodes get C, others (and machines without a compiler) the reference -----------------
GRAPH = """graph @g(%x: {dt}[2, s0, 10]) {{
  param @s: f32[10]
  param @wt: {dt}[10, 5]
  param @b: {dt}[5]
  %y: {dt}[2, s0, 5] = sparse_input_linear(%x, @s, @wt, @b) {{keep = 4, threshold = 0.0}}
  return %y
}}
"""


def graph(dt: str) -> ir.Graph:
    g = ir.parse(GRAPH.format(dt=dt))
    rng = np.random.default_rng(0)
    g.weights = {k: rng.standard_normal(t.shape).astype(t.dtype.np) for k, t in g.params.items()}
    return ir.verify(g)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path))
    monkeypatch.setattr(cc, "_LIBS", {})
    cc.features.cache_clear()
    yield tmp_path
    cc.features.cache_clear()


def test_factory(fresh_cache) -> None:
    g = graph("f32")
    k = sparse_input_linear_kernel(g.nodes[0], g)
    assert isinstance(k, SparseInputLinear)
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(F32)
    check(k(x, *(g.weights[p] for p in ("s", "wt", "b"))), x, [g.weights[p] for p in ("s", "wt", "b")], g.nodes[0].attrs)
    h = graph("f16")
    k16 = sparse_input_linear_kernel(h.nodes[0], h)
    assert not isinstance(k16, SparseInputLinear)
    ws = [h.weights[p] for p in ("s", "wt", "b")]
    np.testing.assert_array_equal(k16(x.astype(np.float16), *ws), OP.reference([x.astype(np.float16), *ws], h.nodes[0].attrs))


def test_no_compiler_falls_back_to_the_reference(fresh_cache, monkeypatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/tritium-test-cc")
    g = graph("f32")
    with pytest.warns(RuntimeWarning, match=r"no C compiler.*%y runs sparse_input_linear with the NumPy reference"):
        k = sparse_input_linear_kernel(g.nodes[0], g)
    assert not isinstance(k, SparseInputLinear)
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(F32)
    np.testing.assert_array_equal(k(x, *(g.weights[p] for p in ("s", "wt", "b"))), ir.run(g, [x])[0])


# -- a whole model --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama() -> ir.Graph:
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    return export(tiny("llama"), (torch.zeros((1, 7), dtype=torch.int64),)).graph  # symbolic length


@pytest.mark.parametrize("method", ["wina", "teal"])
def test_tiny_llama_on_cpu_matches_the_reference(llama: ir.Graph, method: str) -> None:
    """What compile(..., target="cpu") runs (the CPU lowering, built) against the reference runtime."""
    from backends.cpu import CpuBackend
    from compiler.pass_manager import PassManager
    from passes import PassContext

    g = PassManager(f"fold_transposes,{method}{{sparsity=0.5}},cse,dce", context=PassContext(progress=False)).run(llama)
    exe = CpuBackend().build(PassManager(CpuBackend.lowering).run(g))
    assert "sparse_input_linear" in exe.source and "sparsify" not in [n.op for n in exe.graph]
    ids = np.random.default_rng(0).integers(0, 128, (1, 7))
    for T in (1, 7):  # one token (C) and a prompt (masked x and BLAS)
        want, got = ir.run(g, [ids[:, :T]])[0], exe([ids[:, :T]])[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4
