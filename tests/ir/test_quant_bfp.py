"""dequant_bfp against a per-element loop, on ragged blocks and extreme exponents."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_bfp"}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 8), st.sampled_from(["i2", "i3", "i4", "i8"]),
       st.sampled_from([(-8, 8), (-128, -100), (100, 127)]), st.integers(0, 2**31 - 1))
def test_dequant_bfp_matches_loop(out: int, n: int, block: int, dt: str, erange: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = DTYPES[dt]
    lo, hi = (d.lo, d.hi) if d.packed else (-128, 127)
    nb = -(-n // block)
    m = rng.integers(lo, hi + 1, (out, n)).astype(d.np)
    e = rng.integers(erange[0], erange[1] + 1, (out, nb)).astype(np.int8)
    op = ir.OPS["dequant_bfp"]
    attrs = op.normalize_attrs({"block": block})
    assert op.infer([ir.TensorType(d, m.shape), ir.TensorType(DTYPES["i8"], e.shape)], attrs) == ir.TensorType(DTYPES["f32"], (out, n))
    with np.errstate(over="ignore"):  # 127 * 2^127 is inf in f32, as in the interpreter
        got = op.reference([m, e], attrs)
    want = np.empty((out, n), np.float64)
    for o in range(out):
        for i in range(n):
            want[o, i] = int(m[o, i]) * 2.0 ** int(e[o, i // block])
    with np.errstate(over="ignore"):
        want32 = want.astype(np.float32)
    np.testing.assert_array_equal(got, want32)


@pytest.mark.parametrize("mant, exp, msg", [("u4", "i8", "signed"), ("i16", "i8", "signed"), ("tern", "i8", "signed"),
                                            ("i4", "i4", "exponents must be i8")])
def test_dequant_bfp_rejects_bad_parts(mant: str, exp: str, msg: str) -> None:
    types = [ir.TensorType(DTYPES[mant], (2, 4)), ir.TensorType(DTYPES[exp], (2, 1))]
    with pytest.raises(ValueError, match=msg):
        ir.OPS["dequant_bfp"].infer(types, {"block": 4, "dtype": DTYPES["f32"]})


def test_dequant_bfp_rejects_wrong_block_count() -> None:
    types = [ir.TensorType(DTYPES["i4"], (2, 10)), ir.TensorType(DTYPES["i8"], (2, 2))]
    with pytest.raises(ValueError, match=r"must be \[2, 3\]"):
        ir.OPS["dequant_bfp"].infer(types, {"block": 4, "dtype": DTYPES["f32"]})
