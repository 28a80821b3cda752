"""Golden tests of dce: text in, expected text out."""
import numpy as np

import ir
from passes import get_pass

DCE = get_pass("dce")()


def test_removes_dead_nodes_and_params(golden):
    out = golden(DCE, """
graph @main(%x: f32[2, 3], %unused: f32[3]) {
  param @w: f32[3]
  param @dead: f32[3]
  %a: f32[2, 3] = add(%x, @w)
  %b: f32[2, 3] = mul(%x, @dead)
  %c: f32[2, 3] = exp(%b)
  %d: f32[2, 3] = neg(%a)
  return %d
}""", """
graph @main(%x: f32[2, 3], %unused: f32[3]) {
  param @w: f32[3]
  %a: f32[2, 3] = add(%x, @w)
  %d: f32[2, 3] = neg(%a)
  return %d
}""")
    assert out.params == {"w": ir.TensorType(ir.dtype("f32"), (3,))}


def test_drops_weights_of_dropped_params():
    g = ir.parse("""
graph @main(%x: f32[3]) {
  param @w: f32[3]
  param @dead: f32[3]
  %a: f32[3] = add(%x, @dead)
  return %x, @w
}""")
    g.weights = {"w": np.ones(3, np.float32), "dead": np.zeros(3, np.float32)}
    out = DCE.run(g)
    assert list(out.weights) == ["w"] and list(g.weights) == ["w", "dead"]
    assert out.nodes == [] and list(out.params) == ["w"]


def test_keeps_everything_live(golden):
    text = """
graph @main(%x: f32[2]) {
  %a: f32[2] = neg(%x)
  %b: f32[2] = add(%a, %x)
  return %b, %a
}"""
    golden(DCE, text, text)
