"""Text is the truth: print -> parse -> print is the identity on every graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir

from strategies import graphs, run_inputs

ALL_OPS = (Path(__file__).parent / "all_ops.ir").read_text()
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def roundtrip(g: ir.Graph, locs: bool = False) -> ir.Graph:
    text = ir.print_graph(g, locs=locs)
    g2 = ir.parse(text)
    assert g2 == g, f"parse(print(g)) != g for\n{text}\nreparsed:\n{ir.print_graph(g2, locs=locs)}"
    assert ir.print_graph(g2, locs=locs) == text
    return g2


@SETTINGS
@given(graphs())
def test_generated_graphs_roundtrip(g: ir.Graph) -> None:
    ir.verify(g)
    g2 = roundtrip(g)
    assert str(g2) == str(g)
    assert all(n.loc is None for n in g2)  # locs are printed only on request
    g2.weights = g.weights
    ir.verify(g2)


@SETTINGS
@given(graphs())
def test_generated_graphs_roundtrip_with_locs(g: ir.Graph) -> None:
    g2 = roundtrip(g, locs=True)
    assert [n.loc for n in g2] == [n.loc for n in g]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_graphs_run(data: st.DataObject) -> None:
    """Each op's reference agrees with its type rule inside random graphs (run checks every node)."""
    g = data.draw(graphs())
    try:
        outs = ir.run(g, data.draw(run_inputs(g)), check=True)
    except ir.RuntimeShapeError as e:  # e.g. argmax over a symbolic axis that is 0 long for these inputs
        assert "empty axis" in str(e), e
        return
    assert len(outs) == len(g.outputs)


def test_argmax_over_an_axis_that_is_empty_at_run_time_is_a_typed_error() -> None:
    """Found by an explore run: s0 - 2 rows with s0 = 2 made NumPy's untyped ValueError, reported as our bug."""
    g = ir.parse("graph @g(%x: f32[s0, 3]) {\n  %y: f32[s0 - 2, 3] = slice(%x) {dim = 0, start = 1, end = s0 - 1, step = 1}\n"
                 "  %z: i64[3] = argmax(%y) {dim = 0}\n  return %z\n}\n")
    assert ir.run(g, [np.arange(9, dtype=np.float32).reshape(3, 3)])[0].tolist() == [0, 0, 0]
    with pytest.raises(ir.RuntimeShapeError, match="%z = argmax: argmax over an empty axis"):
        ir.run(g, [np.zeros((2, 3), np.float32)])


def test_copy_is_equal_and_independent() -> None:
    g = ir.parse(ALL_OPS)
    c = g.copy()
    assert c == g and str(c) == str(g)
    c.nodes[0].attrs["x"] = 1
    assert "x" not in g.nodes[0].attrs


def test_every_op_is_covered_by_the_hand_written_graphs() -> None:
    """all_ops.ir covers the core ops; each quantized-op family adds its own quant_<family>.ir."""
    covered = set()
    for f in sorted(Path(__file__).parent.glob("*.ir")):
        g = ir.parse(f.read_text())
        assert ir.parse(str(g)) == g, f.name
        covered |= {n.op for n in g}
    missing = sorted(set(ir.OPS) - covered)
    assert not missing, f"add these registered ops to tests/ir/all_ops.ir (or a quant_<family>.ir): {missing}"


def test_hand_written_graph_roundtrips_and_runs() -> None:
    g = ir.parse(ALL_OPS)
    roundtrip(g)
    g2 = roundtrip(g, locs=True)
    assert g2.node("exp").loc == "model.py:1"
    assert ir.parse(str(g)).node("exp").loc is None
    rng = np.random.default_rng(0)
    g.weights = {k: rng.standard_normal(t.shape).astype(t.dtype.np) if t.dtype.is_float
                 else rng.integers(t.dtype.lo, t.dtype.hi + 1, t.shape).astype(t.dtype.np)
                 for k, t in g.params.items()}
    ir.verify(g)
    for s0 in (2, 5):
        args = [rng.standard_normal((2, s0, 8)).astype(np.float32), rng.integers(0, 4, (2, s0)),
                rng.random((2, s0, 8)) < 0.5, np.zeros(2 * s0 + 1, np.float32)]
        outs = dict(zip(g.outputs, ir.run(g, args)))
        np.testing.assert_array_equal(outs["%yy"], np.r_[np.arange(s0), np.arange(s0), 1.0])
        np.testing.assert_array_equal(outs["%ar"], np.arange(2 * s0 + 1))
        np.testing.assert_array_equal(outs["%em"], g.weights["emb"][args[1]])
        assert np.isnan(outs["%nan"]).all() and outs["%nan"].shape == (1, s0)


def test_float_attrs_print_exactly() -> None:
    """Special floats survive the text: nan, infinities, signed zero, subnormals, 17 digits."""
    vals = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e-300, 5e-324, 1e300, 0.1, 1 / 3, 1e16, 2.0]
    for v in vals:
        g = ir.Graph("g", [], {}, [ir.Node("c", "full", (), ir.OPS["full"].normalize_attrs(
            {"value": v, "dtype": ir.dtype("f64")}), ir.TensorType(ir.dtype("f64"), ()))], ["%c"])
        g2 = roundtrip(g)
        got = g2.nodes[0].attrs["value"]
        assert type(got) is float and (repr(got) == repr(v)), (v, got)


def test_numpy_scalars_in_attrs_print_as_numbers() -> None:
    for v in (np.float64(1.5), np.float64("nan")):
        attrs = ir.OPS["full"].normalize_attrs({"value": v, "dtype": ir.dtype("f32")})
        g = ir.Graph("g", [], {}, [ir.Node("c", "full", (), attrs, ir.TensorType(ir.dtype("f32"), ()))], ["%c"])
        assert "np." not in str(g)
        roundtrip(g)


def test_attr_kinds_stay_apart() -> None:
    """`shape = [s0]` (a dim), `approximate = "tanh"` (a string), `value = 1` vs `value = 1.0`."""
    text = """graph @g(%x: f32[s0]) {
  %a: i64[s0] = full() {value = 1, dtype = i64, shape = [s0]}
  %b: f32[s0] = full() {value = 1.0, dtype = f32, shape = [s0]}
  %c: f32[s0] = gelu(%x) {approximate = "tanh"}
  %d: bool[] = full() {value = true, dtype = bool, shape = []}
  return %a, %b, %c, %d
}
"""
    g = ir.parse(text)
    assert str(g) == text
    assert type(g.node("a").attrs["value"]) is int and type(g.node("b").attrs["value"]) is float
    assert g.node("d").attrs["value"] is True
    assert g.node("a").attrs["shape"] == ["s0"]


def test_symbolic_dims_are_canonical() -> None:
    text = "graph @g(%x: f32[s0]) {\n  %y: f32[1 + s0*2] = cat(%x, %x, %o) {dim = 0}\n  return %y\n}\n"
    with_o = text.replace("  %y", "  %o: f32[1] = full() {value = 0.0, dtype = f32, shape = [1]}\n  %y")
    g = ir.parse(with_o)
    assert g.node("y").type.shape == ("2*s0 + 1",)
    assert "f32[2*s0 + 1] = cat" in str(g)
    assert ir.parse(str(g)) == g


def test_comments_and_whitespace_are_ignored() -> None:
    g = ir.parse(ALL_OPS)
    spaced = "// header\n" + str(g).replace(", ", " ,\t").replace("\n", "\n\n  // c\n")
    assert ir.parse(spaced) == g
