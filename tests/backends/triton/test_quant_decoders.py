# The weight decoders of backends/triton/quant_exprs.py against the reference runtime, in Triton's
# interpreter: dequant_affine, dequant_codebook, dequant_shift, dequant_pow, dequant_bfp and dfloat11_decode
# (this one bit for bit, as its own output).
#
# Each is checked twice: as a graph output (a pointwise kernel stores the decoded weight, compared bit
# for bit with the reference op) and inlined into a linear's weight tile loads (the K loop decodes
# tile by tile; compared within rtol 1e-5, plus an atol of 1e-5 times sum|x||w|, the scale of the
# dot products' rounding). Shapes are ragged (N, K not multiples of the tiles or of the group) and
# weights include the extreme codes, zeros and the smallest / largest exponents.
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

IR_DIR = Path(__file__).parent.parent.parent / "ir"
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def build(g: ir.Graph):
    from backends.triton import TritonBackend

    return TritonBackend().build(g, tiles="gpu")


def int_range(dt: str) -> tuple[int, int]:
    d = DTYPES[dt]
    if d.packed:
        return d.lo, d.hi
    info = np.iinfo(d.np)
    return int(info.min), int(info.max)


def codes(rng: np.random.Generator, dt: str, shape: tuple, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Random codes of dt in [lo, hi] (its whole range by default), with the extremes and 0 planted."""
    dlo, dhi = int_range(dt)
    lo, hi = dlo if lo is None else lo, dhi if hi is None else hi
    if DTYPES[dt].bits > 16:  # i32 / i64 codes: keep their f32 values exact
        lo, hi = max(lo, -2**20), min(hi, 2**20)
    q = rng.integers(lo, hi + 1, shape)
    flat = q.reshape(-1)
    for v in (lo, hi, min(max(0, lo), hi)):
        if flat.size:
            flat[rng.integers(0, flat.size)] = v
    return q.astype(DTYPES[dt].np)


def floats(rng: np.random.Generator, dt: str, shape: tuple, scale: float = 1.0) -> np.ndarray:
    """Normal values with some exact zeros and negatives (scales, tables)."""
    v = rng.standard_normal(shape) * scale
    v[rng.random(shape) < 0.1] = 0.0
    return v.astype(DTYPES[dt].np)


def run_both(g: ir.Graph, args: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], object]:
    exe = build(g)
    before = [a.copy() for a in args]
    want = ir.run(g, [a.copy() for a in args])
    got = exe(args)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b, err_msg="an input was modified")
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{a.dtype}{a.shape} != {b.dtype}{b.shape}"
    return got, want, exe


def check_weights(g: ir.Graph, x: np.ndarray, rtol: float = 0.0) -> np.ndarray:
    """g returns the decoded weight: Triton's (a pointwise kernel) equals the reference's bit for bit
    (NaN where NaN; within rtol where the decoder is documented as approximate)."""
    (got,), (want,), exe = run_both(g, [x])
    if rtol:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=0,
                                   equal_nan=True, err_msg=exe.source)
    else:
        np.testing.assert_array_equal(got, want, err_msg=exe.source)
    return want


def check_linear(g: ir.Graph, x: np.ndarray, w: np.ndarray, wtol: float = 0.0) -> None:
    """g returns linear(x, decoded w): relative tolerance 1e-5, plus 1e-5 of sum|x||w| for cancellation
    (and wtol of it where the decoded weights may differ by that much relatively)."""
    (got,), (want,), exe = run_both(g, [x])
    bound = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    atol = (1e-5 + wtol) * float(bound.max()) if bound.size else 0.0
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=atol + 1e-30,
                               equal_nan=True, err_msg=exe.source)


def graphs(params: dict[str, tuple[str, tuple]], call: str, dt: str, n: int, k: int, m: int,
           weights: dict[str, np.ndarray]) -> tuple[ir.Graph, ir.Graph]:
    """Two graphs over one decoder call: one returns the decoded weight %w (as f32), one linear(%x, %w)."""
    decl = "".join(f"  param @{p}: {t}[{', '.join(map(str, s))}]\n" for p, (t, s) in params.items())
    head = f"graph @t(%x: f32[{m}, {k}]) {{\n{decl}  %w: {dt}[{n}, {k}] = {call}\n"
    wf = "%w"
    cast = ""
    if dt != "f32":
        cast, wf = f"  %wf: f32[{n}, {k}] = cast(%w) {{dtype = f32}}\n", "%wf"
    # a narrow %w comes back through a cast to f32: the decoder's value exactly (Triton's interpreter
    # stores bf16 with its own conversion, which flushes subnormals)
    gw = ir.parse(head + cast + f"  return {wf}\n}}")
    gl = ir.parse(head + cast + f"  %y: f32[{m}, {n}] = linear(%x, {wf})\n  return %y\n}}")
    for g in (gw, gl):
        g.weights.update(weights)
    return gw, gl


def x_for(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    return rng.standard_normal((m, k)).astype(np.float32)


def as_f32(w: np.ndarray) -> np.ndarray:
    return w.astype(np.float32)


# -- the tests/ir example graphs -----------------------------------------------------------------------
def ir_file_graph(name: str) -> ir.Graph:
    text = (IR_DIR / f"quant_{name}.ir").read_text()
    if name == "codebook":  # add_sparse and sparse_linear have no Triton form: the linears read the codebook alone
        text = text.replace("linear(%x, %w.sp)", "linear(%x, %w.dq)").replace("return %y, %z, %t, %s", "return %y, %z")
    g = ir.parse(text)
    if name == "codebook":
        from passes import get_pass

        g = get_pass("dce")().run(g)
        for p in [p for p in g.params if p.endswith((".idx", ".val")) or p == "v"]:
            del g.params[p]
    rng = np.random.default_rng(0)
    for p, t in g.params.items():
        if t.dtype.kind in ("int", "uint"):
            lo, hi = int_range(t.dtype.name)
            if name == "bfp" and p.endswith(".exp"):
                lo, hi = -20, 20
            g.weights[p] = codes(rng, t.dtype.name, t.shape, lo, hi)
        else:
            g.weights[p] = floats(rng, t.dtype.name, t.shape)
    return g


@pytest.mark.parametrize("name", ["affine", "codebook", "power", "shift", "bfp"])
def test_the_ir_files_match_the_reference(name: str) -> None:
    g = ir_file_graph(name)
    ops = ir.count_ops(g)
    assert "dequant_" + {"power": "pow"}.get(name, name) in ops and not set(ops) & {"add_sparse", "sparse_linear"}
    exe = build(g)
    assert exe.launches == ops["linear"], "the decoders are inlined into the linears' weight loads"
    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    want = ir.run(g, [x])
    got = exe([x])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max() + 1), err_msg=exe.source)


# -- dequant_affine -------------------------------------------------------------------------------------
@SLOW
@given(n=st.integers(1, 70), k=st.integers(1, 70), m=st.integers(1, 20), group=st.integers(1, 80),
       qdt=st.sampled_from(["i2", "i3", "i4", "i8", "u2", "u3", "u4", "u8", "tern", "i16", "i32"]),
       sdt=st.sampled_from(["f16", "f32", "bf16", "f64"]), zero=st.booleans(),
       dt=st.sampled_from(["f32", "f16", "bf16"]), seed=st.integers(0, 2**31 - 1))
def test_dequant_affine(n, k, m, group, qdt, sdt, zero, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    ng = -(-k // group)
    params = {"q": (qdt, (n, k)), "s": (sdt, (n, ng))}
    w = {"q": codes(rng, qdt, (n, k)), "s": floats(rng, sdt, (n, ng), 0.05)}
    if zero:
        params["z"] = (sdt, (n, ng))
        w["z"] = (rng.integers(-3, 4, (n, ng)) + (rng.random((n, ng)) < 0.3) * 0.5).astype(DTYPES[sdt].np)
    call = f"dequant_affine(@q, @s{', @z' if zero else ''}) {{group = {group}, dtype = {dt}}}"
    gw, gl = graphs(params, call, dt, n, k, m, w)
    x = x_for(rng, m, k)
    wref = check_weights(gw, x)
    check_linear(gl, x, as_f32(wref))


# -- dequant_codebook -----------------------------------------------------------------------------------
@SLOW
@given(n=st.integers(1, 70), k=st.integers(1, 70), m=st.integers(1, 20),
       cdt=st.sampled_from(["u2", "u3", "u4", "u5", "u8"]), bdt=st.sampled_from(["f16", "f32", "bf16"]),
       dt=st.sampled_from(["f32", "f16"]), seed=st.integers(0, 2**31 - 1))
def test_dequant_codebook(n, k, m, cdt, bdt, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    size = 2 ** DTYPES[cdt].bits
    book = floats(rng, bdt, (n, size))
    book[:, -1] = DTYPES[bdt].np.type(-65504.0 if bdt == "f16" else -1e30)  # the last entry: a large value
    gw, gl = graphs({"c": (cdt, (n, k)), "b": (bdt, (n, size))}, f"dequant_codebook(@c, @b) {{dtype = {dt}}}",
                    dt, n, k, m, {"c": codes(rng, cdt, (n, k)), "b": book})
    x = x_for(rng, m, k)
    check_weights(gw, x)
    book[:, -1] = 7.0  # a finite linear: keep the f32 sums away from overflow
    gw.weights["b"] = gl.weights["b"] = book
    check_linear(gl, x, as_f32(ir.run(gw, [x])[0]))


# -- dequant_shift ----------------------------------------------------------------------------------------
@SLOW
@given(n=st.integers(1, 70), k=st.integers(1, 70), m=st.integers(1, 20), group=st.integers(1, 80),
       bits=st.integers(2, 8), data=st.data(), sdt=st.sampled_from(["f16", "f32", "bf16"]),
       dt=st.sampled_from(["f32", "f16", "bf16"]), seed=st.integers(0, 2**31 - 1))
def test_dequant_shift(n, k, m, group, bits, data, sdt, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    cdt = data.draw(st.sampled_from([d for d in ("u2", "u3", "u4", "u5", "u6", "u7", "u8") if DTYPES[d].bits >= bits]))
    # codes of `bits` bits; or the storage's whole range, whose high bits make the sign field > 1 (positive there)
    wide = data.draw(st.booleans())
    ng = -(-k // group)
    q = codes(rng, cdt, (n, k), 0, None if wide else 2**bits - 1)
    s = floats(rng, sdt, (n, ng), 4.0)
    s.reshape(-1)[0] = DTYPES[sdt].np.type(np.finfo(np.float16).max)  # 2^-127 of a large scale: f32 subnormals
    gw, gl = graphs({"q": (cdt, (n, k)), "s": (sdt, (n, ng))}, f"dequant_shift(@q, @s) {{bits = {bits}, group = {group}, "
                    f"dtype = {dt}}}", dt, n, k, m, {"q": q, "s": s})
    x = x_for(rng, m, k)
    wref = check_weights(gw, x)
    check_linear(gl, x, as_f32(wref))


def test_dequant_shift_levels_and_wide_codes() -> None:
    """bits = 3 in u8 storage: codes 0..7 are +-1, 1/2, 1/4, 1/8; a code with higher bits set has a sign
    field > 1, which the reference reads as positive (sign == 1 alone is negative): 8 -> +1, 12 -> +1."""
    q = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 255]], np.uint8)
    gw, _ = graphs({"q": ("u8", (1, 12)), "s": ("f32", (1, 1))}, "dequant_shift(@q, @s) {bits = 3, group = 12, dtype = f32}",
                   "f32", 1, 12, 1, {"q": q, "s": np.ones((1, 1), np.float32)})
    w = check_weights(gw, np.zeros((1, 12), np.float32))
    assert w.tolist() == [[1, 0.5, 0.25, 0.125, -1, -0.5, -0.25, -0.125, 1, 1, 0.5, 0.125]]


# -- dequant_pow --------------------------------------------------------------------------------------------
@SLOW
@given(n=st.integers(1, 70), k=st.integers(1, 70), m=st.integers(1, 20), group=st.integers(1, 80),
       qdt=st.sampled_from(["i2", "i3", "i4", "i5", "i8", "tern"]),
       alpha=st.sampled_from([0.5, 0.75, 1.0, 1.3, 2.0, 3.0, 3.7]), sdt=st.sampled_from(["f16", "f32"]),
       dt=st.sampled_from(["f32", "f16"]), seed=st.integers(0, 2**31 - 1))
def test_dequant_pow(n, k, m, group, qdt, alpha, sdt, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    ng = -(-k // group)
    gw, gl = graphs({"q": (qdt, (n, k)), "s": (sdt, (n, ng))},
                    f"dequant_pow(@q, @s) {{group = {group}, alpha = {alpha!r}, dtype = {dt}}}", dt, n, k, m,
                    {"q": codes(rng, qdt, (n, k)), "s": floats(rng, sdt, (n, ng), 0.02)})
    x = x_for(rng, m, k)
    # exact but for codes wider than 5 bits with a non-integer alpha: exp2(alpha log2|q|) in f32, a few
    # f32 ulps off (which can flip an f16 rounding: one f16 ulp)
    approx = qdt == "i8" and not float(alpha).is_integer()
    wtol = (4e-6 if dt == "f32" else 2e-3) if approx else 0.0
    wref = check_weights(gw, x, rtol=wtol)
    check_linear(gl, x, as_f32(wref), wtol)


def test_dequant_pow_every_i8_level() -> None:
    """All 256 i8 codes, per alpha: within a few f32 ulps of the reference's f64 levels (exact at alpha 1, 2, 3)."""
    q = np.arange(-128, 128, dtype=np.int8).reshape(2, 128)
    for alpha in (0.5, 1.0, 2.0, 3.0, 3.7):
        gw, _ = graphs({"q": ("i8", (2, 128)), "s": ("f32", (2, 1))},
                       f"dequant_pow(@q, @s) {{group = 128, alpha = {alpha!r}, dtype = f32}}", "f32", 2, 128, 1,
                       {"q": q, "s": np.array([[1.0], [-0.25]], np.float32)})
        check_weights(gw, np.zeros((1, 128), np.float32), rtol=0.0 if alpha.is_integer() else 4e-6)


# -- dequant_bfp ---------------------------------------------------------------------------------------------
@SLOW
@given(n=st.integers(1, 70), k=st.integers(1, 70), m=st.integers(1, 20), block=st.integers(1, 80),
       mdt=st.sampled_from(["i2", "i3", "i4", "i5", "i8"]), dt=st.sampled_from(["f32", "f16", "bf16"]),
       seed=st.integers(0, 2**31 - 1))
def test_dequant_bfp(n, k, m, block, mdt, dt, seed) -> None:
    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    mant = codes(rng, mdt, (n, k))
    exp = codes(rng, "i8", (n, nb))  # every exponent, -128 (subnormal 2^-128) and 127 (inf) planted
    gw, gl = graphs({"m": (mdt, (n, k)), "e": ("i8", (n, nb))}, f"dequant_bfp(@m, @e) {{block = {block}, dtype = {dt}}}",
                    dt, n, k, m, {"m": mant, "e": exp})
    x = x_for(rng, m, k)
    with np.errstate(over="ignore"):
        check_weights(gw, x)
    exp = codes(rng, "i8", (n, nb), -30, 30)  # the linear's sums stay finite
    gw.weights["e"] = gl.weights["e"] = exp
    check_linear(gl, x, as_f32(ir.run(gw, [x])[0]))


def test_dequant_bfp_extreme_exponents() -> None:
    """ldexp at the ends of i8: 2^-128 is an f32 subnormal (its products round once), 1 * 2^127 is finite,
    2 * 2^127 is inf."""
    mant = np.array([[1, -1, 3, 127, -128, 1, 2, -2, 0, 5]], np.int8)
    exp = np.array([[-128, -128, -128, -128, 127, 127, 127, 127, -128, -1]], np.int8)
    gw, _ = graphs({"m": ("i8", (1, 10)), "e": ("i8", (1, 10))}, "dequant_bfp(@m, @e) {block = 1, dtype = f32}",
                   "f32", 1, 10, 1, {"m": mant, "e": exp})
    with np.errstate(over="ignore"):
        w = check_weights(gw, np.zeros((1, 10), np.float32))
    assert w[0, 0] == np.float32(2.0**-128) and np.isposinf(w[0, 6]) and np.isneginf(w[0, 4])


def test_add_sparse_still_has_no_triton_form() -> None:
    """add_sparse needs a search of its sorted index list per element: it is not a pointwise expression."""
    from backends.triton.exprs import EMITTERS

    assert "add_sparse" not in EMITTERS


# -- dfloat11_decode -----------------------------------------------------------------------------------------
def dfloat11_graph(n: int, k: int, block: int, bf16: np.ndarray, linear: bool = False) -> ir.Graph:
    """%w = dfloat11_decode of bf16 [n, k] coded in blocks of `block`; returns %w (bf16), or linear(%x, %w)."""
    from ir.ops.quant.dfloat11 import encode

    stream, offsets, lengths, sm = encode(bf16, block)
    tail = (f"  %wf: f32[{n}, {k}] = cast(%w) {{dtype = f32}}\n  %y: f32[3, {n}] = linear(%x, %wf)\n  return %y\n"
            if linear else "  return %w\n")
    g = ir.parse(f"graph @t(%x: f32[3, {k}]) {{\n  param @s: u8[{len(stream)}]\n  param @o: i64[{len(offsets)}]\n"
                 f"  param @l: u8[256]\n  param @m: u8[{n}, {k}]\n"
                 f"  %w: bf16[{n}, {k}] = dfloat11_decode(@s, @o, @l, @m) {{block = {block}}}\n" + tail + "}")
    g.weights.update({"s": stream, "o": offsets, "l": lengths, "m": sm})
    return g


def bf16_weights(rng: np.random.Generator, shape: tuple, spread: str) -> np.ndarray:
    """normal: a trained layer's few exponents; wide: random exponents with doubling frequencies (1, 1, 2,
    4, 8, ...: a code as deep as log2 of the size), so that in large weights the rare ones get codes longer
    than the decoder's 12-bit table;
    both with NaN payloads, infinities, -0 and subnormals planted."""
    from ir.ops.quant.dfloat11 import BF16

    if spread == "normal":
        w = (rng.standard_normal(shape) * 0.02).astype(BF16)
    else:
        size = int(np.prod(shape))
        counts = [1, 1] if size >= 2 else [size]
        while sum(counts) < size:
            counts.append(sum(counts))
        counts[-1] -= sum(counts) - size  # the most frequent exponent gives up the excess
        exps = rng.choice(np.arange(1, 255), len(counts), replace=False)
        e = rng.permutation(np.repeat(exps, counts)).reshape(shape)
        m = rng.integers(0, 1 << 16, shape)
        w = ((m & 0x807F) | (e << 7)).astype(np.uint16).view(BF16)
    bits = w.view(np.uint16).reshape(-1)
    special = np.array([0x7FC1, 0xFFAB, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x807F, 0x0000], np.uint16)
    if bits.size:
        at = rng.integers(0, bits.size, min(bits.size, len(special)))
        bits[at] = special[: len(at)]
    return w


@SLOW
@given(n=st.integers(0, 40), k=st.integers(1, 70), block=st.sampled_from([1, 3, 64, 1024]),
       spread=st.sampled_from(["normal", "wide"]), seed=st.integers(0, 2**31 - 1))
def test_dfloat11_decode_is_bit_exact(n, k, block, spread, seed) -> None:
    """The decoded bf16 bits equal the reference's (and so the coded weights') for every value: NaN
    payloads, infinities, -0, subnormals; ragged last blocks; codes longer than the lookup table."""
    rng = np.random.default_rng(seed)
    w = bf16_weights(rng, (n, k), spread)
    g = dfloat11_graph(n, k, block, w)
    (got,), (want,), exe = run_both(g, [np.zeros((3, k), np.float32)])
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=exe.source)
    np.testing.assert_array_equal(got.view(np.uint16), w.view(np.uint16))


def test_dfloat11_long_codes_take_the_canonical_path() -> None:
    """Codes of up to 14 bits: the 12-bit table alone cannot decode them."""
    from ir.ops.quant.dfloat11 import encode

    w = bf16_weights(np.random.default_rng(1), (64, 256), "wide")
    assert encode(w, 64)[2].max() > 12
    (got,), _, _ = run_both(dfloat11_graph(64, 256, 64, w), [np.zeros((3, 256), np.float32)])
    np.testing.assert_array_equal(got.view(np.uint16), w.view(np.uint16))


def test_dfloat11_linear_reads_the_decoded_weight() -> None:
    from ir.ops.quant.dfloat11 import BF16

    rng = np.random.default_rng(2)
    w = (rng.standard_normal((37, 70)) * 0.05).astype(BF16)
    x = x_for(rng, 3, 70)
    check_linear(dfloat11_graph(37, 70, 64, w, linear=True), x, w.astype(np.float32))


def test_dfloat11_corrupt_stream_fails_at_build() -> None:
    """The stream is checked once, when the module is built, with the reference's decoder: a corrupt one is
    a CompileError naming the node, not wrong weights."""
    w = bf16_weights(np.random.default_rng(3), (8, 50), "normal")
    g = dfloat11_graph(8, 50, 64, w)
    g.weights["o"] = g.weights["o"].copy()
    g.weights["o"][-1] += 3  # the last block starts 3 bits late
    with pytest.raises(ir.CompileError, match=r"%w = dfloat11_decode: dfloat11: the blocks do not end"):
        build(g)
