"""dequant_codebook, add_sparse and sparse_linear against explicit loops; the sparse ops refuse bad indices at run time."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_codebook", "add_sparse", "sparse_linear"}
T = ir.TensorType


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.sampled_from(["u2", "u3", "u4", "u8"]), st.sampled_from(["f16", "f32"]),
       st.integers(0, 2**31 - 1))
def test_dequant_codebook_matches_loop(out: int, n: int, dt: str, book_dt: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = DTYPES[dt]
    codes = rng.integers(0, 2**d.bits, (out, n)).astype(d.np)
    book = rng.standard_normal((out, 2**d.bits)).astype(DTYPES[book_dt].np)
    op = ir.OPS["dequant_codebook"]
    attrs = op.normalize_attrs({})
    assert op.infer([T(d, codes.shape), T(DTYPES[book_dt], book.shape)], attrs) == T(DTYPES["f32"], (out, n))
    got = op.reference([codes, book], attrs)
    want = np.empty((out, n), np.float32)
    for o in range(out):
        for i in range(n):
            want[o, i] = float(book[o, int(codes[o, i])])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.data())
def test_add_sparse_matches_loop(out: int, n: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    w = rng.standard_normal((out, n)).astype(np.float32)
    picked = data.draw(st.sets(st.integers(0, out * n - 1), max_size=out * n))
    idx = np.array(sorted(picked), np.int32)
    val = rng.standard_normal(idx.size).astype(np.float16)
    op = ir.OPS["add_sparse"]
    t = op.infer([T(DTYPES["f32"], w.shape), T(DTYPES["i32"], idx.shape), T(DTYPES["f16"], val.shape)], {})
    assert t == T(DTYPES["f32"], (out, n))
    got = op.reference([w, idx, val], {})
    want = w.copy()
    for k in range(idx.size):
        o, i = divmod(int(idx[k]), n)
        want[o, i] = np.float32(want[o, i] + np.float32(val[k]))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(w, want if idx.size == 0 else w)  # the input is not changed


@pytest.mark.parametrize("idx", [[3, 1], [1, 1], [-1, 2], [0, 12], [12]])
def test_add_sparse_refuses_bad_indices(idx: list[int]) -> None:
    """Unsorted, repeated, negative (numpy would wrap it) and out-of-range indices all raise."""
    w, i = np.zeros((3, 4), np.float32), np.array(idx, np.int32)
    with pytest.raises(ValueError, match="add_sparse: indices"):
        ir.OPS["add_sparse"].reference([w, i, np.ones(i.size, np.float16)], {})


def test_dequant_codebook_refuses_out_of_range_codes() -> None:
    with pytest.raises(ValueError, match="codes outside"):
        ir.OPS["dequant_codebook"].reference([np.full((1, 2), 9, np.uint8), np.zeros((1, 8), np.float16)], {"dtype": DTYPES["f32"]})


@pytest.mark.parametrize("types, msg", [
    ((T(DTYPES["i4"], (2, 3)), T(DTYPES["f16"], (2, 16))), "codes must be u2..u8"),
    ((T(DTYPES["u4"], (2, 3)), T(DTYPES["f16"], (2, 8))), r"must be float\[2, 16\]"),
    ((T(DTYPES["u3"], (2, 3)), T(DTYPES["i8"], (2, 8))), r"must be float\[2, 8\]"),
])
def test_dequant_codebook_type_errors(types: tuple, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ir.OPS["dequant_codebook"].infer(list(types), {"dtype": DTYPES["f32"]})


@pytest.mark.parametrize("types, msg", [
    ((T(DTYPES["f32"], (2, 3)), T(DTYPES["i64"], (2,)), T(DTYPES["f16"], (2,))), "idx must be i32"),
    ((T(DTYPES["f32"], (2, 3)), T(DTYPES["i32"], (2,)), T(DTYPES["f16"], (3,))), "val"),
    ((T(DTYPES["f32"], (2, 3)), T(DTYPES["i32"], (7,)), T(DTYPES["f16"], (7,))), "cannot fit"),
    ((T(DTYPES["i8"], (2, 3)), T(DTYPES["i32"], (1,)), T(DTYPES["f16"], (1,))), "static float"),
])
def test_add_sparse_type_errors(types: tuple, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ir.OPS["add_sparse"].infer(list(types), {})


def test_the_ir_file_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_codebook.ir").read_text())
    rng = np.random.default_rng(0)
    for k, t in g.params.items():
        if k.endswith(".idx"):
            g.weights[k] = np.sort(rng.choice(t.shape[0] * 7, t.shape[0], replace=False)).astype(np.int32)
        elif t.dtype.packed:
            g.weights[k] = rng.integers(t.dtype.lo, t.dtype.hi + 1, t.shape).astype(t.dtype.np)
        else:
            g.weights[k] = rng.standard_normal(t.shape).astype(t.dtype.np)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y, z, t, sp = ir.run(ir.verify(g), [x])
    wt = g.weights
    w = np.take_along_axis(wt["w.book"].astype(np.float32), wt["w.codes"].astype(np.intp), 1)
    w.reshape(-1)[wt["w.idx"]] += wt["w.val"].astype(np.float32)
    v = wt["v"].copy()
    v.reshape(-1)[wt["v.idx"]] += wt["v.val"].astype(np.float32)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, x @ np.take_along_axis(wt["u.book"], wt["u.codes"].astype(np.intp), 1).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t, x @ v.T, rtol=1e-5, atol=1e-5)
    s = np.zeros(40, np.float32)
    s[wt["w.idx"]] = wt["w.val"]
    np.testing.assert_allclose(sp, x @ s.reshape(4, 10).T, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 20), st.integers(0, 3), st.floats(0.0, 1.0), st.sampled_from(["f16", "f32"]),
       st.integers(0, 2**31 - 1))
def test_sparse_linear_matches_loop(rows: int, cols: int, lead: int, density: float, val_dt: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(rng.random(rows * cols) < density).astype(np.int32)
    val = rng.standard_normal(idx.size).astype(DTYPES[val_dt].np)
    x = rng.standard_normal((2,) * lead + (cols,)).astype(np.float32)
    op = ir.OPS["sparse_linear"]
    attrs = op.normalize_attrs({"rows": rows, "cols": cols})
    assert op.infer([T(DTYPES["f32"], x.shape), T(DTYPES["i32"], idx.shape), T(DTYPES[val_dt], val.shape)], attrs) == \
        T(DTYPES["f32"], x.shape[:-1] + (rows,))
    got = op.reference([x, idx, val], attrs)
    want = np.zeros(x.shape[:-1] + (rows,))
    for k, f in enumerate(idx):
        want[..., f // cols] += float(val[k]) * x[..., f % cols].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="sparse_linear: indices"):
        op.reference([x, np.array([rows * cols], np.int32), np.ones(1, np.float32)], attrs)
