"""The reference runtime: symbol binding, input checks, weights, and the graph utilities."""
from __future__ import annotations

import random
import re

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ir
from ir import RuntimeShapeError

from strategies import graphs

TEXT = """graph @g(%x: f32[s0, 4], %y: f32[s0], %z: f32[2*s0 + 1], %ids: i64[s1]) {
  param @w: f32[3, 4]
  param @e: f32[5, 2]
  %l: f32[s0, 3] = linear(%x, @w)
  %yy: f32[s0, 1] = reshape(%y) {shape = [s0, 1]}
  %s: f32[s0, 3] = add(%l, %yy)
  %a: i64[2*s0 + 1] = arange() {end = 2*s0 + 1}
  %f: f32[s1, s0] = full() {value = 0.5, dtype = f32, shape = [s1, s0]}
  %em: f32[s1, 2] = embedding(@e, %ids)
  return %s, %a, %f, %em, %z
}
"""


def graph() -> ir.Graph:
    g = ir.parse(TEXT)
    rng = np.random.default_rng(1)
    g.weights = {"w": rng.standard_normal((3, 4)).astype(np.float32), "e": rng.standard_normal((5, 2)).astype(np.float32)}
    return g


def args(s0: int = 3, s1: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.standard_normal((s0, 4)).astype(np.float32), rng.standard_normal(s0).astype(np.float32),
            np.zeros(2 * s0 + 1, np.float32), rng.integers(0, 5, s1)]


def test_symbols_are_bound_from_inputs_and_drive_attrs() -> None:
    g = graph()
    for s0, s1 in [(2, 2), (5, 3), (1, 7)]:
        a = args(s0, s1)
        s, ar, f, em, z = ir.run(g, a)
        np.testing.assert_allclose(s, a[0] @ g.weights["w"].T + a[1][:, None], rtol=1e-6)
        np.testing.assert_array_equal(ar, np.arange(2 * s0 + 1))
        assert f.shape == (s1, s0) and (f == 0.5).all()
        np.testing.assert_array_equal(em, g.weights["e"][a[3]])
        assert z is a[2]
        assert ir.interpreter.bind_inputs(g, a) == {"s0": s0, "s1": s1}


def test_symbol_bound_by_one_input_is_checked_against_another() -> None:
    g = graph()
    a = args(3)
    a[1] = np.zeros(4, np.float32)
    with pytest.raises(RuntimeShapeError, match=r"%y .*\[3\].*got shape \[4\]"):
        ir.run(g, a)
    a = args(3)
    a[2] = np.zeros(6, np.float32)  # 2*s0 + 1 = 7
    with pytest.raises(RuntimeShapeError, match=r"%z .*\[7\].*\[6\]"):
        ir.run(g, a)


def test_wrong_rank_dtype_count() -> None:
    g = graph()
    a = args()
    a[0] = a[0][None]
    with pytest.raises(RuntimeShapeError, match=r"%x .*rank 3"):
        ir.run(g, a)
    a = args()
    a[1] = a[1].astype(np.float64)
    with pytest.raises(RuntimeShapeError, match=r"%y .*float64"):
        ir.run(g, a)
    a = args()
    a[3] = a[3].astype(np.int32)
    with pytest.raises(RuntimeShapeError, match=r"%ids .*int32"):
        ir.run(g, a)
    with pytest.raises(RuntimeShapeError, match=r"takes 4 inputs .*got 3"):
        ir.run(g, args()[:3])
    a = args()
    a[0] = np.zeros((3, 5), np.float32)  # a static dim
    with pytest.raises(RuntimeShapeError, match=r"%x"):
        ir.run(g, a)


def test_missing_weights_say_which_and_what_to_do() -> None:
    g = graph()
    del g.weights["e"]
    with pytest.raises(ir.TritiumError, match=r"@e .*no weights.*graph\.weights"):
        ir.run(g, args())


def test_reference_failure_and_type_check_name_the_node() -> None:
    g = graph()
    g.node("a").type = ir.TensorType(ir.dtype("i64"), ("s0",))  # lies about its type; run() does not verify
    with pytest.raises(ir.TritiumError, match=r"%a = arange: reference gave int64\[7\], declared i64\[s0\]"):
        ir.run(g, args())
    ir.run(g, args(), check=False)
    g = graph()
    a = args()
    a[3] = np.array([9, 0])  # an id past the table: the reference refuses it, run names the node
    with pytest.raises(ir.RuntimeShapeError, match=r"%em = embedding: token id 9 is out of range for an embedding table of 5"):
        ir.run(g, a)


def test_values_used_later_and_returned_are_kept() -> None:
    text = """graph @g(%x: f32[2]) {
  %a: f32[2] = exp(%x)
  %b: f32[2] = add(%a, %a)
  %c: f32[2] = mul(%b, %x)
  return %a, %c, %x, %a
}
"""
    g = ir.parse(text)
    x = np.array([0.0, 1.0], np.float32)
    a, c, x2, a2 = ir.run(g, [x])
    np.testing.assert_allclose(a, np.exp(x))
    np.testing.assert_allclose(c, 2 * np.exp(x) * x)
    assert x2 is x and a2 is a


def test_to_networkx() -> None:
    g = graph()
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {"%x", "%y", "%z", "%ids", "@w", "@e", "%l", "%yy", "%s", "%a", "%f", "%em"}
    assert nxg.nodes["@w"]["kind"] == "param" and nxg.nodes["%x"]["kind"] == "input"
    assert nxg.nodes["%l"] == {"kind": "node", "op": "linear", "type": "f32[s0, 3]"}
    assert set(nxg.in_edges("%s")) == {("%l", "%s"), ("%yy", "%s")}
    assert nx.is_directed_acyclic_graph(nxg)


def test_topo_sort_restores_a_valid_order_stably() -> None:
    g = graph()
    order = [n.name for n in g.nodes]
    g.topo_sort()
    assert [n.name for n in g.nodes] == order  # already sorted: unchanged
    for seed in range(5):
        h = graph()
        random.Random(seed).shuffle(h.nodes)
        h.topo_sort()
        ir.verify(h)
        np.testing.assert_allclose(ir.run(h, args())[0], ir.run(graph(), args())[0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_topo_sort_of_shuffled_generated_graphs(g: ir.Graph) -> None:
    before = str(g)
    nodes = list(g.nodes)
    random.Random(len(nodes)).shuffle(g.nodes)
    g.topo_sort()
    ir.verify(g)
    assert sorted(n.name for n in g.nodes) == sorted(n.name for n in nodes)
    g.nodes = nodes
    g.topo_sort()
    assert str(g) == before  # stable: a valid order is kept as is


def test_to_dot() -> None:
    g = graph()
    dot = g.to_dot()
    assert dot.startswith('digraph "g" {') and dot.rstrip().endswith("}")
    assert dot.count("->") == g.to_networkx().number_of_edges()
    assert "linear: f32[s0, 3]" in dot
    for name in ['a "quoted" name', "trail\\", 'x\\"y', "ünï"]:
        g.name = name
        m = re.fullmatch(r'digraph "((?:[^"\\]|\\.)*)" \{', g.to_dot().splitlines()[0])
        assert m, g.to_dot().splitlines()[0]
        assert re.sub(r"\\(.)", r"\1", m.group(1)) == name
