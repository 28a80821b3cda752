"""The generated C `gguf_linear` kernels (backends/cpu/gguf_kernel.py) against the op's NumPy reference,
for every block type, AVX2 and portable builds.

Tolerance: the integer parts are exact (the activation codes, scales and sums the kernel leaves in its
scratch equal quantize_acts bit for bit), so only the f32 order of the sum over chunks may differ:
|C - reference| <= 1e-5 of each output's sum of |terms| (|f32(D d) I| + |Mc s| + |bias|). A token with a
NaN or inf gives NaN outputs in both. One library per type (any shape), built once per session into a
temporary cache."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cpu import CpuBackend, cc
from backends.cpu.gguf_kernel import PAR_MIN, TYPES, GgufLinear, c_source, gguf_linear_kernel, scratch_bytes
from ir.ops.quant.gguf import BLOCKS, dequantize
from ir.ops.quant.gguf_linear import ACTS, CHUNK, act_parts, quantize_acts, weight_codes

from compare import require_c_compiler
from test_quant_gguf_linear import activations, gguf_blocks

require_c_compiler("gguf_linear")

OP = ir.OPS["gguf_linear"]
F32 = np.float32
P = ctypes.c_void_p


@pytest.fixture(scope="module")
def kernels(c_build):
    """kernel(qtype, portable, acts) -> GgufLinear, each built once (c_build: a temporary cache; portable:
    without -mavx2, so the portable C path runs)."""
    built: dict[tuple, GgufLinear] = {}

    def get(qtype: str, portable: bool = False, acts: str = "q8") -> GgufLinear:
        if (qtype, portable, acts) not in built:
            built[qtype, portable, acts] = c_build(lambda: GgufLinear(qtype, acts), portable)
        return built[qtype, portable, acts]

    return get


def terms(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, qtype: str, cols: int, acts: str = "q8") -> np.ndarray:
    """Each output's sum of |terms| the kernel adds: |D S Q| |d q| over the values, |Mc| |s| per chunk (of every
    activation part), |bias|."""
    Q, S, D, Mc = weight_codes(w, qtype, cols)
    A = np.abs(np.repeat(D, CHUNK, 1).astype(np.float64) * np.repeat(S, 16, 1) * Q)
    t = 0
    for q, d, s in act_parts(x.reshape(-1, cols), acts):
        t = t + np.abs(q * np.repeat(d, CHUNK, 1).astype(np.float64)) @ A.T
        if Mc is not None:
            t += np.abs(s.astype(np.float64)) @ np.abs(Mc.astype(np.float64)).T
    return t + (0 if bias is None else np.abs(bias.astype(np.float64)))


def check(got: np.ndarray, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, qtype: str, cols: int,
          acts: str = "q8") -> None:
    want = OP.reference([x, w] + ([] if bias is None else [bias]), {"type": qtype, "cols": cols, "acts": acts})
    assert got.dtype == F32 and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    t = terms(x, w, bias, qtype, cols, acts).reshape(want.shape)
    err = np.abs(got[ok].astype(np.float64) - want[ok])
    assert (err <= 1e-5 * t[ok] + 1e-30).all(), (err / np.maximum(t[ok], 1e-30)).max()


def cols_for(qtype: str, nblk: int) -> int:
    return nblk * BLOCKS[qtype][0]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 45), st.sampled_from([1, 2, 3, 7, 17]), st.integers(1, 3), st.booleans(), st.booleans(),
       st.sampled_from(ACTS), st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_matches_reference(kernels, qtype: str, N: int, M: int, nblk: int, bias: bool, nonfinite: bool,
                                  acts: str, seed: int) -> None:
    """Ragged N (tiles of 4 rows, or 2 for more than 2 code rows), M in 1, 2, 3, 7, 17 (tiles of 1, 2 or 4 code
    rows and single ones; q8x2: 2 code rows a token), K of 1-3 blocks, zeros, outliers, all-zero weight rows,
    with and without bias, NaN / inf tokens."""
    rng = np.random.default_rng(seed)
    cols = cols_for(qtype, nblk)
    w = gguf_blocks(qtype, N, cols, rng, zero_rows=0.1)
    x = activations(M, cols, rng)
    if nonfinite:
        x[rng.integers(M), rng.integers(cols)] = rng.choice([np.nan, np.inf, -np.inf])
    b = rng.standard_normal(N).astype(F32) if bias else None
    check(kernels(qtype, False, acts)(x, w, b), x, w, b, qtype, cols, acts)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 13), st.sampled_from([1, 3, 7]), st.integers(1, 2), st.booleans(), st.sampled_from(ACTS),
       st.integers(0, 2**31 - 1))
@pytest.mark.parametrize("qtype", TYPES)
def test_portable_kernel_matches_reference(kernels, qtype: str, N: int, M: int, nblk: int, bias: bool, acts: str,
                                           seed: int) -> None:
    rng = np.random.default_rng(seed)
    cols = cols_for(qtype, nblk)
    w = gguf_blocks(qtype, N, cols, rng, zero_rows=0.1)
    x = activations(M, cols, rng)
    x[rng.random(M) < 0.2, 0] = np.nan
    b = rng.standard_normal(N).astype(F32) if bias else None
    check(kernels(qtype, True, acts)(x, w, b), x, w, b, qtype, cols, acts)


@pytest.mark.parametrize("portable", [False, True])
def test_scratch_holds_the_reference_codes(kernels, portable: bool) -> None:
    """The activation codes, d and s the kernel leaves in its scratch are quantize_acts' bit for bit (subnormal
    chunks, outliers and non-finite chunks included). (More than TGG_OWN values: shared through the scratch;
    fewer, each thread quantizes for itself, as the kernel tests run.)"""
    rng = np.random.default_rng(7)
    M, cols = 5, 4096
    x = activations(M, cols, rng)
    x[0, :32] *= F32(1e-40)  # subnormal amax
    x[1, 40] = np.inf
    x[2, 64:96] = 0.0
    x[3, 100] = np.nan
    k = kernels("q8_0", portable)
    k(x, gguf_blocks("q8_0", 3, cols, rng))
    s = k._scratch[M, cols]
    raw = np.frombuffer((ctypes.c_uint8 * scratch_bytes("q8_0", M, cols)).from_address(s[1]), np.uint8)
    q, d, sm = quantize_acts(x)
    nb = cols // CHUNK
    np.testing.assert_array_equal(raw[:M * cols].view(np.int8).reshape(M, cols), q)
    np.testing.assert_array_equal(raw[M * cols:M * cols + 4 * M * nb].view(F32).reshape(M, nb), d)
    np.testing.assert_array_equal(raw[M * cols + 4 * M * nb:].view(F32).reshape(M, nb), sm)


@pytest.mark.parametrize("portable", [False, True])
def test_q8x2_scratch_holds_both_parts(kernels, portable: bool) -> None:
    """acts = q8x2: code row 2m is token m's quantize_acts, row 2m + 1 its residual's, bit for bit act_parts
    (the residual's f32 arithmetic included)."""
    rng = np.random.default_rng(17)
    M, cols = 3, 4096
    x = activations(M, cols, rng)
    x[0, :32] *= F32(1e-40)
    x[1, 5] = np.nan
    k = kernels("q4_1", portable, "q8x2")
    k(x, gguf_blocks("q4_1", 3, cols, rng))
    raw = np.frombuffer((ctypes.c_uint8 * scratch_bytes("q4_1", M, cols, "q8x2")).from_address(k._scratch[M, cols][1]),
                        np.uint8)
    (q1, d1, s1), (q2, d2, s2) = act_parts(x, "q8x2")
    nb, R = cols // CHUNK, 2 * M
    inter = lambda a, b: np.stack([a, b], 1).reshape(R, -1)  # noqa: E731  (rows 2m, 2m + 1)
    np.testing.assert_array_equal(raw[:R * cols].view(np.int8).reshape(R, cols), inter(q1, q2))
    np.testing.assert_array_equal(raw[R * cols:R * cols + 4 * R * nb].view(F32).reshape(R, nb), inter(d1, d2))
    np.testing.assert_array_equal(raw[R * cols + 4 * R * nb:].view(F32).reshape(R, nb), inter(s1, s2))
    assert (q2 != 0).any()  # the residual carries something


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("qtype", TYPES)
def test_dequant_row_is_bit_identical(kernels, qtype: str, portable: bool) -> None:
    """gguf_dequant_row_<t> (for embeddings) decodes as dequant_gguf, NaN, inf and subnormal scales included."""
    rng = np.random.default_rng(8)
    cols = cols_for(qtype, 3)
    w = gguf_blocks(qtype, 4, cols, rng)
    per, nbytes = BLOCKS[qtype]
    at = {"q6_k": 208}.get(qtype, 0)
    special = np.array([0x7E00, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0000, 0x8000, 0x7BFF], "<u2")  # NaN, inf, subnormals..
    blk = w.reshape(4, -1, nbytes)
    blk[0, :, at:at + 2] = special[:blk.shape[1]].view(np.uint8).reshape(-1, 2)
    blk[1, 0, at:at + 2] = special[3:4].view(np.uint8)
    fn = getattr(kernels(qtype, portable).lib, f"gguf_dequant_row_{qtype}")
    fn.argtypes, fn.restype = [P, ctypes.c_int64, P], None
    want = dequantize(w, qtype, cols)
    for r in range(4):
        row = np.ascontiguousarray(w[r])
        y = np.empty(cols, F32)
        fn(row.ctypes.data, cols, y.ctypes.data)
        np.testing.assert_array_equal(y.view(np.uint32), want[r].view(np.uint32))


@pytest.mark.parametrize("qtype", ["q4_1", "q6_k"])
def test_threads_give_the_same_result(kernels, qtype: str) -> None:
    """A call large enough for the entry's thread team equals the team function called by one thread, bit for
    bit (each output is summed by one thread, in the same tiles)."""
    rng = np.random.default_rng(9)
    N, M, cols = 301, 7, cols_for(qtype, 2)
    assert M * N * cols >= PAR_MIN
    w, x, b = gguf_blocks(qtype, N, cols, rng), activations(M, cols, rng), rng.standard_normal(N).astype(F32)
    k = kernels(qtype)
    y = k(x, w, b)
    check(y, x, w, b, qtype, cols)
    team = getattr(k.lib, f"gguf_linear_{qtype}")
    team.argtypes, team.restype = [P, ctypes.c_int64, P, ctypes.c_int64, ctypes.c_int64, P, P, P], None
    y1 = np.empty_like(y)
    scratch = np.empty(scratch_bytes(qtype, M, cols), np.uint8)
    team(x.ctypes.data, M, w.ctypes.data, N, cols, b.ctypes.data, y1.ctypes.data, scratch.ctypes.data)
    np.testing.assert_array_equal(y1, y)


@pytest.mark.parametrize("acts", ACTS)
@pytest.mark.parametrize("qtype", ["q4_1", "q8_0", "q5_k"])
def test_prefill_rows_equal_decode_rows(kernels, qtype: str, acts: str) -> None:
    """M = 127 (tiles of 2 rows x 4 code rows, the last ones one at a time) gives each token bit for bit what
    M = 1 (tiles of 4 rows x 1 or 2 code rows) gives it: every output sums the same terms in the same order,
    whatever its tile."""
    rng = np.random.default_rng(10)
    cols = cols_for(qtype, 3 if qtype != "q5_k" else 2)
    w, x = gguf_blocks(qtype, 70, cols, rng), activations(127, cols, rng)
    b = rng.standard_normal(70).astype(F32)
    k = kernels(qtype, False, acts)
    y = k(x, w, b)
    check(y, x, w, b, qtype, cols, acts)
    for m in (0, 1, 2, 3, 4, 124, 126):
        np.testing.assert_array_equal(k(x[m:m + 1], w, b)[0], y[m])
        np.testing.assert_array_equal(k(x[m:m + 2], w, b), y[m:m + 2])


def test_every_type_pastes_into_one_file(c_build) -> None:
    """c_source's names carry the type, and include guards keep pasted helpers and types to one definition: all
    eight types, each pasted twice, compile as one C file (as the native-step generator pastes them)."""
    lib = c_build(lambda: cc.build("".join(c_source(t) for t in TYPES + TYPES), "gguf_all"))
    for t in TYPES:
        assert getattr(lib, f"gguf_linear_{t}") and getattr(lib, f"gguf_dequant_row_{t}")
    with pytest.raises(ValueError, match="no kernel for type 'q2_k'"):
        c_source("q2_k")
    assert scratch_bytes("q4_k", 3, 512) == 3 * 512 + 8 * 3 * 16


def graph(bias: bool = True) -> ir.Graph:
    g = ir.parse(f"""graph @g(%x: f32[2, s0, 64]) {{
  param @w: u8[5, 40]
  param @b: f32[5]
  %y: f32[2, s0, 5] = gguf_linear(%x{", @w, @b" if bias else ", @w"}) {{type = "q4_1", cols = 64}}
  return %y
}}""")
    rng = np.random.default_rng(11)
    g.weights = {"w": gguf_blocks("q4_1", 5, 64, rng), "b": rng.standard_normal(5).astype(F32)}
    return g


def test_cpu_backend_runs_the_kernel(c_build, monkeypatch) -> None:
    """The per-op NumPy module calls the kernel (and --emit writes its C)."""
    monkeypatch.setenv("TRITIUM_CPU_MODE", "numpy")
    g = graph()
    exe = c_build(lambda: CpuBackend().build(g))
    assert any(isinstance(k, GgufLinear) for k in exe._kernels.values())
    assert "gguf_linear_q4_1_entry" in exe.files["kernels/k0.c"]
    x = activations(6, 64, np.random.default_rng(12)).reshape(2, 3, 64)
    check(exe([x])[0], x, g.weights["w"], g.weights["b"], "q4_1", 64)


def test_no_compiler_falls_back_to_the_reference(monkeypatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/tritium-test-cc")
    g = graph(bias=False)
    with pytest.warns(RuntimeWarning, match=r"no C compiler.*%y runs gguf_linear with the NumPy reference"):
        k = gguf_linear_kernel(g.nodes[0], g)
    assert not isinstance(k, GgufLinear)
    x = activations(3, 64, np.random.default_rng(13))
    np.testing.assert_array_equal(k(x, g.weights["w"]), OP.reference([x, g.weights["w"]], g.nodes[0].attrs))
