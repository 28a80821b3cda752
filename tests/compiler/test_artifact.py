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
from compiler.artifact import ArtifactError
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


def _reseal(path: Path, m: dict) -> None:
    """Rewrite the manifest with a valid digest, as an attacker who edits the directory can: the checks
    that do not rest on the hashes must hold on their own."""
    from compiler.artifact import _file_digest, _manifest_digest

    if isinstance(m.get("files"), dict):
        m["files"] = {f: _file_digest(path / f) for f in m["files"]}
    m["digest"] = _manifest_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


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
    _reseal(p, json.loads((p / "manifest.json").read_text()))
    with pytest.raises(ir.TritiumError):
        compiler.load(p)
    # bytes changed in the weights file
    p = _copy(src, tmp_path / "bytes")
    t = load_file(str(p / "weights.safetensors"))
    t["model.norm.weight"] = t["model.norm.weight"] + np.float32(1)
    save_file(t, str(p / "weights.safetensors"))
    _reseal(p, json.loads((p / "manifest.json").read_text()))
    with pytest.raises(ir.CompileError, match="SHA-256"):
        compiler.load(p)
    # an op nobody registered
    p = _copy(src, tmp_path / "op")
    (p / "model.ir").write_text(text.replace("= silu(", "= evil(", 1))
    _reseal(p, json.loads((p / "manifest.json").read_text()))
    with pytest.raises(ir.ParseError, match="unknown op 'evil'"):
        compiler.load(p)
    # an output type from an untrusted module
    p = _copy(src, tmp_path / "type")
    m = json.loads((p / "manifest.json").read_text())
    m["io"]["out_spec"] = m["io"]["out_spec"].replace("transformers.modeling_outputs", "os")
    _reseal(p, m)
    with pytest.raises(ArtifactError, match="not from a trusted package"):
        compiler.load(p)


def test_a_type_name_that_only_starts_like_a_trusted_module_runs_nothing(saved, tmp_path, monkeypatch) -> None:
    """Issue 27, item 1: `builtins_evil.Foo` was trusted by prefix and imported `builtins_evil.py`
    from the artifact directory when that was the working directory."""
    p = _copy(saved[0], tmp_path / "evil")
    (tmp_path / "ran").unlink(missing_ok=True)
    for mod in ("builtins_evil", "collections2", "transformers_x"):
        (p / f"{mod}.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('pwned')\n")
    monkeypatch.chdir(p)
    monkeypatch.syspath_prepend(str(p))
    for mod in ("builtins_evil", "collections2", "transformers_x"):
        m = json.loads((saved[0] / "manifest.json").read_text())
        m["io"]["out_spec"] = m["io"]["out_spec"].replace("transformers.modeling_outputs", mod)
        _reseal(p, m)
        with pytest.raises(ArtifactError):  # the extra .py files, or the type itself, are refused
            compiler.load(p)
        for f in ("builtins_evil.py", "collections2.py", "transformers_x.py"):
            (p / f).rename(tmp_path / f)  # even with the directory clean, the type is refused
        with pytest.raises(ArtifactError, match="not from a trusted package"):
            compiler.load(p)
        for f in ("builtins_evil.py", "collections2.py", "transformers_x.py"):
            (tmp_path / f).rename(p / f)
    assert not (tmp_path / "ran").exists()


def test_every_file_is_covered_by_the_hashes(saved, tmp_path) -> None:
    """Issue 27, item 3: an edited model.ir, an extra file, an edited manifest are all refused."""
    src = saved[0]
    p = _copy(src, tmp_path / "ir")
    text = (p / "model.ir").read_text()
    assert " = add(" in text
    (p / "model.ir").write_text(text.replace(" = add(", " = sub(", 1))  # still parses and verifies
    with pytest.raises(ArtifactError, match="model.ir.*SHA-256"):
        compiler.load(p)
    p = _copy(src, tmp_path / "extra")
    (p / "notes.txt").write_text("hi")
    with pytest.raises(ArtifactError, match="notes.txt"):
        compiler.load(p)
    p = _copy(src, tmp_path / "manifest")
    m = json.loads((p / "manifest.json").read_text())
    m["pipeline"] = "something else"
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="digest"):
        compiler.load(p)
    p = _copy(src, tmp_path / "missing")
    (p / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        compiler.load(p)


@pytest.mark.parametrize("field, value", [("params", []), ("files", "x"), ("io", {"in_spec": 1}),
                                          ("io", {"in_spec": "[", "out_spec": "[", "input_leaves": [], "extra_kwargs": {}})])
def test_malformed_manifest_fields_are_typed_errors(saved, tmp_path, field, value) -> None:
    p = _copy(saved[0], tmp_path / "m")
    m = json.loads((p / "manifest.json").read_text())
    m[field] = value
    _reseal(p, m)
    with pytest.raises(ArtifactError, match=field):
        compiler.load(p)


def test_io_leaves_that_do_not_fit_the_graph_are_typed_errors(saved, tmp_path) -> None:
    """Found by tests/fuzz/test_fuzz_artifact.py: input_leaves [0, 2] loaded, then the call raised IndexError."""
    from torch.utils import _pytree as pytree

    for i, (field, value) in enumerate([("input_leaves", [0, 2]), ("input_leaves", [0, 0]), ("input_leaves", []),
                                        ("out_spec", pytree.treespec_dumps(pytree.tree_flatten((1, 2, 3))[1]))]):
        p = _copy(saved[0], tmp_path / str(i))
        m = json.loads((p / "manifest.json").read_text())
        m["io"][field] = value
        _reseal(p, m)
        with pytest.raises(ArtifactError, match="field 'io'"):
            compiler.load(p, target="reference")


def test_symlinks_are_refused_on_load_and_on_save(saved, tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read or overwrite me\n")
    p = _copy(saved[0], tmp_path / "link")
    (p / "model.ir").unlink()
    (p / "model.ir").symlink_to(secret)
    with pytest.raises(ArtifactError, match="symlink") as e:
        compiler.load(p)
    assert "do not read" not in str(e.value)
    with pytest.raises(ArtifactError, match="symlink"):
        saved[2].save(p)
    assert secret.read_text() == "do not read or overwrite me\n"
    (tmp_path / "dirlink").symlink_to(saved[0], target_is_directory=True)
    with pytest.raises(ArtifactError, match="symlink"):
        compiler.load(tmp_path / "dirlink")


def test_save_over_an_artifact_replaces_it(saved, tmp_path) -> None:
    p = saved[2].save(tmp_path / "again")
    saved[2].save(p)
    assert {f.name for f in p.iterdir()} == {"model.ir", "weights.safetensors", "manifest.json"}
    compiler.load(p, target="reference")


def test_ir_graph_artifact_takes_arrays(tmp_path) -> None:
    g = ir.parse("graph @g(%x: f32[3]) {\n  param @w: i4[3]\n  %c: f32[3] = cast(@w) {dtype = f32}\n"
                 "  %y: f32[3] = mul(%x, %c)\n  return %y\n}\n")
    g.weights["w"] = np.array([-8, 0, 7], np.int8)
    c = compiler.compile(g, target="reference", passes="")
    m = compiler.load(c.save(tmp_path / "g"), target="reference")
    assert np.array_equal(m(np.ones(3, np.float32)), [-8, 0, 7])
