"""dequant_planes against a per-element loop, on ragged groups, K = 1..4 planes and f16/f32 scales."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir.dtypes import DTYPES

TESTED_OPS = {"dequant_planes"}
OP = ir.OPS["dequant_planes"]
TERN = DTYPES["tern"]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 20), st.integers(1, 12), st.sampled_from(["f16", "f32"]),
       st.integers(0, 2**31 - 1))
def test_dequant_planes_matches_loop(k: int, out: int, n: int, group: int, adt: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ng = -(-n // group)
    t = rng.integers(-1, 2, (k, out, n)).astype(np.int8)
    a = (rng.standard_normal((k, out, ng)) * 10.0 ** rng.integers(-3, 3)).astype(DTYPES[adt].np)
    attrs = OP.normalize_attrs({"group": group})
    assert OP.infer([ir.TensorType(TERN, t.shape), ir.TensorType(DTYPES[adt], a.shape)], attrs) == \
        ir.TensorType(DTYPES["f32"], (out, n))
    got = OP.reference([t, a], attrs)
    want = np.zeros((out, n), np.float64)
    for o in range(out):
        for i in range(n):
            for p in range(k):
                want[o, i] += float(a[p, o, i // group]) * float(t[p, o, i])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(a.astype(np.float64)).max())


@pytest.mark.parametrize("t, a, group, msg", [
    ("i2[2, 4, 10]", "f16[2, 4, 3]", 4, "planes must be tern"),
    ("tern[4, 10]", "f16[4, 3]", 4, "static 3-D"),
    ("tern[2, 4, 10]", "f16[1, 4, 3]", 4, "must be [2, 4, 3]"),
    ("tern[2, 4, 10]", "f16[2, 4, 2]", 4, "must be [2, 4, 3]"),
    ("tern[2, 4, 10]", "i8[2, 4, 3]", 4, "floating point"),
    ("tern[2, 4, 10]", "f16[2, 4, 3]", 0, "group = 0 is outside [1, "),  # its declared bounds (ir/ops/base.py)
])
def test_dequant_planes_rejects(t: str, a: str, group: int, msg: str) -> None:
    text = (f"graph @g() {{\n  param @t: {t}\n  param @a: {a}\n"
            f"  %w: f32[4, 10] = dequant_planes(@t, @a) {{group = {group}}}\n  return %w\n}}\n")
    with pytest.raises(ir.ParseError, match=msg.replace("[", r"\[")):  # the parser verifies
        ir.parse(text)


def test_quant_planes_ir_runs() -> None:
    g = ir.parse((Path(__file__).parent / "quant_planes.ir").read_text())
    assert ir.parse(str(g)) == g
    rng = np.random.default_rng(0)
    g.weights = {k: rng.integers(-1, 2, t.shape).astype(np.int8) if t.dtype == TERN
                 else rng.standard_normal(t.shape).astype(t.dtype.np) for k, t in g.params.items()}
    ir.verify(g)
    y, z = ir.run(g, [np.ones((3, 10), np.float32)])
    w = np.einsum("koi,koi->oi", g.weights["w.t"], np.repeat(g.weights["w.alpha"].astype(np.float32), 4, -1)[..., :10])
    np.testing.assert_allclose(y, np.ones((3, 10)) @ w.T, rtol=1e-5)
    assert z.shape == (3, 5)
