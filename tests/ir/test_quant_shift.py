"""dequant_shift against a per-element loop over the documented code layout (sign bit + exponent)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_shift"}
STORAGE = {2: ["u2", "u8"], 3: ["u3", "u4"], 4: ["u4", "u8"], 5: ["u8"], 8: ["u8"]}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 8), st.sampled_from(sorted(STORAGE)), st.data(),
       st.sampled_from(["f16", "f32"]), st.integers(0, 2**31 - 1))
def test_dequant_shift_matches_loop(out: int, n: int, group: int, bits: int, data: st.DataObject, sdt: str,
                                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = DTYPES[data.draw(st.sampled_from(STORAGE[bits]))]
    ng = -(-n // group)
    code = rng.integers(0, 2**bits, (out, n)).astype(d.np)
    s = (rng.standard_normal((out, ng)) * 4).astype(DTYPES[sdt].np)
    op = ir.OPS["dequant_shift"]
    attrs = op.normalize_attrs({"bits": bits, "group": group})
    types = [ir.TensorType(d, code.shape), ir.TensorType(DTYPES[sdt], s.shape)]
    assert op.infer(types, attrs) == ir.TensorType(DTYPES["f32"], (out, n))
    got = op.reference([code, s], attrs)
    want = np.empty((out, n), np.float64)
    for o in range(out):
        for i in range(n):
            c = int(code[o, i])
            sign, p = c // 2 ** (bits - 1), c % 2 ** (bits - 1)
            want[o, i] = float(s[o, i // group]) * (-1.0) ** sign * 2.0**-p
    np.testing.assert_array_equal(got, want.astype(np.float32))  # a power-of-two multiply is exact


def test_dequant_shift_levels_have_no_zero() -> None:
    code = np.arange(8, dtype=np.uint8)[None]
    w = ir.OPS["dequant_shift"].reference([code, np.ones((1, 1), np.float16)], {"bits": 3, "group": 8, "dtype": DTYPES["f32"]})
    assert w.tolist() == [[1, 0.5, 0.25, 0.125, -1, -0.5, -0.25, -0.125]]


@pytest.mark.parametrize("code, bits, msg", [("i4", 3, "unsigned"), ("u3", 4, "at least 4 bits"), ("u8", 9, "bits must be 2..8")])
def test_dequant_shift_rejects_bad_codes(code: str, bits: int, msg: str) -> None:
    types = [ir.TensorType(DTYPES[code], (2, 4)), ir.TensorType(DTYPES["f16"], (2, 1))]
    with pytest.raises(ValueError, match=msg):
        ir.OPS["dequant_shift"].infer(types, {"bits": bits, "group": 4, "dtype": DTYPES["f32"]})
