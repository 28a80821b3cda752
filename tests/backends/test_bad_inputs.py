"""Issue 27 on the backends: inputs a graph cannot take are typed errors naming the node, on every target, as
the reference runtime gives them; never a crash, a read past a table, or a plain Python error."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import compiler
import ir
from backends.cpu import native

EMBED = """graph @g(%ids: i64[2, s0]) {
  param @w: f32[128, 4]
  %e: f32[2, s0, 4] = embedding(@w, %ids)
  return %e
}"""
CPU = ["numpy"] + (["native"] if native.available() else [])


def build(text: str, target: str, mode: str | None, monkeypatch: pytest.MonkeyPatch, **weights: np.ndarray):
    monkeypatch.setenv("TRITIUM_CPU_MODE", mode or "native")
    g = ir.parse(text)
    g.weights.update(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nodes that fall back to Python in native mode
        return compiler.compile(g, target=target, passes="")


@pytest.mark.parametrize("target, mode", [("reference", None), *(("cpu", m) for m in CPU), ("cuda", None)])
def test_token_ids_outside_the_table_are_typed_errors(target: str, mode: str | None, monkeypatch) -> None:
    """On cuda an id of 1e8 or -1e8 segfaulted and one equal to the vocabulary size gave NaN. Ids follow
    NumPy's rule (-rows <= id < rows); anything else is a RuntimeShapeError naming the node. (cuda runs in
    Triton's interpreter here, tests/conftest.py; the host checks the ids before it launches a kernel.)"""
    c = build(EMBED, target, mode, monkeypatch, w=np.arange(512, dtype=np.float32).reshape(128, 4))
    assert np.array_equal(c(np.array([[0, 127], [-1, -128]]))[:, :, 0], [[0, 508], [508, 0]])
    for bad in (128, 10**8, -10**8, -129, 2**62, -2**63):
        with pytest.raises(ir.RuntimeShapeError, match="%e = embedding"):
            c(np.array([[1, 2], [3, bad]]))


def test_a_computed_id_out_of_range_is_clamped_in_the_triton_kernel(monkeypatch) -> None:
    """The host checks ids that are graph inputs; one computed in a kernel is clamped into the table: no read
    outside it, whatever it is."""
    text = EMBED.replace("embedding(@w, %ids)", "embedding(@w, %i2)").replace(
        "  %e:", "  %k: i64[] = full() {value = 1000, dtype = i64, shape = []}\n  %i2: i64[2, s0] = add(%ids, %k)\n  %e:")
    c = build(text, "cuda", None, monkeypatch, w=np.arange(512, dtype=np.float32).reshape(128, 4))
    assert "tl.minimum(tl.maximum(" in c.source
    assert np.array_equal(c(np.array([[1, 2], [3, -1]]))[..., 0], np.full((2, 2), 508.0))


GATHER = """graph @g(%x: f32[2, 3], %i: i64[2, 2]) {
  %y: f32[2, 2] = gather(%x, %i) {dim = 1}
  %z: f32[2, 2] = neg(%y)
  return %z
}"""


@pytest.mark.parametrize("target, mode", [("reference", None), *(("cpu", m) for m in CPU)])
def test_an_index_out_of_range_names_the_node(target: str, mode: str | None, monkeypatch) -> None:
    """Found by tests/fuzz/test_fuzz_ir.py: the NumPy module and the native fallbacks raised a bare IndexError."""
    c = build(GATHER, target, mode, monkeypatch)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(c(x, np.array([[0, 2], [1, -1]])), -np.array([[0, 2], [4, 5]], np.float32))
    with pytest.raises(ir.RuntimeShapeError, match="%y = gather"):
        c(x, np.array([[0, 3], [1, 1]]))


@pytest.mark.parametrize("target, mode", [("reference", None), *(("cpu", m) for m in CPU)])
def test_a_kernel_refusing_its_data_names_the_node(target: str, mode: str | None, monkeypatch) -> None:
    """Found by tests/fuzz/test_fuzz_ir.py: dfloat11 blocks that decode to nothing raised a bare ValueError."""
    g = ir.parse((Path(__file__).parents[1] / "ir" / "quant_dfloat11.ir").read_text())
    weights = {k: np.zeros(t.shape, t.dtype.np) for k, t in g.params.items()}  # no code lengths: no code table
    c = build(str(g), target, mode, monkeypatch, **weights)
    xs = [np.ones(tuple(2 if isinstance(d, str) else d for d in t.shape), t.dtype.np) for _, t in g.inputs]
    with pytest.raises(ir.TritiumError, match="dfloat11_decode .*failed at %w: ValueError: dfloat11: the code table is empty"):
        c(*xs)
