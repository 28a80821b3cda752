"""Golden tests of cse: text in, expected text out."""
from passes import get_pass

CSE = get_pass("cse")()


def test_merges_chains_of_duplicates(golden):
    golden(CSE, """
graph @main(%x: f32[2, 3]) {
  param @w: f32[3]
  %a: f32[2, 3] = add(%x, @w)
  %b: f32[2, 3] = add(%x, @w)
  %c: f32[2, 3] = exp(%a)
  %d: f32[2, 3] = exp(%b)
  %e: f32[2, 3] = mul(%c, %d)
  return %e, %d
}""", """
graph @main(%x: f32[2, 3]) {
  param @w: f32[3]
  %a: f32[2, 3] = add(%x, @w)
  %c: f32[2, 3] = exp(%a)
  %e: f32[2, 3] = mul(%c, %c)
  return %e, %c
}""")


def test_keeps_nodes_that_differ(golden):
    text = """
graph @main(%x: f32[2, 3]) {
  param @w: f32[3]
  param @v: f32[3]
  %a: f32[2, 3] = add(%x, @w)
  %b: f32[2, 3] = add(%x, @v)
  %c: f32[2, 3] = add(@w, %x)
  %s: f32[3] = sum(%a) {dims = [0]}
  %t: f32[3] = sum(%a) {dims = [0], keepdim = false}
  %u: f32[1, 3] = sum(%a) {dims = [0], keepdim = true}
  %f: f32[] = full() {value = 0.0, dtype = f32}
  %g: f32[] = full() {value = -0.0, dtype = f32}
  %h: f32[] = full() {value = nan, dtype = f32}
  %i: f32[] = full() {value = nan, dtype = f32}
  return %b, %c, %s, %t, %u, %f, %g, %h, %i
}"""
    expected = text.replace("  %t: f32[3] = sum(%a) {dims = [0], keepdim = false}\n", "").replace(
        "  %i: f32[] = full() {value = nan, dtype = f32}\n", "").replace("%s, %t", "%s, %s").replace("%h, %i", "%h, %h")
    golden(CSE, text, expected)
