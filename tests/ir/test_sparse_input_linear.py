"""sparse_input_linear: its type rule names what is wrong, and its reference is the composition it
stands for, linear(sparsify(x, scale), wt.T) + bias, run as a graph (bit for bit: the same sums).
(tests/ir/test_ops_vs_torch.py checks it against a pairwise torch spelling of the selection rule.)"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir

OP = ir.OPS["sparse_input_linear"]
T = ir.TensorType
F32, F16 = ir.dtype("f32"), ir.dtype("f16")


@pytest.mark.parametrize("types, attrs, msg", [
    ([T(F32, ("s0", 8)), T(F32, (8,)), T(F32, (7, 5))], {}, r"input f32\[s0, 8\] does not match the transposed weight f32\[7, 5\] \(needs wt\[8, out\]\)"),
    ([T(F32, ("s0", 8)), T(F32, (8,)), T(F32, (5, 8, 1))], {}, "does not match the transposed weight"),
    ([T(F32, ()), T(F32, (8,)), T(F32, (8, 5))], {}, r"needs wt\[\?, out\]"),
    ([T(F32, ("s0", 8)), T(F32, (7,)), T(F32, (8, 5))], {}, r"scale must be a float vector \[8\], got f32\[7\]"),
    ([T(F32, ("s0", 8)), T(ir.dtype("i32"), (8,)), T(F32, (8, 5))], {}, "scale must be a float vector"),
    ([T(F32, ("s0", 8)), T(F32, (8,)), T(F32, (8, 5)), T(F32, (4,))], {}, r"bias f32\[4\] must be \[5\]"),
    ([T(F16, ("s0", 8)), T(F32, (8,)), T(F32, (8, 5))], {}, "needs operands of one dtype"),
    ([T(ir.dtype("i32"), ("s0", 8)), T(F32, (8,)), T(ir.dtype("i32"), (8, 5))], {}, "needs a floating-point operand"),
    ([T(F32, ("s0", 8)), T(F32, (8,)), T(F32, (8, 5))], {"keep": -2}, r"keep = -2 is outside \[-1, "),
])
def test_type_rule_names_the_mismatch(types: list, attrs: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        OP.infer(types, OP.normalize_attrs(attrs))


def test_type_rule() -> None:
    a = OP.normalize_attrs({"keep": 3})
    assert a == {"keep": 3, "threshold": 0.0}
    assert OP.infer([T(F32, (2, "s0", 8)), T(F16, (8,)), T(F32, (8, 5)), T(F32, (5,))], a) == T(F32, (2, "s0", 5))
    assert OP.infer([T(F16, (0,)), T(F32, (0,)), T(F16, (0, 3))], a) == T(F16, (3,))


def graphs(dt: str, lead: tuple, D: int, out: int, bias: bool, keep: int, threshold: float) -> tuple[ir.Graph, ir.Graph]:
    """(sparse_input_linear over @wt, linear(sparsify(x, @scale), @w) with w = wt.T): the same weights."""
    xs = f"{dt}[{', '.join(map(str, lead + (D,)))}]"
    ys = f"{dt}[{', '.join(map(str, lead + (out,)))}]"
    params = f"  param @scale: f32[{D}]\n  param @wt: {dt}[{D}, {out}]\n  param @w: {dt}[{out}, {D}]\n  param @b: {dt}[{out}]\n"
    b, attrs = (", @b" if bias else ""), f"{{keep = {keep}, threshold = {threshold!r}}}"
    one = ir.parse(f"graph @g(%x: {xs}) {{\n{params}  %y: {ys} = sparse_input_linear(%x, @scale, @wt{b}) {attrs}\n"
                   "  return %y\n}\n")
    two = ir.parse(f"graph @g(%x: {xs}) {{\n{params}  %s: {xs} = sparsify(%x, @scale) {attrs}\n"
                   f"  %y: {ys} = linear(%s, @w{b})\n  return %y\n}}\n")
    return one, two


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["f32", "f16", "bf16"]), st.sampled_from([(), (3,), (2, 0), (1, 4)]), st.integers(0, 20),
       st.integers(1, 9), st.booleans(), st.integers(-1, 22), st.sampled_from([0.0, 0.5, -1.0]), st.integers(0, 2**31 - 1))
def test_reference_is_the_composition(dt: str, lead: tuple, D: int, out: int, bias: bool, keep: int, threshold: float,
                                      seed: int) -> None:
    """Ties (a 1/4 grid), zeros, NaN and inf in x; the scale zero in places (0 * inf is a NaN score)."""
    one, two = graphs(dt, lead, D, out, bias, keep, threshold)
    ir.verify(one)
    ir.verify(two)
    rng = np.random.default_rng(seed)
    npdt = one.params["wt"].dtype.np
    x = (rng.integers(-8, 9, lead + (D,)) / 4).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = np.inf
    wt = rng.standard_normal((D, out)).astype(npdt)
    w = {"scale": (rng.integers(0, 4, D) / 2).astype(np.float32), "wt": wt, "w": wt.T,  # w.T is wt: the same matmul
         "b": rng.standard_normal(out).astype(npdt)}
    one.weights, two.weights = w, dict(w)
    with np.errstate(all="ignore"):
        got, want = ir.run(one, [x.astype(npdt)], check=True)[0], ir.run(two, [x.astype(npdt)], check=True)[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))  # bf16: NaN == NaN only in f32
