"""lut_linear (T-MAC lookup tables over packed 0/1 bit-planes) against independent formulations.

* table = "f32": the dense product x @ W.T + bias, W rebuilt from the planes, coef and offs;
* table = "i8" / "i16": a slow re-implementation of the documented quantized-table semantics
  (tables of every 4 activations summed left to right in f32, s = max|T| / qmax per block of
  tgroup activations, qmax = 127 / 32767, q = rint(T / s), integer block sums scaled once) built
  from the *unpacked* planes;
  and the error contract against the exact result: at most half a step s / 2 per lookup.
* pack_bitplanes / unpack_bitplanes round-trip, and the documented tile layout, element by element.
* NaN / Inf: a non-finite activation makes every output of its token non-finite (NaN for NaN);
  the other tokens are untouched. (That is what `linear` does too: x_i * 0 is NaN for x_i = inf.)
  The reference gets this from the offset term, sum_g offs[g, o] * (group sum of x), which is
  computed even when offs is all zero (0 * inf = NaN).
* infer() rejects each bad operand or attribute with a message that names it.

Not covered: quantized tables on a block whose activations are all subnormal-small (max|T|
below ~1e-36): s = max|T| / qmax loses precision there (codes are clipped to +-qmax, so no wrap).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.ops.quant.affine import expand_groups
from ir.ops.quant.lut import TILE, n_tables, pack_bitplanes, pairs, tiles, unpack_bitplanes, unpack_nibbles

TESTED_OPS = {"lut_linear"}
OP = ir.OPS["lut_linear"]
F32 = np.float32


# -- data -----------------------------------------------------------------------------------------
@st.composite
def layers(draw: st.DrawFn, max_out: int = 150, max_cols: int = 200) -> dict:
    """A random layer: P planes, out rows (never a multiple of 64), cols (never a multiple of 4),
    a group that is a multiple of tgroup or covers the row, planes with all-zero / all-one rows,
    coef and offs (zero, as for trit-planes, or not) and an optional bias."""
    P = draw(st.integers(1, 6))
    out = draw(st.integers(1, max_out).map(lambda o: o - (o % TILE == 0)))
    cols = draw(st.integers(1, max_cols).map(lambda c: c + (c % 4 == 0)))
    tg = draw(st.sampled_from([8, 16, 64, 128]))
    group = draw(st.one_of(st.integers(1, 4).map(lambda k: k * tg), st.integers(cols, cols + 9)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    ng = -(-cols // group)
    B = (rng.random((P, out, cols)) < draw(st.sampled_from([0.05, 0.5, 0.95]))).astype(np.uint8)
    for o in range(out):
        kind = draw(st.sampled_from(["rand"] * 4 + ["zero", "one"])) if o < 4 else "rand"
        if kind != "rand":
            B[:, o] = kind == "one"
    coef = (rng.standard_normal((P, ng, out)) * 10.0 ** rng.integers(-3, 3)).astype(F32)
    offs = np.zeros((ng, out), F32) if draw(st.booleans()) else (rng.standard_normal((ng, out)) * coef.std()).astype(F32)
    bias = rng.standard_normal(out).astype(F32) if draw(st.booleans()) else None
    return dict(P=P, out=out, cols=cols, group=group, tgroup=tg, B=B, coef=coef, offs=offs, bias=bias)


@st.composite
def activations(draw: st.DrawFn, cols: int) -> np.ndarray:
    """x [*lead, N, cols], N 1..4, lead () / (2,) / (1, 3): Gaussian at a random scale, with zeros,
    large outliers (x1000) and all-zero tokens."""
    lead = draw(st.sampled_from([(), (2,), (1, 3)]))
    N = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((*lead, N, cols)) * 10.0 ** rng.integers(-3, 3)
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
    x[rng.random(x.shape) < 0.02] *= 1000.0
    flat = x.reshape(-1, cols)
    flat[rng.random(len(flat)) < 0.25] = 0.0  # all-zero tokens
    return x.astype(F32)


def operands(L: dict, x: np.ndarray) -> list[np.ndarray]:
    return [x, pack_bitplanes(L["B"]), L["coef"], L["offs"]] + ([] if L["bias"] is None else [L["bias"]])


def attrs(L: dict, table: str) -> dict:
    return OP.normalize_attrs({"cols": L["cols"], "group": L["group"], "tgroup": L["tgroup"], "table": table})


def dense(L: dict) -> np.ndarray:
    """W [out, cols] in float64: sum_p coef[p] B_p + offs, each group's value over its columns."""
    g, c = L["group"], L["cols"]
    W = sum(expand_groups(L["coef"][p].T.astype(np.float64), g, c) * L["B"][p] for p in range(L["P"]))
    return W + expand_groups(L["offs"].T.astype(np.float64), g, c)


def magnitude(L: dict, x: np.ndarray) -> np.ndarray:
    """sum of |terms| of each output: the scale of its float rounding error."""
    g, c = L["group"], L["cols"]
    A = sum(expand_groups(np.abs(L["coef"][p].T.astype(np.float64)), g, c) * L["B"][p] for p in range(L["P"]))
    A = A + expand_groups(np.abs(L["offs"].T.astype(np.float64)), g, c)
    return np.abs(x.astype(np.float64)) @ A.T + (0 if L["bias"] is None else np.abs(L["bias"].astype(np.float64)))


def slow_quantized(L: dict, x: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The quantized-table semantics written out: per token and per block of tgroup activations, the
    16-entry table of every 4 activations (f32, set bits summed left to right), the block scale
    s = max|T| / qmax (1 if the block is all zero), codes rint(T / s); each row's lookups of a block
    are summed as integers, scaled by s and by the coefficient of the block's group. Returns
    (y, bound, magnitude): bound is the documented error against exact tables, half a step per
    lookup, sum_p sum_b |coef| * (tables in b) * s_b / 2."""
    out, cols, group, tg = L["out"], L["cols"], L["group"], L["tgroup"]
    B, coef, offs = L["B"], L["coef"].astype(np.float64), L["offs"].astype(np.float64)
    X = x.reshape(-1, cols)
    pw = np.array([1, 2, 4, 8])
    y, bound, mag = (np.zeros((len(X), out)) for _ in range(3))
    for n, xn in enumerate(X):
        for c0 in range(0, cols, tg):  # one table block
            tabs, nibs = [], []
            for j0 in range(c0, min(c0 + tg, cols), 4):
                xs = [xn[j0 + c] if j0 + c < cols else F32(0) for c in range(4)]
                tab = []
                for m in range(16):
                    acc = F32(0)
                    first = True
                    for c in range(4):
                        if m >> c & 1:
                            acc = xs[c] if first else F32(acc + xs[c])
                            first = False
                    tab.append(acc)
                tabs.append(np.array(tab, F32))
                w = B[:, :, j0:j0 + 4]  # [P, out, <= 4]
                nibs.append((w * pw[: w.shape[2]]).sum(-1))
            amax = max(float(np.abs(t).max()) for t in tabs)
            s = F32(F32(amax) / F32(qmax)) if amax > 0 else F32(1)
            q = [np.rint(t / s).astype(np.int64) for t in tabs]  # f32 division, then round half to even
            assert max(int(np.abs(v).max()) for v in q) <= qmax
            isum = sum(qt[nb] for qt, nb in zip(q, nibs))  # [P, out] exact integers
            cg = coef[:, c0 // group, :]  # the block lies in one column group
            y[n] += (cg * float(s) * isum).sum(0)
            bound[n] += np.abs(cg).sum(0) * len(tabs) * float(s) / 2
            mag[n] += (np.abs(cg) * float(s) * np.abs(isum)).sum(0)
        for gi in range(-(-cols // group)):
            xs = xn[gi * group:(gi + 1) * group].astype(np.float64).sum()
            y[n] += offs[gi] * xs
            mag[n] += np.abs(offs[gi]) * np.abs(xn[gi * group:(gi + 1) * group].astype(np.float64)).sum()
    if L["bias"] is not None:
        y += L["bias"]
        mag += np.abs(L["bias"])
    shape = (*x.shape[:-1], out)
    return y.reshape(shape), bound.reshape(shape), mag.reshape(shape)


def check_infer(L: dict, x: np.ndarray, table: str) -> None:
    types = [ir.TensorType(ir.dtype({"float32": "f32", "uint8": "u8"}[a.dtype.name]), a.shape) for a in operands(L, x)]
    assert OP.infer(types, attrs(L, table)) == ir.TensorType(ir.dtype("f32"), (*x.shape[:-1], L["out"]))


# -- the reference ------------------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(st.data())
def test_f32_tables_equal_the_dense_product(data: st.DataObject) -> None:
    L = data.draw(layers())
    x = data.draw(activations(L["cols"]))
    check_infer(L, x, "f32")
    got = OP.reference(operands(L, x), attrs(L, "f32"))
    assert got.dtype == F32 and got.shape == (*x.shape[:-1], L["out"])
    want = x.astype(np.float64) @ dense(L).T + (0 if L["bias"] is None else L["bias"])
    # rtol 1e-5 of the sum of |terms| (f32 tables and group sums round at ~6e-8 relative per add;
    # a plain rtol on y would fail where the terms cancel)
    err = np.abs(got - want)
    assert (err <= 1e-5 * magnitude(L, x) + 1e-30).all(), err.max()
    zero = ~x.any(-1)
    np.testing.assert_array_equal(got[zero], np.broadcast_to(0 if L["bias"] is None else L["bias"], got[zero].shape))


@pytest.mark.parametrize("table, qmax", [("i8", 127), ("i16", 32767)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_quantized_tables_match_the_slow_semantics_and_the_half_step_bound(table: str, qmax: int,
                                                                           data: st.DataObject) -> None:
    L = data.draw(layers(max_out=100, max_cols=120))
    x = data.draw(activations(L["cols"]))
    check_infer(L, x, table)
    got = OP.reference(operands(L, x), attrs(L, table))
    want, bound, mag = slow_quantized(L, x, qmax)
    # the integer sums are exact in both; only the f64 order of the scaled sums, the f32 group
    # sums of x for the offsets and the final f32 rounding differ
    err = np.abs(got - want)
    assert (err <= 2e-6 * mag + 1e-30).all(), err.max()
    # against exact (f32) tables: at most half a quantization step per lookup (+ float rounding)
    exact = OP.reference(operands(L, x), attrs(L, "f32"))
    assert (np.abs(got - exact) <= bound * (1 + 1e-4) + 1e-5 * magnitude(L, x) + 1e-30).all()


@pytest.mark.parametrize("table", ["f32", "i8", "i16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("zero_offs", [True, False])
def test_non_finite_activations_propagate(table: str, bad: float, zero_offs: bool) -> None:
    """A NaN (or +-inf) activation makes every output of its token NaN (non-finite), also of rows
    whose bits never touch that column and with all-zero offsets; other tokens are unchanged."""
    rng = np.random.default_rng(0)
    P, out, cols, group = 2, 70, 37, 16
    B = (rng.random((P, out, cols)) < 0.5).astype(np.uint8)
    B[:, :3] = 0  # rows that read nothing: only the offset term can carry the NaN
    B[:, 5, 9] = 0  # a row that does not read the bad column
    L = dict(P=P, out=out, cols=cols, group=group, tgroup=16, B=B, coef=rng.standard_normal((P, 3, out)).astype(F32),
             offs=np.zeros((3, out), F32) if zero_offs else rng.standard_normal((3, out)).astype(F32),
             bias=rng.standard_normal(out).astype(F32))
    x = rng.standard_normal((3, cols)).astype(F32)
    x[1, 9] = bad
    with np.errstate(all="ignore"):  # as ir.run: IEEE semantics, no warnings (NaN -> int8 is a cast warning)
        y = OP.reference(operands(L, x), attrs(L, table))
        clean = OP.reference(operands(L, x[[0, 2]]), attrs(L, table))
        lin = ir.OPS["linear"].reference([x, dense(L).astype(F32), L["bias"]], {})
    assert (np.isnan(y[1]) if np.isnan(bad) else ~np.isfinite(y[1])).all(), y[1]
    assert (~np.isfinite(lin[1])).all()  # what linear(x, dequant(...)) gives
    np.testing.assert_allclose(y[[0, 2]], clean, rtol=1e-6)


def test_quant_lut_ir_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_lut.ir").read_text())
    assert ir.parse(str(g)) == g
    rng = np.random.default_rng(0)
    planes = {"w": rng.random((2, 5, 10)) < 0.5, "v": rng.random((3, 70, 10)) < 0.5}
    g.weights = {k: rng.standard_normal(t.shape).astype(F32) for k, t in g.params.items()}
    g.weights.update({f"{k}.lut.bits": pack_bitplanes(B.astype(np.uint8)) for k, B in planes.items()})
    ir.verify(g)
    x = rng.standard_normal((2, 3, 10)).astype(F32)
    y, z = ir.run(g, [x])
    for k, yy, group, bias in (("w", y, 16, g.weights["b"]), ("v", z, 8, 0.0)):
        L = dict(P=len(planes[k]), B=planes[k].astype(np.uint8), cols=10, group=group, coef=g.weights[f"{k}.lut.coef"],
                 offs=g.weights[f"{k}.lut.offs"], bias=None)
        want = x.astype(np.float64) @ dense(L).T + bias
        tol = 1e-5 if k == "v" else 0.05  # v: exact f32 tables; w: int8 tables (the bound is tested above)
        np.testing.assert_allclose(yy, want, rtol=0, atol=tol * np.abs(want).max())


# -- packing ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 200), st.integers(1, 70), st.integers(0, 2**31 - 1))
def test_pack_unpack_roundtrip_and_layout(P: int, out: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    B = (rng.random((P, out, cols)) < rng.random()).astype(np.uint8)
    bits = pack_bitplanes(B)
    J = n_tables(cols)
    K = pairs(cols)
    assert K == -(-J // 2)
    assert bits.dtype == np.uint8 and bits.shape == (P, tiles(out), K, 64) and bits.flags.c_contiguous
    back = unpack_bitplanes(bits, out, cols)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, B)
    # the documented layout, element by element: byte bits[p, t, k, b] is row 64t + b; its low nibble
    # indexes table 2k, its high one table 2k + 1; nibble bit c is column 4j + c; rows, columns and
    # tables past the matrix are 0 bits
    full = np.zeros((P, tiles(out) * TILE, K * 8), np.uint8)
    full[:, :out, :cols] = B
    for p in range(P):
        for t in range(tiles(out)):
            for k in range(K):
                for b in range(64):
                    lo = sum(int(full[p, 64 * t + b, 8 * k + c]) << c for c in range(4))
                    hi = sum(int(full[p, 64 * t + b, 8 * k + 4 + c]) << c for c in range(4))
                    assert bits[p, t, k, b] == lo | hi << 4
    nib = unpack_nibbles(bits, out)
    np.testing.assert_array_equal(nib, (full[:, :out].reshape(P, out, 2 * K, 4) << np.arange(4)).sum(-1))


# -- type errors --------------------------------------------------------------------------------
GOOD = dict(x="f32[3, 10]", bits="u8[2, 1, 2, 64]", coef="f32[2, 1, 5]", offs="f32[1, 5]", bias="f32[5]",
            cols=10, group=16, tgroup=64, table='"i8"')


def text(**kw) -> str:
    a = {**GOOD, **kw}
    b = a["bias"] is not None
    return (f"graph @g(%x: {a['x']}) {{\n  param @bits: {a['bits']}\n  param @coef: {a['coef']}\n"
            f"  param @offs: {a['offs']}\n" + (f"  param @b: {a['bias']}\n" if b else "")
            + f"  %y: f32[3, 5] = lut_linear(%x, @bits, @coef, @offs{', @b' if b else ''}) "
            f"{{cols = {a['cols']}, group = {a['group']}, tgroup = {a['tgroup']}, table = {a['table']}}}\n"
            "  return %y\n}\n")


def test_good_operands_parse() -> None:
    assert ir.parse(text()).node("y").type == ir.TensorType(ir.dtype("f32"), (3, 5))
    assert ir.parse(text(bias=None, group=8, tgroup=8, offs="f32[2, 5]", coef="f32[2, 2, 5]"))
    assert ir.parse(text(x="f32[10]", bias=None).replace("f32[3, 5] = lut", "f32[5] = lut"))


@pytest.mark.parametrize("kw, msg", [
    (dict(x="f16[3, 10]"), "x must be f32[..., 10], got f16[3, 10]"),
    (dict(x="f32[3, 12]"), "x must be f32[..., 10], got f32[3, 12]"),
    (dict(x="f32[]"), "x must be f32[..., 10]"),
    (dict(table='"f16"'), "table must be one of ('i8', 'i16', 'f32'), got 'f16'"),
    (dict(tgroup=4), "tgroup must be a multiple of 8 in 8..1024, got 4"),
    (dict(tgroup=12), "tgroup must be a multiple of 8 in 8..1024, got 12"),
    (dict(tgroup=0), "tgroup must be a multiple of 8 in 8..1024, got 0"),
    (dict(tgroup=2048), "tgroup must be a multiple of 8 in 8..1024, got 2048"),
    (dict(group=3), "group 3 must be a multiple of tgroup 64"),  # group=0 is out of its declared bounds: tests/ir/test_verify.py
    (dict(group=8, coef="f32[2, 2, 5]", offs="f32[2, 5]"), "group 8 must be a multiple of tgroup 64 (or cover the row, >= 10)"),
    (dict(group=4, tgroup=8, coef="f32[2, 3, 5]", offs="f32[3, 5]"), "group 4 must be a multiple of tgroup 8"),
    (dict(bits="i8[2, 1, 2, 64]"), "bits must be u8[planes, tiles, 2, 64], got i8[2, 1, 2, 64]"),
    (dict(bits="u8[2, 1, 3, 64]"), "bits must be u8[planes, tiles, 2, 64], got u8[2, 1, 3, 64]"),
    (dict(bits="u8[2, 1, 3, 32]"), "bits must be u8[planes, tiles, 2, 64], got u8[2, 1, 3, 32]"),
    (dict(bits="u8[1, 2, 64]"), "bits must be u8[planes, tiles, 2, 64], got u8[1, 2, 64]"),
    (dict(coef="f16[2, 1, 5]"), "coef must be f32[2, 1, out], got f16[2, 1, 5]"),
    (dict(coef="f32[3, 1, 5]"), "coef must be f32[2, 1, out], got f32[3, 1, 5]"),
    (dict(coef="f32[2, 2, 5]"), "coef must be f32[2, 1, out], got f32[2, 2, 5]"),
    (dict(coef="f32[2, 5]"), "coef must be f32[2, 1, out]"),
    (dict(coef="f32[2, 1, 65]", offs="f32[1, 65]", bias="f32[65]"), "1 tiles of 64 rows cannot hold 65 rows"),
    (dict(bits="u8[2, 2, 2, 64]"), "2 tiles of 64 rows cannot hold 5 rows"),
    (dict(offs="f32[1, 6]"), "offs must be f32[1, 5], got f32[1, 6]"),
    (dict(offs="f32[2, 5]"), "offs must be f32[1, 5], got f32[2, 5]"),
    (dict(offs="f16[1, 5]"), "offs must be f32[1, 5], got f16[1, 5]"),
    (dict(bias="f32[6]"), "bias must be f32[5], got f32[6]"),
    (dict(bias="f16[5]"), "bias must be f32[5], got f16[5]"),
])
def test_lut_linear_rejects(kw: dict, msg: str) -> None:
    with pytest.raises(ir.ParseError, match="lut_linear: " + re.escape(msg)):  # the parser verifies
        ir.parse(text(**kw))


def test_a_group_wider_than_the_row_allocates_only_the_row() -> None:
    """lut_linear's reference padded x to `group` columns: group = 2**31 - 1 asked for 48 GiB."""
    text = (Path(__file__).parent / "quant_lut.ir").read_text()
    wide = ir.parse(text.replace("group = 16", "group = 2147483647"))
    rng = np.random.default_rng(0)
    wide.weights = {k: rng.integers(0, 256, t.shape).astype(np.uint8) if t.dtype.name == "u8"
                    else rng.standard_normal(t.shape).astype(np.float32) for k, t in wide.params.items()}
    xs = [rng.standard_normal((2, 3, 10)).astype(np.float32)]
    narrow = ir.parse(text)  # group 16 >= cols 10 is one group as well: the same result
    narrow.weights = wide.weights
    np.testing.assert_array_equal(ir.run(wide, xs)[0], ir.run(narrow, xs)[0])
