"""Golden tests of constant_fold: text in, expected text out (and the data of new parameters)."""
import numpy as np

import ir
from passes import get_pass, parse_pipeline

FOLD = get_pass("constant_fold")()


def test_splat_becomes_full(golden):
    golden(FOLD, """
graph @main(%x: f32[2, 3]) {
  %a: f32[] = full() {value = 2.0, dtype = f32}
  %b: f32[2, 3] = expand(%a) {shape = [2, 3]}
  %c: f32[2, 3] = mul(%b, %b)
  %y: f32[2, 3] = add(%x, %c)
  return %y
}""", """
graph @main(%x: f32[2, 3]) {
  %a: f32[] = full() {value = 2.0, dtype = f32}
  %c: f32[2, 3] = full() {value = 4.0, dtype = f32, shape = [2, 3]}
  %y: f32[2, 3] = add(%x, %c)
  return %y
}""")


def test_ieee_specials_fold_exactly(golden):
    golden(FOLD, """
graph @main(%x: f32[]) {
  %inf: f32[] = full() {value = inf, dtype = f32}
  %z: f32[] = full() {value = 0.0, dtype = f32}
  %nan: f32[] = sub(%inf, %inf)
  %nz: f32[] = neg(%z)
  %big: f32[] = exp(%inf)
  %b: bool[] = gt(%nan, %z)
  return %nan, %nz, %big, %b, %x
}""", """
graph @main(%x: f32[]) {
  %inf: f32[] = full() {value = inf, dtype = f32}
  %z: f32[] = full() {value = 0.0, dtype = f32}
  %nan: f32[] = full() {value = nan, dtype = f32}
  %nz: f32[] = full() {value = -0.0, dtype = f32}
  %big: f32[] = full() {value = inf, dtype = f32}
  %b: bool[] = full() {value = false, dtype = bool}
  return %nan, %nz, %big, %b, %x
}""")


def test_non_splat_becomes_a_fresh_param_and_intermediates_vanish(golden):
    out = golden(FOLD, """
graph @main(%x: f32[2, 3]) {
  param @const.0: f32[3]
  %r: i64[3] = arange() {end = 3}
  %f: f32[3] = cast(%r) {dtype = f32}
  %one: f32[] = full() {value = 1.0, dtype = f32}
  %g: f32[3] = add(%f, %one)
  %y: f32[2, 3] = mul(%x, %g)
  %z: f32[2, 3] = add(%y, @const.0)
  return %z, %g
}""", """
graph @main(%x: f32[2, 3]) {
  param @const.0: f32[3]
  param @const.1: f32[3]
  %r: i64[3] = arange() {end = 3}
  %one: f32[] = full() {value = 1.0, dtype = f32}
  %y: f32[2, 3] = mul(%x, @const.1)
  %z: f32[2, 3] = add(%y, @const.0)
  return %z, @const.1
}""")
    assert list(out.weights) == ["const.1"]
    np.testing.assert_array_equal(out.weights["const.1"], np.array([1, 2, 3], np.float32))


def test_leaves_params_symbolic_dims_and_failing_ops(golden):
    text = """
graph @main(%x: f32[s0]) {
  param @w: f32[3]
  %two: f32[] = full() {value = 2.0, dtype = f32}
  %pw: f32[3] = mul(@w, %two)
  %r: i64[s0] = arange() {end = s0}
  %s: i64[4] = arange() {start = s0, end = s0 + 4}
  %t: i64[4] = add(%s, %s)
  %sym: f32[s0] = full() {value = 1.0, dtype = f32, shape = [s0]}
  %e: f32[s0] = exp(%sym)
  %v: i64[3] = full() {value = 0, dtype = i64, shape = [3]}
  %k: i64[] = full() {value = 5, dtype = i64}
  %d: i64[] = index(%v, %k)
  return %pw, %r, %t, %e, %d
}"""
    golden(FOLD, text, text)


def test_max_elements_keeps_big_values_but_folds_their_small_users(golden):
    golden(parse_pipeline("constant_fold{max_elements=2}")[0], """
graph @main(%x: f32[]) {
  %r: i64[3] = arange() {end = 3}
  %f: f32[3] = cast(%r) {dtype = f32}
  %s: f32[] = sum(%f) {dims = [0]}
  %y: f32[] = add(%x, %s)
  return %y, %f
}""", """
graph @main(%x: f32[]) {
  %r: i64[3] = arange() {end = 3}
  %f: f32[3] = cast(%r) {dtype = f32}
  %s: f32[] = full() {value = 3.0, dtype = f32}
  %y: f32[] = add(%x, %s)
  return %y, %f
}""")


def test_folded_graph_runs_like_the_original():
    g = ir.parse("""
graph @main(%x: f32[2, 3]) {
  %r: i64[6] = arange() {end = 6}
  %f: f32[6] = cast(%r) {dtype = f32}
  %m: f32[2, 3] = reshape(%f) {shape = [2, 3]}
  %y: f32[2, 3] = add(%x, %m)
  return %y
}""")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    out = FOLD.run(g)
    assert ir.count_ops(out) == {"add": 1, "arange": 1}
    np.testing.assert_array_equal(ir.run(out, [x])[0], ir.run(g, [x])[0])
