"""Property: every pass keeps what `ir.run` computes, on random small graphs with NaN and Inf."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ir
from compiler.pass_manager import PassManager

F32 = ir.dtype("f32")
SHAPES = [(), (3,), (2, 3)]  # all broadcast together
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)
SPECIALS = st.sampled_from([0.0, -0.0, 1.0, -2.5, 0.5, float("nan"), float("inf"), float("-inf"), 3e38])
UNARY = ["neg", "abs", "exp", "log", "sqrt", "tanh", "relu", "sigmoid", "reciprocal"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "pow"]
PIPELINES = ["dce", "cse", "constant_fold", "constant_fold{max_elements=2}", "constant_fold,cse,dce"]


@st.composite
def graphs(draw: st.DrawFn) -> tuple[ir.Graph, np.ndarray]:
    """A random graph over %x: f32[2, 3] and @w: f32[3]: constants, elementwise ops, reductions,
    selects and repeated nodes (for cse), with random outputs (so some nodes are dead)."""
    g = ir.Graph("rand", [("x", ir.TensorType(F32, (2, 3)))], {"w": ir.TensorType(F32, (3,))})
    g.weights["w"] = draw(arrays(np.float32, (3,), elements=FLOATS))
    types = g.types()
    refs = list(types)

    def add(op: str, operands: tuple[str, ...], **attrs) -> str:
        attrs = ir.OPS[op].normalize_attrs(attrs)
        t = ir.OPS[op].infer([types[o] for o in operands], attrs)
        name = g.fresh_name(f"v{len(g.nodes)}")
        g.nodes.append(ir.Node(name, op, operands, attrs, t))
        types["%" + name] = t
        if t.dtype == F32:  # operands are drawn from f32 values only
            refs.append("%" + name)
        return "%" + name

    pick = st.sampled_from
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(pick(["full", "arange", "unary", "binary", "binary", "sum", "where", "repeat"]))
        if kind == "full":
            add("full", (), value=draw(SPECIALS), dtype=F32, shape=list(draw(pick(SHAPES))))
        elif kind == "arange":
            add("cast", (add("arange", (), end=3),), dtype=F32)
        elif kind == "unary":
            add(draw(pick(UNARY)), (draw(pick(refs)),))
        elif kind == "binary":
            add(draw(pick(BINARY)), (draw(pick(refs)), draw(pick(refs))))
        elif kind == "sum":
            a = draw(pick(refs))
            if types[a].rank:
                add("sum", (a,), dims=[0])
        elif kind == "where":
            a, b = draw(pick(refs)), draw(pick(refs))
            add("where", (add("gt", (a, b)), a, b))
        elif g.nodes:  # repeat an earlier node: work for cse
            n = draw(pick(g.nodes))
            add(n.op, n.operands, **n.attrs)
    g.outputs = [refs[-1]] + draw(st.lists(pick(refs), max_size=2))
    x = draw(arrays(np.float32, (2, 3), elements=FLOATS))
    return ir.verify(g), x


@settings(max_examples=80, deadline=None)
@given(graphs())
def test_passes_preserve_results(case):
    g, x = case
    text, want = str(g), ir.run(g, [x])
    for spec in PIPELINES:
        out = PassManager(spec).run(g)  # verifies after every pass
        for a, b in zip(ir.run(out, [x]), want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{spec} changed the result of\n{text}")
        assert str(g) == text, f"{spec} mutated its input"
    assert str(PassManager("constant_fold,cse,dce").run(g)).count("\n") <= text.count("\n")
