"""Graphs built through the API that break an invariant raise VerifyError naming the culprit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ir
from ir import Node, TensorType, VerifyError

from strategies import graphs

F32, I64, BOOL = ir.dtype("f32"), ir.dtype("i64"), ir.dtype("bool")


def T(*shape, dt=F32) -> TensorType:
    return TensorType(dt, shape)


def base() -> ir.Graph:
    """%x: f32[s0, 4] -> exp -> linear(@w) -> return."""
    g = ir.Graph("g", [("x", T("s0", 4))], {"w": T(3, 4)})
    g.nodes = [Node("e", "exp", ("%x",), {}, T("s0", 4)),
               Node("l", "linear", ("%e", "@w"), {}, T("s0", 3))]
    g.outputs = ["%l"]
    g.weights = {"w": np.zeros((3, 4), np.float32)}
    return ir.verify(g)


def fails(g: ir.Graph, *needles: str) -> VerifyError:
    with pytest.raises(VerifyError) as ei:
        ir.verify(g)
    for s in needles:
        assert s in str(ei.value), f"{s!r} not in {ei.value}"
    return ei.value


def test_base_verifies_and_verify_returns_the_graph() -> None:
    g = base()
    assert ir.verify(g) is g


def test_wrong_arity() -> None:
    g = base()
    g.nodes[0].operands = ("%x", "%x")
    e = fails(g, "%e", "exp", "got 2")
    assert e.node == "e"
    g = base()
    g.nodes[1].operands = ("%e",)
    fails(g, "%l", "linear")
    g = base()
    g.nodes[1].operands = ("%e", "@w", "@w", "@w")
    fails(g, "%l", "linear")


def test_operand_used_before_definition() -> None:
    g = base()
    g.nodes.reverse()
    fails(g, "%l", "%e", "not defined before")
    g = base()
    g.nodes[0].operands = ("%nowhere",)
    fails(g, "%e", "%nowhere")
    g = base()
    g.nodes[1].operands = ("%e", "@nope")
    fails(g, "%l", "@nope")


def test_declared_type_mismatch_names_node_and_types() -> None:
    g = base()
    g.nodes[1].type = T("s0", 4)
    fails(g, "%l", "linear", "f32[s0, 4]", "f32[s0, 3]")
    g = base()
    g.nodes[0].type = T("s0", 4, dt=ir.dtype("f16"))
    fails(g, "%e", "f16[s0, 4]")


def test_operand_types_that_the_rule_rejects() -> None:
    g = base()
    g.params["w"] = T(3, 5)
    g.weights["w"] = np.zeros((3, 5), np.float32)
    fails(g, "%l", "linear", "@w: f32[3, 5]")


def test_messages_quote_awkward_node_names_as_the_text_does() -> None:
    g = base()
    g.nodes[1].name = "x, y"
    g.nodes[1].type = T("s0", 4)
    fails(g, '%"x, y" = linear(...)')
    g = base()
    g.nodes[0].name = "a b"
    g.nodes[1].operands = ("%a b", "@w")
    g.nodes[0].op = "nope"
    fails(g, '%"a b" = nope(...)')


def test_unknown_op() -> None:
    g = base()
    g.nodes[0].op = "frobnicate"
    fails(g, "%e", "frobnicate")


def test_ssa_redefinition() -> None:
    g = base()
    g.nodes[1].name = "e"
    fails(g, "%e", "defined twice")
    g = base()
    g.nodes[0].name = "x"
    g.nodes[1].operands = ("%x", "@w")
    fails(g, "%x", "defined twice")
    g = base()
    g.inputs.append(("x", T("s0", 4)))
    fails(g, "%x", "twice")


def test_unbound_symbols() -> None:
    g = base()
    g.nodes.insert(0, Node("f", "full", (), ir.OPS["full"].normalize_attrs({"value": 0.0, "dtype": F32, "shape": ["s1"]}), T("s1")))
    fails(g, "%f", "s1", "unbound")
    g = base()
    g.inputs.append(("y", T("2*s1 + 1")))  # s1 is only ever derived, never bound by a dim alone
    fails(g, "%y", "s1")


def test_weight_array_not_matching_its_param() -> None:
    g = base()
    g.weights["w"] = np.zeros((4, 3), np.float32)
    fails(g, "@w", "f32[3, 4]")
    g = base()
    g.weights["w"] = np.zeros((3, 4), np.float64)
    fails(g, "@w", "float64")
    g = base()
    g.params["p"] = T("s0")
    fails(g, "@p", "symbolic")


def test_no_outputs_and_undefined_output() -> None:
    g = base()
    g.outputs = []
    fails(g, "no outputs")
    g = base()
    g.outputs = ["%l", "%ghost"]
    fails(g, "%ghost")


def test_attributes() -> None:
    g = base()
    g.nodes[0].attrs = {"bogus": 1}
    fails(g, "%e", "bogus")
    sm = Node("s", "softmax", ("%e",), {}, T("s0", 4))
    g = base()
    g.nodes.insert(1, sm)
    fails(g, "%s", "missing required attribute dim")
    sm.attrs = {"dim": 1.5}
    fails(g, "%s", "dim")
    sm.attrs = {"dim": 2}
    fails(g, "%s", "axis 2")


def test_attribute_values_must_be_normalised() -> None:
    """An attr that verifies must print and parse back to itself: `eps = 1` (int) would come back
    as 1.0, `dtype = "f16"` (a str) as a DType, `end = "1 + s0"` as "s0 + 1"."""
    cases = [
        Node("n", "rms_norm", ("%x",), {"eps": 1, "axes": 1}, T("s0", 4)),
        Node("n", "cast", ("%x",), {"dtype": "f16"}, T("s0", 4, dt=ir.dtype("f16"))),
        Node("n", "slice", ("%x",), {"dim": 0, "start": 0, "end": "s0 + 0", "step": 1}, T("s0", 4)),
    ]
    for n in cases:
        g = base()
        g.nodes.append(n)
        fails(g, "%n")
        n.attrs = ir.OPS[n.op].normalize_attrs(n.attrs)
        ir.verify(g)
        assert ir.parse(str(g)) == g


def test_rule_errors_never_escape_as_other_exceptions() -> None:
    """A type rule that trips over an odd operand (rank 0 here) still gives VerifyError."""
    for op, attrs in [("slice", {"dim": 0, "end": 0}), ("cat", {"dim": 0}), ("argmax", {"dim": 0}),
                      ("cumsum", {"dim": 0}), ("softmax", {"dim": 0}), ("permute", {"perm": [0]}),
                      ("sum", {"dims": [0]}), ("gather", {"dim": 0}), ("index", {}), ("embedding", {}),
                      ("linear", {}), ("matmul", {}), ("layer_norm", {}), ("expand", {"shape": []})]:
        g = ir.Graph("g", [("x", T())])
        n_ops = {"gather": 2, "index": 2, "embedding": 2, "linear": 2, "matmul": 2}.get(op, 1)
        g.nodes = [Node("n", op, ("%x",) * n_ops, ir.OPS[op].normalize_attrs(attrs), T())]
        g.outputs = ["%n"]
        try:
            ir.verify(g)
        except VerifyError as e:
            assert "%n" in str(e)


def test_negative_static_dims_are_rejected() -> None:
    with pytest.raises(ValueError):
        T(-1, 4)
    with pytest.raises(ir.ParseError):
        ir.parse("graph @g(%x: f32[2 - 5]) {\n  return %x\n}\n")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generated_graphs_verify_and_retyping_any_node_fails(g: ir.Graph) -> None:
    ir.verify(g)
    n = g.nodes[-1]
    good = n.type
    n.type = good.with_shape(good.shape + (7,))
    e = fails(g, str(n.type))
    assert e.node == n.name
    n.type = good
    ir.verify(g)


# -- issue 27: integer attributes have declared bounds (ir/ops/base.py) ----------------------------------
def test_integer_attributes_are_bounded_for_every_op() -> None:
    """Issue 27: `lut_linear {group = 2**64}` loaded, then died in C; `sparse_input_linear {keep = 2**64}`
    returned only the bias. Every integer attribute of every op has declared bounds (int64 at least), checked
    when attributes are normalised, so by the verifier and the parser."""
    for name, op in ir.OPS.items():
        for k, a in op.attrs.items():
            if a.kind in ("int", "ints", "dim", "dims"):
                assert -2**63 <= a.bounds.lo and a.bounds.hi <= 2**63 - 1, (name, k)
                for v in (2**63, -2**63 - 1, 2**64):
                    with pytest.raises(ValueError, match=f"attribute {k} = {v} is outside"):
                        a.bounds.check(k, [v] if a.kind.endswith("s") else v)
    c_ints = {("lut_linear", "group"), ("lut_linear", "cols"), ("sparse_input_linear", "keep"), ("sparsify", "keep"),
              ("dequant_affine", "group"), ("dfloat11_decode", "block"), ("gguf_linear", "cols"), ("argtopk", "k")}
    assert all(ir.OPS[o].attrs[k].bounds.hi == 2**31 - 1 for o, k in c_ints)  # kernels loop over these with a C int


def test_lut_group_and_keep_out_of_range_are_verify_errors() -> None:
    lut = (Path(__file__).parent / "quant_lut.ir").read_text()
    for v in (2**64, 2**63, 2**32, 2**31, 0, -1):
        with pytest.raises(ir.ParseError, match="group"):
            ir.parse(lut.replace("group = 16", f"group = {v}"))
    sparse = (Path(__file__).parent / "sparse.ir").read_text()
    for v in (2**64, 2**32, 2**31, -2):
        with pytest.raises(ir.ParseError, match="keep"):
            ir.parse(sparse.replace("{keep = 4, threshold = 0.0}\n  %u", f"{{keep = {v}, threshold = 0.0}}\n  %u"))
    g = ir.parse(sparse)  # built in Python, never printed: the verifier checks the bounds too
    g.nodes[3].attrs["keep"] = 2**64
    with pytest.raises(ir.VerifyError, match="%z = sparse_input_linear.*keep = 18446744073709551616 is outside"):
        ir.verify(g)
