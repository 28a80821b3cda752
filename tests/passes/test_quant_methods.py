"""Every quantization method, by the pipeline names users write, on a real (tiny) Llama: each one
verifies, round-trips through text, runs on the reference runtime close to fp32, and survives
save/load as an artifact without re-quantizing."""
from __future__ import annotations

import numpy as np
import pytest

import compiler
import ir
from compiler.pass_manager import PassManager
from passes import PassContext

from test_squeezellm import tiny_llama  # one export of tiny("llama") for the pass tests

# (pipeline, the quantized op it must leave in the graph, max relative logit error vs fp32)
METHODS = [
    ("ptqtp{planes=2,group=64}", "dequant_planes", 0.5),
    ("ptqtp{planes=2,group=64,calibrated=true}", "dequant_planes", 0.5),
    ("ternary", "dequant_planes", 1.0),
    ("int8{threshold=6.0}", "int8_linear", 0.05),
    ("squeezellm{bits=3}", "dequant_codebook", 0.5),
    ("nupes{bits=4}", "dequant_pow", 0.3),
    ("nupes{bits=4,mode=data}", "dequant_pow", 0.3),
    ("denseshift{bits=3}", "dequant_shift", 1.0),
    ("bfp{block=32}", "dequant_bfp", 0.05),
    ("dfloat11", "dfloat11_decode", 0.01),
    ("layercast", "cast", 0.01),
    ("rtn{bits=3,group=64}", "dequant_affine", 0.5),
]


@pytest.fixture(scope="module")
def llama() -> tuple[ir.Graph, np.ndarray, list[list[np.ndarray]], np.ndarray]:
    model, g, ids = tiny_llama()
    rng = np.random.default_rng(1)
    calib = [[rng.integers(0, 128, (1, 12)).astype(np.int64)] for _ in range(2)]
    return g, ids.numpy(), calib, ir.run(g, [ids.numpy()])[0]


@pytest.mark.parametrize("spec, op, tol", METHODS, ids=[m[0] for m in METHODS])
def test_method_verifies_round_trips_and_runs(llama, spec: str, op: str, tol: float, tmp_path) -> None:
    g, ids, calib, ref = llama
    q = PassManager(spec, context=PassContext(calibration=calib, progress=False)).run(g)  # verifies after the pass
    assert ir.count_ops(q).get(op, 0) > 0, f"{spec} left no {op}"
    assert ir.parse(str(q)) == q
    out = ir.run(q, [ids])[0]
    assert np.isfinite(out).all()
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel <= tol, f"{spec}: relative logit error {rel:.3g} > {tol}"
    c = compiler.compile(q, target="reference")  # quantize once (plus the default clean-up passes) ...
    want = np.asarray(c(ids))
    c.save(tmp_path / "m")
    loaded = compiler.load(tmp_path / "m", target="reference")  # ... deploy: no passes run again
    assert loaded.graph == c.graph
    np.testing.assert_array_equal(np.asarray(loaded(ids)), want)
