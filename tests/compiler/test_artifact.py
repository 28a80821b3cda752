"""save/load: quantize once, deploy many times; a tampered or foreign artifact is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import compiler
import ir
from frontends.hf_models import tiny


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module, compiler.Compiled]:
    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 7))
    c = compiler.compile(model, (ids,), target="reference", passes="rtn{bits=3,group=16},dce")
    path = c.save(tmp_path_factory.mktemp("art") / "llama-rtn3")
    return path, model, c


def test_roundtrip_is_exact_and_keeps_the_output_structure(saved) -> None:
    path, model, c = saved
    assert {p.name for p in path.iterdir()} == {"model.ir", "weights.safetensors", "manifest.json"}
    m = compiler.load(path, target="reference")
    assert m.graph == c.graph and m.graph.same_weights(c.graph)
    ids = torch.randint(0, 128, (1, 11))  # another length than traced: the saved graph keeps the symbolic seq
    out, ref = m(ids), c(ids)
    assert type(out) is type(ref) and torch.equal(out.logits, ref.logits)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["pipeline"].startswith("rtn{bits=3,group=16")
    assert any(p["dtype"] == "i3" and p["stored_dtype"] == "uint8" for p in manifest["params"].values())


def test_packed_weights_are_smaller_on_disk(saved) -> None:
    path, model, _ = saved
    fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert (path / "weights.safetensors").stat().st_size < fp32


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_refuses_other_versions_and_foreign_manifests(saved, tmp_path) -> None:
    path = _copy(saved[0], tmp_path / "a")
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "version": 99}))
    with pytest.raises(ir.CompileError, match="version 99"):
        compiler.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ir.CompileError, match="not valid JSON"):
        compiler.load(path)
    with pytest.raises(ir.CompileError, match="no manifest.json"):
        compiler.load(tmp_path)


def test_refuses_tampered_shapes_bytes_and_ops(saved, tmp_path) -> None:
    src = saved[0]
    # a shape changed in the IR text
    p = _copy(src, tmp_path / "shape")
    text = (p / "model.ir").read_text()
    (p / "model.ir").write_text(text.replace("param @model.norm.weight: f32[64]", "param @model.norm.weight: f32[65]", 1))
    with pytest.raises(ir.TritiumError):
        compiler.load(p)
    # bytes changed in the weights file
    p = _copy(src, tmp_path / "bytes")
    t = load_file(str(p / "weights.safetensors"))
    t["model.norm.weight"] = t["model.norm.weight"] + np.float32(1)
    save_file(t, str(p / "weights.safetensors"))
    with pytest.raises(ir.CompileError, match="SHA-256"):
        compiler.load(p)
    # an op nobody registered
    p = _copy(src, tmp_path / "op")
    (p / "model.ir").write_text(text.replace("= silu(", "= evil(", 1))
    with pytest.raises(ir.ParseError, match="unknown op 'evil'"):
        compiler.load(p)
    # an output type from an untrusted module
    p = _copy(src, tmp_path / "type")
    m = json.loads((p / "manifest.json").read_text())
    m["io"]["out_spec"] = m["io"]["out_spec"].replace("transformers.modeling_outputs", "os")
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ir.CompileError, match="not from a trusted package"):
        compiler.load(p)


def test_ir_graph_artifact_takes_arrays(tmp_path) -> None:
    g = ir.parse("graph @g(%x: f32[3]) {\n  param @w: i4[3]\n  %c: f32[3] = cast(@w) {dtype = f32}\n"
                 "  %y: f32[3] = mul(%x, %c)\n  return %y\n}\n")
    g.weights["w"] = np.array([-8, 0, 7], np.int8)
    c = compiler.compile(g, target="reference", passes="")
    m = compiler.load(c.save(tmp_path / "g"), target="reference")
    assert np.array_equal(m(np.ones(3, np.float32)), [-8, 0, 7])
