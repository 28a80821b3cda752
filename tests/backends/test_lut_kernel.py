"""The generated C `lut_linear` kernel (backends/cpu/lut_kernel.py) against the op's NumPy reference,
and the C build helper (backends/cpu/cc.py): the on-disk kernel cache, compile errors that name the
source file, and the NumPy fallback when there is no compiler.

Each distinct kernel shape compiles a shared library (~0.3-1 s), so hypothesis draws the data for a
small fixed set of shapes, and each shape's kernel is built once per session (into a temporary
cache directory: nothing is written to ~/.cache)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu import cc
from backends.cpu.lut_kernel import LutLinear, is_paired, lut_linear_kernel, source
from ir.ops.quant.lut import pack_bitplanes

from compare import require_c_compiler

require_c_compiler("lut_linear")

OP = ir.OPS["lut_linear"]
F32 = np.float32

# (P, out, cols, group, tgroup): out never a multiple of 64 and cols never of 4 (a ragged last table;
# 1, 3, 5, 19, 25 or 26 table pairs, the last one half empty when the tables are odd); one group per
# row, groups of tgroup, of 2 tgroups with a short last block, and tgroup 8 (one table pair per block)
SHAPES = [(1, 1, 3, 3, 64), (2, 70, 37, 37, 64), (3, 130, 150, 16, 16), (6, 150, 199, 128, 64), (4, 63, 201, 8, 8)]


@pytest.fixture(scope="module")
def kernels(c_build):
    """A session's kernels by (shape, table, has_offs, portable, paired), each built once (c_build: a temporary
    cache; portable: without -mavx2, so the portable C path runs)."""
    built: dict[tuple, LutLinear] = {}

    def get(shape: tuple, table: str, has_offs: bool, portable: bool = False, paired: bool = False) -> LutLinear:
        key = (shape, table, has_offs, portable, paired)
        if key not in built:
            built[key] = c_build(lambda: LutLinear(*shape, table, has_offs, paired=paired), portable)
        return built[key]

    return get


def layer(shape: tuple, has_offs: bool, bias: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """(bits, coef, offs[, bias]) for one shape: random planes with all-zero and all-one rows."""
    P, out, cols, group, _ = shape
    ng = -(-cols // group)
    B = (rng.random((P, out, cols)) < rng.choice([0.1, 0.5, 0.9])).astype(np.uint8)
    B[:, rng.random(out) < 0.1] = 0
    B[:, rng.random(out) < 0.1] = 1
    coef = (rng.standard_normal((P, ng, out)) * 10.0 ** rng.integers(-2, 2)).astype(F32)
    offs = rng.standard_normal((ng, out)).astype(F32) if has_offs else np.zeros((ng, out), F32)
    return [pack_bitplanes(B), coef, offs] + ([rng.standard_normal(out).astype(F32)] if bias else [])


def activations(cols: int, lead: tuple, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((*lead, cols)) * 10.0 ** rng.integers(-2, 3)
    x[rng.random(x.shape) < rng.choice([0.0, 0.5])] = 0.0
    x[rng.random(x.shape) < 0.02] *= 1000.0  # outliers
    flat = x.reshape(-1, cols)
    flat[rng.random(len(flat)) < 0.2] = 0.0  # all-zero tokens
    return x.astype(F32)


def attrs(shape: tuple, table: str) -> dict:
    return OP.normalize_attrs({"cols": shape[2], "group": shape[3], "tgroup": shape[4], "table": table})


def check_close(got: np.ndarray, want: np.ndarray, w: list[np.ndarray], x: np.ndarray, shape: tuple) -> None:
    """Within 1e-5 of max |y|, plus 1e-6 of each output's sum of |terms| (where the terms cancel, the
    kernel's f32 sums in another order than the reference's f64 ones differ by more than 1e-5 |y|)."""
    assert got.dtype == F32 and got.shape == want.shape
    terms = OP.reference([np.abs(x), w[0], np.abs(w[1]), np.abs(w[2])] + [np.abs(b) for b in w[3:]], attrs(shape, "f32"))
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= 1e-5 * np.abs(want).max() + 1e-6 * terms).all(), err.max() / max(np.abs(want).max(), 1e-30)


@pytest.mark.parametrize("has_offs", [True, False])
@pytest.mark.parametrize("table", ["f32", "i8", "i16"])
@settings(max_examples=15, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(1, 5), st.sampled_from([(), (2,), (1, 3)]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_kernel_matches_reference(kernels, table: str, has_offs: bool, shape: tuple, n: int, lead: tuple,
                                  bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = layer(shape, has_offs, bias, rng)
    x = activations(shape[2], (*lead, n), rng)
    k = kernels(shape, table, has_offs)
    check_close(k(x, *w), OP.reference([x, *w], attrs(shape, table)), w, x, shape)


@pytest.mark.parametrize("table", ["f32", "i8", "i16"])
@settings(max_examples=8, deadline=None)
@given(st.sampled_from([SHAPES[1], SHAPES[4]]), st.integers(1, 5), st.booleans(), st.integers(0, 2**31 - 1))
def test_portable_kernel_matches_reference(kernels, table: str, shape: tuple, n: int, bias: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = layer(shape, True, bias, rng)
    x = activations(shape[2], (n,), rng)
    k = kernels(shape, table, True, portable=True)
    if "avx2" in cc.features():  # else both are the portable build
        assert k.lib._name != kernels(shape, table, True).lib._name
    check_close(k(x, *w), OP.reference([x, *w], attrs(shape, table)), w, x, shape)


def test_int16_block_sums_at_their_largest(kernels) -> None:
    """tgroup 1024: 256 tables per block, each lookup +-127 (all bits set, x all equal), so a block's
    int16 sum reaches +-32512 without wrapping; 1030 columns: a second, short block."""
    shape = (1, 3, 1030, 1030, 1024)
    bits = pack_bitplanes(np.ones((1, 3, 1030), np.uint8))
    coef, offs = np.ones((1, 1, 3), F32), np.zeros((1, 3), F32)
    x = np.stack([np.full(1030, 1.0, F32), np.full(1030, -0.5, F32), np.linspace(-1, 1, 1030, dtype=F32)])
    want = OP.reference([x, bits, coef, offs], attrs(shape, "i8"))
    np.testing.assert_allclose(want[:2, 0], [1030.0, -515.0], rtol=1e-4)  # 127 s = 4 max|x|, to f32 rounding of s
    got = kernels(shape, "i8", False)(x, bits, coef, offs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("has_offs", [True, False])
@pytest.mark.parametrize("table", ["f32", "i8", "i16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_activations_propagate_as_in_the_reference(kernels, table: str, has_offs: bool, bad: float) -> None:
    """A NaN or inf activation makes every output of its token non-finite (NaN for NaN), also rows
    that do not read its column and with all-zero offsets (the reference adds 0 * sum(x) = NaN);
    the other tokens are unchanged."""
    shape = SHAPES[1]
    rng = np.random.default_rng(1)
    w = layer(shape, has_offs, True, rng)
    x = rng.standard_normal((3, shape[2])).astype(F32)
    x[1, 9] = bad
    with np.errstate(all="ignore"):
        want = OP.reference([x, *w], attrs(shape, table))
    got = kernels(shape, table, has_offs)(x, *w)
    assert (np.isnan(got[1]) if np.isnan(bad) else ~np.isfinite(got[1])).all(), got[1]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    check_close(got[[0, 2]], want[[0, 2]], w, x[[0, 2]], shape)


def test_new_weights_are_used(kernels) -> None:
    """The kernel pads its weights once and reuses them while it is called with the same arrays; a
    call with another bias, offs or bits (even with the same coef) uses those."""
    shape = SHAPES[1]
    rng = np.random.default_rng(2)
    bits, coef, offs, bias = layer(shape, True, True, rng)
    x = activations(shape[2], (4,), rng)
    k = kernels(shape, "f32", True)
    for w in ([bits, coef, offs, bias], [bits, coef, offs], [bits, coef, offs, -bias], [bits, coef, 2 * offs],
              [pack_bitplanes(np.ones((2, 70, 37), np.uint8)), coef, offs]):
        check_close(k(x, *w), OP.reference([x, *w], attrs(shape, "f32")), w, x, shape)


def paired_layer(shape: tuple, rng: np.random.Generator) -> list[np.ndarray]:
    """Trit-planes as pack_lut writes them: planes 2q and 2q + 1 are B+ and B- of one trit-plane (never
    both set), with coefficients +a and -a; all-zero and all-one (+1 or -1) rows among them."""
    P, out, cols, group, _ = shape
    T = rng.integers(-1, 2, (P // 2, out, cols))
    T[:, rng.random(out) < 0.1] = 1
    T[:, rng.random(out) < 0.1] = -1
    T[:, rng.random(out) < 0.1] = 0
    B = np.stack([T == 1, T == -1], axis=1).reshape(P, out, cols).astype(np.uint8)
    a = (rng.standard_normal((P // 2, -(-cols // group), out)) * 10.0 ** rng.integers(-2, 2)).astype(F32)
    coef = np.stack([a, -a], axis=1).reshape(P, *a.shape[1:])
    assert is_paired(coef)
    return [pack_bitplanes(B), coef, np.zeros(coef.shape[1:], F32)]


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("table", ["i8", "i16"])
@settings(max_examples=10, deadline=None)
@given(st.sampled_from([SHAPES[1], SHAPES[3], SHAPES[4]]), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_paired_kernel_matches_reference(kernels, table: str, portable: bool, shape: tuple, n: int, seed: int) -> None:
    """Trit-plane pairs summed as one integer difference per block (AVX2), or plane by plane (portable C)."""
    rng = np.random.default_rng(seed)
    w = paired_layer(shape, rng)
    x = activations(shape[2], (n,), rng)
    k = kernels(shape, table, False, portable=portable, paired=True)
    check_close(k(x, *w), OP.reference([x, *w], attrs(shape, table)), w, x, shape)


@pytest.mark.parametrize("table", ["i8", "i16"])
def test_paired_block_differences_at_their_largest(kernels, table: str) -> None:
    """tgroup 512: 128 tables per block; with x = +1, -1, +1, -1, ... every B+ lookup (nibble 0101) is the
    table's maximum and every B- lookup (1010) its minimum, so the difference of a block's int16 sums is
    at its largest (2 x 128 x 127 for int8 tables; 128 x 254 low and 128 x 255 high bytes for int16)."""
    shape = (2, 3, 512, 512, 512)
    B = np.zeros((2, 3, 512), np.uint8)
    B[0, :, 0::2] = 1  # B+: the +1 columns
    B[1, :, 1::2] = 1  # B-: the -1 columns
    a = np.array([[[1.0, 0.5, -2.0]]], F32)
    w = [pack_bitplanes(B), np.concatenate([a, -a]), np.zeros((1, 3), F32)]
    x = np.stack([np.tile(np.array([1.0, -1.0], F32), 256), np.linspace(-1, 1, 512, dtype=F32)])
    want = OP.reference([x, *w], attrs(shape, table))
    np.testing.assert_allclose(want[0], 512 * a[0, 0], rtol=1e-4)
    got = kernels(shape, table, False, paired=True)(x, *w)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_paired_kernel_rejects_unpaired_coefficients(kernels) -> None:
    shape = SHAPES[1]
    bits, coef, offs = layer(shape, False, False, np.random.default_rng(3))
    k = kernels(shape, "i16", False, paired=True)
    with pytest.raises(ValueError, match="specialised to paired planes"):
        k(np.ones((1, shape[2]), F32), bits, coef, offs)
    with pytest.raises(ValueError, match="cannot be paired"):
        LutLinear(*SHAPES[1], "f32", False, paired=True)  # exact f32 tables: nothing to pair


def test_zero_offset_kernel_rejects_offsets(kernels) -> None:
    shape = SHAPES[1]
    bits, coef, offs = layer(shape, True, False, np.random.default_rng(3))
    k = kernels(shape, "f32", False)
    with pytest.raises(ValueError, match="specialised to zero offsets"):
        k(np.ones((1, shape[2]), F32), bits, coef, offs)


# -- cc: the cache, errors, no compiler --------------------------------------------------------------
@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache and no in-process state: compiles are counted by library name."""
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path))
    monkeypatch.setattr(cc, "_LIBS", {})
    cc.features.cache_clear()
    runs: list[str] = []
    real = cc._run

    def counting(cmd, src):
        runs.append(src.name)
        return real(cmd, src)

    monkeypatch.setattr(cc, "_run", counting)
    yield tmp_path / "kernels", runs
    cc.features.cache_clear()


def test_same_source_compiles_once(fresh_cache) -> None:
    d, runs = fresh_cache
    src = source(2, 70, 37, 37, 64, "i8")
    a = cc.build(src, "lut_linear")
    b = cc.build(src, "lut_linear")
    assert a is b
    assert [r for r in runs if r.startswith("lut_linear")] and len([r for r in runs if r.startswith("lut_linear")]) == 1
    so = sorted(d.glob("lut_linear-*.so"))
    assert len(so) == 1 and so[0].with_suffix(".c").read_text() == src
    mtime = so[0].stat().st_mtime_ns
    cc._LIBS.clear()  # a new process: found on disk, not compiled again
    cc.build(src, "lut_linear")
    assert len([r for r in runs if r.startswith("lut_linear")]) == 1 and so[0].stat().st_mtime_ns == mtime
    cc.build(source(2, 70, 37, 37, 64, "f32"), "lut_linear")  # another source: another library
    assert len(list(d.glob("lut_linear-*.so"))) == 2 and len([r for r in runs if r.startswith("lut_linear")]) == 2
    assert all(p.suffix in (".so", ".c") for p in d.iterdir()), list(d.iterdir())  # no temporary left behind


def test_broken_source_names_the_c_file(fresh_cache) -> None:
    d, _ = fresh_cache
    with pytest.raises(cc.KernelCompileError) as e:
        cc.build("int broken(void) { return }\n", "broken")
    srcs = list(d.glob("broken-*.c"))
    assert len(srcs) == 1 and str(srcs[0]) in str(e.value)
    assert "C compiler failed" in str(e.value) and "error" in str(e.value)
    assert not list(d.glob("broken-*.so"))


QUANT_LUT = """graph @g(%x: f32[2, 3, 10]) {
  param @w.lut.bits: u8[2, 1, 2, 64]
  param @w.lut.coef: f32[2, 1, 5]
  param @w.lut.offs: f32[1, 5]
  param @b: f32[5]
  %y: f32[2, 3, 5] = lut_linear(%x, @w.lut.bits, @w.lut.coef, @w.lut.offs, @b) {cols = 10, group = 16, tgroup = 64, table = "i8"}
  return %y
}
"""


def lut_graph(zero_offs: bool) -> ir.Graph:
    g = ir.parse(QUANT_LUT)
    rng = np.random.default_rng(0)
    g.weights = {"w.lut.bits": pack_bitplanes((rng.random((2, 5, 10)) < 0.5).astype(np.uint8)),
                 "w.lut.coef": rng.standard_normal((2, 1, 5)).astype(F32),
                 "w.lut.offs": np.zeros((1, 5), F32) if zero_offs else rng.standard_normal((1, 5)).astype(F32),
                 "b": rng.standard_normal(5).astype(F32)}
    return ir.verify(g)


@pytest.mark.parametrize("zero_offs", [True, False])
def test_factory_builds_the_kernel(fresh_cache, zero_offs: bool) -> None:
    g = lut_graph(zero_offs)
    node = g.nodes[0]
    k = lut_linear_kernel(node, g)
    assert isinstance(k, LutLinear) and k.has_offs == (not zero_offs)  # zero offsets (trit-planes): skipped
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(F32)
    w = [g.weights[o[1:]] for o in node.operands[1:]]
    check_close(k(x, *w), ir.run(g, [x])[0], w, x, (2, 5, 10, 16, 64))


def test_factory_pairs_trit_planes(fresh_cache) -> None:
    """Coefficients +a, -a (pack_lut's trit-planes) get the paired kernel; others do not."""
    g = lut_graph(True)
    node = g.nodes[0]
    assert not lut_linear_kernel(node, g).paired
    a = g.weights["w.lut.coef"][:1]
    g.weights["w.lut.coef"] = np.concatenate([a, -a])
    k = lut_linear_kernel(node, g)
    assert k.paired
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(F32)
    w = [g.weights[o[1:]] for o in node.operands[1:]]
    check_close(k(x, *w), ir.run(g, [x])[0], w, x, (2, 5, 10, 16, 64))


def test_no_compiler_falls_back_to_the_reference(fresh_cache, monkeypatch) -> None:
    d, runs = fresh_cache
    monkeypatch.setenv("CC", "/nonexistent/tritium-test-cc")
    with pytest.raises(cc.NoCompilerError, match="tritium-test-cc"):
        cc.compiler()
    g = lut_graph(False)
    node = g.nodes[0]
    with pytest.warns(RuntimeWarning, match=r"no C compiler.*%y runs lut_linear with the NumPy reference"):
        k = lut_linear_kernel(node, g)
    assert not isinstance(k, LutLinear) and runs == []
    x = np.random.default_rng(1).standard_normal((2, 3, 10)).astype(F32)
    w = [g.weights[o[1:]] for o in node.operands[1:]]
    np.testing.assert_array_equal(k(x, *w), OP.reference([x, *w], node.attrs))
    np.testing.assert_array_equal(k(x, *w), ir.run(g, [x])[0])


@pytest.mark.parametrize("table", ["i8", "i16"])
def test_f16_coefficients_match_the_reference(kernels, table: str) -> None:
    """Scales that are exact in f16 (f16 alphas, f16 scales times powers of two) stream as f16
    (AVX2 + F16C); the result is the same function, and coefficients f16 cannot hold are refused."""
    shape = SHAPES[3]
    rng = np.random.default_rng(5)
    bits, coef, offs = layer(shape, True, False, rng)
    coef = coef.astype(np.float16).astype(F32)
    k = LutLinear(*shape, table, True, coef_f16=True)
    assert k.coef_f16 == ("avx2" in cc.features())
    x = rng.standard_normal((3, shape[2])).astype(F32)
    w = [bits, coef, offs]
    check_close(k(x, *w), OP.reference([x, *w], attrs(shape, table)), w, x, shape)
    if k.coef_f16:
        with pytest.raises(ValueError, match="not exact in f16"):
            k(x, bits, coef + F32(1e-4), offs)


def test_factory_holds_f16_exact_coefficients_as_f16(fresh_cache) -> None:
    g = lut_graph(True)
    g.weights["w.lut.coef"] = g.weights["w.lut.coef"].astype(np.float16).astype(F32)
    assert lut_linear_kernel(g.nodes[0], g).coef_f16 == ("avx2" in cc.features())
    assert not lut_linear_kernel(g.nodes[0], lut_graph(True)).coef_f16  # random f32 coefficients: kept f32


def test_address_is_the_arrays_data_pointer() -> None:
    """cc.address: the buffer-protocol fast path and numpy's own way agree, for writable, read-only,
    empty, non-contiguous (numpy's way) and view arrays."""
    a = np.arange(24, dtype=F32).reshape(4, 6)
    ro = a.copy()
    ro.flags.writeable = False
    for x in (a, a[1:], ro, np.empty((0, 3), F32), a[:, ::2], a.T):
        assert cc.address(x) == x.ctypes.data
