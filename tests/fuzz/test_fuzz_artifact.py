"""Fuzz surface "artifact": a tiny saved model (Llama, 3-bit RTN weights) whose manifest fields are replaced
by random JSON, whose files are flipped, truncated, extended, swapped for directories or symlinks, with extra
files (a planted Python module among them), resealed (the hashes and digest made to match, as anyone who can
write the directory can) or not. `compiler.load` gives a typed error or a model that runs with typed errors
only; no symlink is followed out of the directory and no planted code runs (docs/fuzzing.md).

    pytest tests/fuzz/test_fuzz_artifact.py
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_artifact.py
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzzing import BOUNDARY_INTS, failed, fuzz, json_values, ours
from hypothesis import strategies as st
from test_fuzz_ir import PIECES, WORDS

import compiler
from compiler.artifact import IR_FILE, MANIFEST_FILE, WEIGHTS_FILE, _file_digest, _manifest_digest
from frontends.hf_models import tiny

PLANTED = "open({marker!r}, 'w').write('ran')\n"  # what a planted module would do if it were ever imported


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(0))
    c = compiler.compile(tiny("llama"), (ids,), target="reference", passes="rtn{bits=3,group=16},dce")
    return c.save(tmp_path_factory.mktemp("artifact") / "llama")


def _reseal(d: Path) -> None:
    m = json.loads((d / MANIFEST_FILE).read_text())
    if isinstance(m, dict):
        if isinstance(m.get("files"), dict):
            m["files"] = {f: _file_digest(d / f) if (d / f).is_file() else h for f, h in m["files"].items()}
        m["digest"] = _manifest_digest(m)
        (d / MANIFEST_FILE).write_text(json.dumps(m))


def _paths(m: Any, at: tuple = ()) -> list[tuple]:
    """Every path to a value inside the manifest (dict keys and list indices)."""
    out = [at]
    if isinstance(m, dict):
        for k, v in m.items():
            out += _paths(v, at + (k,))
    elif isinstance(m, list):
        for i, v in enumerate(m):
            out += _paths(v, at + (i,))
    return out


@st.composite
def edits(draw: st.DrawFn) -> list[tuple]:
    """A list of edits to apply to a copy of the artifact (see `apply`)."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "io", "io", "drop", "ir", "ir", "bytes", "file", "link"]))
        if kind in ("field", "io", "drop"):
            out.append((kind, draw(st.integers(0, 10**6)), draw(json_values())))
        elif kind == "ir":
            out.append((kind, draw(st.integers(0, 10**6))))
        elif kind == "bytes":
            out.append((kind, draw(st.sampled_from([IR_FILE, WEIGHTS_FILE, MANIFEST_FILE])),
                        draw(st.sampled_from(["flip", "truncate", "append", "empty", "header"])),
                        draw(st.integers(0, 10**6)), draw(st.binary(min_size=1, max_size=16))))
        elif kind == "file":
            out.append((kind, draw(st.sampled_from([IR_FILE, WEIGHTS_FILE, MANIFEST_FILE, "extra.txt", "evil.py",
                                                    "transformers.py", "sub"])),
                        draw(st.sampled_from(["dir", "remove", "write"]))))
        else:
            out.append((kind, draw(st.sampled_from([IR_FILE, WEIGHTS_FILE, MANIFEST_FILE, "extra.ir", "."])),
                        draw(st.sampled_from(["secret", "dir", "dangling", "self"]))))
    return out + [("reseal", draw(st.sampled_from([True, True, True, False])))]


def apply(d: Path, secret: Path, marker: Path, es: list[tuple], ir_text: Any) -> Path:
    """Apply the edits to the artifact directory d; returns the path to load (d, or a symlink to it)."""
    load_at = d
    for e in es:
        kind = e[0]
        if kind in ("field", "io", "drop") and (d / MANIFEST_FILE).is_file() and not (d / MANIFEST_FILE).is_symlink():
            try:
                m = json.loads((d / MANIFEST_FILE).read_bytes())
            except ValueError:  # (UnicodeDecodeError is one)
                continue
            paths = [p for p in _paths(m) if kind != "io" or p[:1] == ("io",)] or [()]
            at = paths[e[1] % len(paths)]
            if not at:
                m = e[2]
            else:
                parent = m
                for k in at[:-1]:
                    parent = parent[k]
                if kind == "drop" and isinstance(parent, dict):
                    del parent[at[-1]]
                else:
                    parent[at[-1]] = e[2]
            (d / MANIFEST_FILE).write_text(json.dumps(m))
        elif kind == "ir" and (d / IR_FILE).is_file() and not (d / IR_FILE).is_symlink():
            text = ir_text((d / IR_FILE).read_bytes().decode("utf-8", "replace"), e[1])
            (d / IR_FILE).write_bytes(text.encode("utf-8", "surrogatepass"))  # a lone surrogate: bytes that are not UTF-8
        elif kind == "bytes" and (d / e[1]).is_file() and not (d / e[1]).is_symlink():
            p, how, at, data = d / e[1], e[2], e[3], e[4]
            b = bytearray(p.read_bytes())
            if how == "flip" and b:
                b[at % len(b)] ^= data[0] or 1
            elif how == "truncate":
                b = b[:at % (len(b) + 1)]
            elif how == "append":
                b += data
            elif how == "empty":
                b = bytearray()
            elif how == "header" and e[1] == WEIGHTS_FILE and len(b) > 8:  # safetensors: u64 header length, JSON
                b[at % 8] ^= data[0] or 1
            p.write_bytes(bytes(b))
        elif kind == "file":
            p = d / e[1]
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
            if e[2] == "dir":
                p.mkdir()
                (p / "x").write_text("x")
            elif e[2] == "write":
                p.write_text(PLANTED.format(marker=str(marker)))
        elif kind == "link":
            target = {"secret": secret, "dir": secret.parent, "dangling": d / "nowhere", "self": d}[e[2]]
            if e[1] == ".":
                load_at = d.parent / "link"
                if not load_at.exists():
                    load_at.symlink_to(d, target_is_directory=True)
                continue
            p = d / e[1]
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
            p.symlink_to(target)
        elif kind == "reseal" and e[1] and (d / MANIFEST_FILE).is_file() and not (d / MANIFEST_FILE).is_symlink():
            try:
                _reseal(d)
            except (ValueError, UnicodeDecodeError, OSError):
                pass
    return load_at


def check(saved: Path, es: list[tuple], ir_text: Any, target: str = "reference") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        secret, marker = root / "secret.txt", root / "ran"
        secret.write_text("secret: never read, never written\n")
        d = root / "art"
        shutil.copytree(saved, d)
        load_at = apply(d, secret, marker, es, ir_text)
        cwd = os.getcwd()
        os.chdir(d)  # a planted module in the working directory must not be imported either
        try:
            m = ours(compiler.load, load_at, target=target)
            if not failed(m):
                ours(m, torch.tensor([[1, 2, 3]]))
                ours(m, torch.tensor([[1, 2, 127, 0]]))
        finally:
            os.chdir(cwd)
        assert not marker.exists(), "a planted module ran"
        assert secret.read_text() == "secret: never read, never written\n"
        if not failed(m):
            assert "secret" not in str(m.manifest)


def mutate_ir(text: str, seed: int) -> str:
    """A mutation of model.ir drawn from `seed`: a boundary integer over a number, a word or piece inserted,
    a span deleted (the IR surface's vocabulary)."""
    rnd = random.Random(seed)
    for _ in range(rnd.randint(1, 3)):
        i = rnd.randrange(len(text) + 1)
        choice = rnd.random()
        if choice < 0.5:
            j = i
            while j < len(text) and text[j].isdigit():
                j += 1
            text = text[:i] + str(rnd.choice(BOUNDARY_INTS)) + text[j:]
        elif choice < 0.8:
            text = text[:i] + rnd.choice(WORDS + PIECES) + text[i:]
        else:
            text = text[:i] + text[min(len(text), i + rnd.randint(1, 30)):]
    return text


FOUND = [  # what fuzzing found: each failed with a plain Python error before its fix
    [("io", 290, [0, 2]), ("reseal", True)],  # input_leaves out of range: IndexError on the first call
    [("ir", 7), ("bytes", IR_FILE, "append", 0, b"\xff"), ("reseal", True)],  # model.ir not UTF-8: refused, typed
]


def test_artifact(saved: Path) -> None:
    fuzz("artifact", edits(), lambda es: check(saved, es, mutate_ir), examples=40, slow_s=60, found=FOUND)
