"""dequant_affine against a per-element loop, on ragged groups, all-zero rows and outliers."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_affine"}


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 20), st.integers(1, 8), st.sampled_from(["i4", "u3", "i8", "u2"]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_dequant_affine_matches_loop(out: int, n: int, group: int, dt: str, zero: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = DTYPES[dt]
    ng = -(-n // group)
    q = rng.integers(d.lo if d.lo or d.kind == "uint" else -128, (d.hi if d.hi else 127) + 1, (out, n)).astype(d.np)
    s = rng.standard_normal((out, ng)).astype(np.float16)
    z = rng.integers(0, 4, (out, ng)).astype(np.float16) if zero else None
    op = ir.OPS["dequant_affine"]
    attrs = op.normalize_attrs({"group": group})
    types = [ir.TensorType(d, q.shape), ir.TensorType(DTYPES["f16"], s.shape)] + ([ir.TensorType(DTYPES["f16"], z.shape)] if zero else [])
    assert op.infer(types, attrs) == ir.TensorType(DTYPES["f32"], (out, n))
    got = op.reference([q, s] + ([z] if zero else []), attrs)
    want = np.empty((out, n), np.float32)
    for o in range(out):
        for i in range(n):
            zz = float(z[o, i // group]) if zero else 0.0
            want[o, i] = (float(q[o, i]) - zz) * float(s[o, i // group])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
