"""Quantize once, deploy many times: a compiled model as a directory of plain data, no pickle.

    compiled.save("smollm2-ptqtp")          # model.ir + weights.safetensors + manifest.json
    m = compiler.load("smollm2-ptqtp", target="cpu")
    out = m(input_ids)

`manifest.json` records the format version, the pipeline that produced the graph, each parameter's
logical dtype and shape, its stored dtype and shape and a SHA-256 of its bytes, a SHA-256 of every
other file (`files`), how Python calls map onto the graph (pytree specs as JSON), and `digest`: a
SHA-256 over the rest of the manifest. `load` refuses what it cannot trust, each time with an
`ArtifactError` that names the file and the field: another format version, a file the manifest does
not list (or a listed one missing), a symlink, bytes that disagree with a hash, an IR that does not
parse or verify (unknown ops included), parameters whose stored shape or dtype disagree with the IR,
and output types outside an exact allow-list (rebuilding them imports their module).

The hashes catch corruption and careless edits; they are not a signature (whoever can write the
directory can rewrite the manifest too), which is why the type allow-list and the "no code, no
pickle" rule hold on their own.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

import ir
from ir.dtypes import pack, packed_len, unpack
from ir.errors import CompileError

FORMAT, VERSION = "tritium-artifact", 2
IR_FILE, WEIGHTS_FILE, MANIFEST_FILE = "model.ir", "weights.safetensors", "manifest.json"
FILES = (IR_FILE, WEIGHTS_FILE, MANIFEST_FILE)
# Output classes a manifest may name. Rebuilding one imports its module, so the module must be exactly
# one of these, or a submodule of an installed package listed with its dot (never a bare prefix:
# "builtins_evil" is not "builtins").
_TRUSTED_MODULES = frozenset({"builtins", "collections"})
_TRUSTED_PACKAGES = ("transformers",)


class ArtifactError(CompileError):
    """A saved artifact that is malformed, incomplete, tampered with or unsafe; names the file and field."""


def _stored(a: np.ndarray, t: ir.TensorType) -> np.ndarray:
    """Sub-byte codes are stored packed (a little-endian bit stream per row, as ir.dtypes.pack)."""
    return pack(a, t.dtype) if t.dtype.packed else np.ascontiguousarray(a)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write(path: Path, write: Callable[[str], None]) -> str:
    """Write one file of the artifact atomically (`write(tmp)` fills a temporary file, renamed over
    `path`) and return its SHA-256. A symlink at `path` is refused: writing through it would overwrite
    the file it points to."""
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symlink; an artifact is written only as regular files. Remove it or "
                            "save to another directory.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        digest = _file_digest(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _write_text(text: str) -> Callable[[str], None]:
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def save(g: ir.Graph, path: str | Path, *, imported: Any = None, target: str = "cpu", pipeline: str = "") -> Path:
    """Write `g` (verified) and its weights to the directory `path`."""
    ir.verify(g)
    missing = [p for p in g.params if p not in g.weights]
    if missing:
        raise CompileError(f"cannot save: parameters without data: {', '.join('@' + m for m in missing[:5])}")
    out = Path(path)
    if out.is_symlink():
        raise ArtifactError(f"{out} is a symlink; save to a real directory")
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    tensors, params = {}, {}
    for name, t in g.params.items():
        s = _stored(g.weights[name], t)
        tensors[name] = s
        params[name] = {"dtype": t.dtype.name, "shape": list(t.shape), "stored_dtype": str(s.dtype),
                        "stored_shape": list(s.shape), "sha256": _digest(s)}
    io = None
    if imported is not None and imported.in_spec is not None:
        from torch.utils import _pytree as pytree

        io = {"in_spec": pytree.treespec_dumps(imported.in_spec), "out_spec": pytree.treespec_dumps(imported.out_spec),
              "input_leaves": list(imported.input_leaves), "extra_kwargs": dict(imported.extra_kwargs)}
    files = {IR_FILE: _write(out / IR_FILE, _write_text(str(g))),
             WEIGHTS_FILE: _write(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))}
    manifest = {"format": FORMAT, "version": VERSION, "graph": IR_FILE, "weights": WEIGHTS_FILE, "target": target,
                "pipeline": pipeline, "params": params, "io": io, "files": files}
    manifest["digest"] = _manifest_digest(manifest)
    _write(out / MANIFEST_FILE, _write_text(json.dumps(manifest, indent=1)))
    return out


def _field(manifest: dict, key: str, kind: type, where: Path) -> Any:
    v = manifest.get(key)
    if not isinstance(v, kind):
        raise ArtifactError(f"{where}: field {key!r} must be a {kind.__name__}, got {type(v).__name__}")
    return v


def _check_files(d: Path, manifest: dict) -> None:
    """Exactly the listed files, regular (no symlinks), each with the bytes its hash says."""
    where = d / MANIFEST_FILE
    files = _field(manifest, "files", dict, where)
    if set(files) != {IR_FILE, WEIGHTS_FILE}:
        raise ArtifactError(f"{where}: field 'files' must list exactly {IR_FILE} and {WEIGHTS_FILE}, got {sorted(files)}")
    present = {p.name for p in d.iterdir()}
    extra = sorted(present - set(FILES))
    if extra:
        raise ArtifactError(f"{d}: files the manifest does not cover: {extra[:5]}. An artifact holds only "
                            f"{', '.join(FILES)}; remove the others (or re-save the model elsewhere).")
    for name in FILES:
        p = d / name
        if p.is_symlink():
            raise ArtifactError(f"{p} is a symlink; artifacts are loaded only from regular files")
        if not p.is_file():
            raise ArtifactError(f"{d}: {name} is missing or not a regular file")
        if name != MANIFEST_FILE and _file_digest(p) != files[name]:
            raise ArtifactError(f"{p}: its bytes do not match the manifest's SHA-256 in 'files' (modified or corrupt)")


def read(path: str | Path) -> tuple[ir.Graph, dict]:
    """Load and check an artifact: the graph with its weights bound, and the manifest."""
    d = Path(path)
    mf = d / MANIFEST_FILE
    if d.is_symlink() or mf.is_symlink():
        raise ArtifactError(f"{mf if mf.is_symlink() else d} is a symlink; artifacts are loaded only from regular files")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{d} is not a Tritium artifact: no {MANIFEST_FILE}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"{mf}: cannot be read as text ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf}: not a {FORMAT} manifest (field 'format')")
    if manifest.get("version") != VERSION:
        raise ArtifactError(f"{d}: artifact format version {manifest.get('version')!r}; this Tritium reads version "
                            f"{VERSION}. Re-save it with a matching Tritium.")
    if manifest.get("digest") != _manifest_digest(manifest):
        raise ArtifactError(f"{mf}: field 'digest' does not match the manifest's contents (modified or corrupt)")
    _check_files(d, manifest)
    try:
        g = ir.parse((d / IR_FILE).read_text(encoding="utf-8"))
    except ir.ParseError as e:
        raise ir.ParseError(f"{d / IR_FILE}: {e}", e.line, e.column) from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{d / IR_FILE}: not UTF-8 text") from None
    params = _field(manifest, "params", dict, mf)
    if set(params) != set(g.params):
        extra = sorted(set(params) - set(g.params))
        lost = sorted(set(g.params) - set(params))
        raise ArtifactError(f"{d}: manifest and IR disagree on parameters (only in manifest: {extra[:5]}, only in IR: {lost[:5]})")
    try:
        stored = load_file(str(d / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{d / WEIGHTS_FILE}: not a readable safetensors file ({e})") from None
    for name, t in g.params.items():
        meta, s = params[name], stored.get(name)
        if not isinstance(meta, dict):
            raise ArtifactError(f"{mf}: params[{name!r}] must be an object")
        if s is None:
            raise ArtifactError(f"{d}: {WEIGHTS_FILE} has no tensor for @{name}")
        want_shape = list(t.shape[:-1]) + [packed_len(t.shape[-1], t.dtype)] if t.dtype.packed else list(t.shape)
        if meta.get("dtype") != t.dtype.name or meta.get("shape") != list(t.shape):
            raise ArtifactError(f"{d}: @{name} is {meta.get('dtype')}{meta.get('shape')} in the manifest but {t} in the IR")
        want_dtype = np.dtype(np.uint8) if t.dtype.packed else t.dtype.np
        if list(s.shape) != want_shape or s.dtype != want_dtype:
            raise ArtifactError(f"{d}: stored @{name} is {s.dtype}{list(s.shape)}, expected {want_dtype}{want_shape} for {t}")
        if _digest(s) != meta.get("sha256"):
            raise ArtifactError(f"{d}: the bytes of @{name} do not match the manifest's SHA-256 (modified or corrupt)")
        g.weights[name] = unpack(s, t.dtype, t.shape[-1]) if t.dtype.packed else s
    ir.verify(g)
    return g, manifest


class Loaded:
    """A loaded artifact: call it like the compiled model it was saved from."""

    def __init__(self, g: ir.Graph, manifest: dict, target: str, path: str | Path = "."):
        from backends import get_backend

        from .pass_manager import lower

        backend = get_backend(target)
        self.graph, self.manifest, self.target = lower(backend, g), manifest, target
        self.executable = backend.build(self.graph)
        self._io = _io_specs(manifest.get("io"), Path(path), len(g.inputs), len(g.outputs))

    @property
    def source(self) -> str | None:
        return self.executable.source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from frontends.common import Imported, to_torch

        if self._io is None:  # a graph saved without a Python signature: arrays in, arrays out
            outs = self.executable([np.asarray(a) for a in args])
            return outs[0] if len(outs) == 1 else tuple(outs)
        from torch.utils import _pytree as pytree

        in_spec, out_spec, leaves, extra = self._io
        imp = Imported(self.graph, in_spec, leaves, out_spec, extra)
        xs = imp.graph_inputs(args, kwargs)
        if xs is None:
            raise CompileError("the call's arguments do not match the saved model's signature")
        outs = [to_torch(o) for o in self.executable(xs)]
        return pytree.tree_unflatten(outs, out_spec)


def _trusted_type(t: str, d: Path) -> None:
    """Import the module of an output type the manifest names, if it is on the allow-list: exactly
    `builtins` or `collections`, or a submodule of an installed trusted package that does not resolve
    into the artifact's directory or the working directory (where a planted package could shadow it)."""
    module = t.rpartition(".")[0]
    top = module.split(".")[0]
    if module not in _TRUSTED_MODULES and not (top in _TRUSTED_PACKAGES and module.startswith(top + ".")):
        raise ArtifactError(f"{d / MANIFEST_FILE}: field 'io' names the output type {t!r}, which is not from a trusted "
                            f"package (allowed: {', '.join(sorted(_TRUSTED_MODULES))}, "
                            f"{', '.join(p + '.*' for p in _TRUSTED_PACKAGES)})")
    if top in _TRUSTED_PACKAGES and top not in sys.modules:
        spec = importlib.util.find_spec(top)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is None or any(origin.is_relative_to(p.resolve()) for p in (d, Path.cwd())):
            raise ArtifactError(f"{d / MANIFEST_FILE}: output type {t!r} needs the package {top!r}, which is not "
                                "installed (or resolves into the artifact or working directory)")
    try:
        importlib.import_module(module)  # registers the type with pytree
    except ImportError as e:
        raise ArtifactError(f"{d / MANIFEST_FILE}: output type {t!r}: cannot import {module!r} ({e})") from None


def _io_specs(io: Any, d: Path, n_inputs: int, n_outputs: int) -> tuple | None:
    if io is None:
        return None
    from torch.utils import _pytree as pytree

    where = d / MANIFEST_FILE
    if not (isinstance(io, dict) and all(isinstance(io.get(k), str) for k in ("in_spec", "out_spec"))
            and isinstance(io.get("input_leaves"), list) and all(type(i) is int for i in io["input_leaves"])
            and isinstance(io.get("extra_kwargs"), dict)):
        raise ArtifactError(f"{where}: field 'io' must hold in_spec and out_spec (strings), input_leaves (integers) "
                            "and extra_kwargs (an object)")
    try:
        for spec in (io["in_spec"], io["out_spec"]):
            for t in _types_named(json.loads(spec)):
                _trusted_type(t, d)
        in_spec, out_spec = pytree.treespec_loads(io["in_spec"]), pytree.treespec_loads(io["out_spec"])
        leaves = list(io["input_leaves"])
        if len(leaves) != n_inputs or len(set(leaves)) != n_inputs or not all(0 <= i < in_spec.num_leaves for i in leaves):
            raise ArtifactError(f"{where}: field 'io': input_leaves {leaves[:8]} must name {n_inputs} distinct leaves "
                                f"(one per graph input) of the {in_spec.num_leaves} in in_spec")
        if out_spec.num_leaves != n_outputs:
            raise ArtifactError(f"{where}: field 'io': out_spec has {out_spec.num_leaves} leaves, the graph {n_outputs} outputs")
        return in_spec, out_spec, leaves, dict(io["extra_kwargs"])
    except ArtifactError:
        raise
    except Exception as e:  # json, pytree: a malformed spec
        raise ArtifactError(f"{where}: field 'io' holds a malformed pytree spec ({type(e).__name__}: {e})") from None


def _types_named(node: Any) -> list[str]:
    out = []
    if isinstance(node, list):
        for x in node:
            out += _types_named(x)
    elif isinstance(node, dict):
        if isinstance(node.get("type"), str):
            out.append(node["type"])
        for c in node.get("children_spec", []):
            out += _types_named(c)
    return out


def load(path: str | Path, target: str = "cpu") -> Loaded:
    """Load a saved model for `target` without re-running its passes."""
    g, manifest = read(path)
    return Loaded(g, manifest, target, path)


__all__ = ["save", "load", "read", "Loaded", "ArtifactError"]
