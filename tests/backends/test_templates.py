"""Every NumPy template computes what its op's reference computes, bit for bit: hypothesis draws each
op's inputs from tests/ir's CASES (ragged and empty shapes, zeros, NaN/Inf, every dtype the op takes)
and runs a one-op graph on target=cpu and on the reference runtime. Half the draws put a dead value
of the result's type first, filled with garbage, so the template writes into a pooled buffer."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ir
from backends.cpu.kernels import KERNELS
from backends.cpu.templates import TEMPLATES
from ir.dtypes import bool_, from_numpy
from test_ops_vs_torch import CASES

from compare import build, check_against_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mean of nothing, as the reference

# Ops the cpu backend runs through an extern kernel (today: each one's NumPy reference).
EXTERN = sorted(n for n in ir.OPS if n not in TEMPLATES or n in KERNELS)


def garbage(t: ir.TensorType) -> Any:
    return float("nan") if t.dtype.is_float else (True if t.dtype == bool_ else 7)


def one_op_graph(name: str, arrays: list[np.ndarray], raw: dict[str, Any], pooled: bool) -> ir.Graph:
    op = ir.OPS[name]
    attrs = op.normalize_attrs(raw)
    g = ir.Graph(f"one {name}")
    for i, a in enumerate(arrays):
        g.inputs.append((f"a{i}", ir.TensorType(from_numpy(a.dtype), a.shape)))
    types = [t for _, t in g.inputs]
    t = op.infer(types, attrs)
    if pooled and t.rank and t.is_static:  # dies at once, so the op is offered its buffer
        junk = ir.OPS["full"].normalize_attrs({"value": garbage(t), "dtype": t.dtype, "shape": list(t.shape)})
        g.nodes.append(ir.Node("junk", "full", (), junk, t))
    g.nodes.append(ir.Node("r", name, tuple(f"%a{i}" for i in range(len(arrays))), attrs, t))
    g.outputs = ["%r"]
    try:
        return ir.verify(g)
    except ir.VerifyError:  # a case only the reference takes (index with no indices): not a graph
        assume(False)
        raise


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_matches_reference(name: str) -> None:
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(CASES[name], st.booleans())
    def run(case: tuple[list[np.ndarray], dict[str, Any]], pooled: bool) -> None:
        arrays, raw = case
        g = one_op_graph(name, arrays, raw, pooled)
        exe = build(g)
        check_against_reference(g, arrays, exe)
        assert exe.stats["pooled_reuses"] <= int(g.nodes[0].name == "junk")
        checked.append(name)

    checked: list[str] = []
    run()
    assert checked, f"no drawn case of {name} made a valid one-op graph: the template went untested"


def test_every_op_has_a_template_or_goes_through_kernels() -> None:
    """The lists say which: a new op without a template runs its reference until it gets one (or a kernel)."""
    from backends.cpu.kernels import has_reference

    cannot_run = sorted(n for n, op in ir.OPS.items() if n not in TEMPLATES and n not in KERNELS and not has_reference(op))
    assert not cannot_run, f"ops target=cpu cannot run (no template, kernel or reference): {cannot_run}"
    core = {n for n, op in ir.OPS.items() if not type(op).__module__.startswith("ir.ops.quant")}
    # sparse activation: sparse_input_linear has a C kernel (NumPy fallback inside it); sparsify runs its reference;
    # MoE: argtopk (torch's tie order) and moe (a loop over the selected experts) run their references in NumPy
    # mode and C in the native step (backends/cpu/native/moe.py)
    no_template = {"sparsify", "sparse_input_linear", "argtopk", "moe"}
    assert core - no_template <= set(TEMPLATES), f"core ops without a NumPy template: {sorted(core - no_template - set(TEMPLATES))}"
    assert no_template <= set(EXTERN)
    quant = {"dequant_affine", "dequant_planes", "dequant_codebook", "add_sparse", "dequant_pow", "dequant_shift",
             "dequant_bfp", "dfloat11_decode", "int8_linear"}
    assert quant <= set(EXTERN), sorted(quant - set(EXTERN))
    assert set(TEMPLATES) <= set(ir.OPS), f"templates for unknown ops: {sorted(set(TEMPLATES) - set(ir.OPS))}"


def test_out_buffers_are_used_where_numpy_allows() -> None:
    """f32 elementwise, matmul-like, reductions and cat write into the pooled buffer; 16-bit math does not."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for name, arrays, attrs in [("exp", [x], {}), ("add", [x, x], {}), ("linear", [x, x], {}),
                                ("sum", [x], {"dims": [1], "keepdim": True}), ("cat", [x, x], {"dim": 0}),
                                ("softmax", [x], {"dim": -1}), ("rms_norm", [x], {"eps": 1e-6}),
                                ("cast", [x], {"dtype": "i32"}), ("full", [], {"value": 2.0, "dtype": "f32", "shape": [3]})]:
        g = one_op_graph(name, arrays, attrs, pooled=True)
        exe = build(g)
        assert exe.stats["pooled_reuses"] == 1, exe.source
        assert "out=v0" in exe.source or "np.copyto(v0" in exe.source, exe.source
        check_against_reference(g, arrays, exe)
    h = x.astype(np.float16)
    g = one_op_graph("exp", [h], {}, pooled=True)
    exe = build(g)
    assert exe.stats["pooled_reuses"] == 0 and ".astype(np.float32)" in exe.source
    check_against_reference(g, [h], exe)


@pytest.mark.parametrize("name", sorted(n for n in TEMPLATES if n not in ("full", "arange")))
def test_template_matches_reference_for_every_dtype_the_type_rule_takes(name: str) -> None:
    """Beyond CASES' dtypes: i8, i16, u8, bool, f64 wherever `infer` accepts them (pooled and not)."""
    op = ir.OPS[name]
    req = [o for o in op.operands if not o.endswith("?")]
    attrs = {k: ([0] if a.kind == "ints" else 0) for k, a in op.attrs.items() if a.required}
    attrs = {**attrs, **({"scale": 0.5} if name == "sdpa" else {}), **({"shape": [2, 3]} if name in ("reshape", "expand") else {})}
    attrs = {**attrs, **({"perm": [1, 0]} if name == "permute" else {}), **({"end": 1} if name == "slice" else {})}
    x = np.array([[1, 0, 1], [0, 1, 0]])
    for dt in ir.DTYPES.values():
        if dt.packed:
            continue
        arrays = [x.astype(dt.np)] * len(req)
        if name == "sdpa":
            arrays = [a.reshape(1, 1, 2, 3) for a in arrays]
        try:
            g = one_op_graph(name, arrays, attrs, pooled=True)
        except (ValueError, TypeError, IndexError, KeyError):
            continue  # the type rule says no
        check_against_reference(g, arrays)
