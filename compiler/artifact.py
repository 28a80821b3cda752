"""Quantize once, deploy many times: a compiled model as a directory of plain data, no pickle.

    compiled.save("smollm2-ptqtp")          # model.ir + weights.safetensors + manifest.json
    m = compiler.load("smollm2-ptqtp", target="cpu")
    out = m(input_ids)

`manifest.json` records the format version, the pipeline that produced the graph, each parameter's
logical dtype and shape, its stored dtype and shape and a SHA-256 of its bytes, and how Python
calls map onto the graph (pytree specs as JSON). `load` refuses what it cannot trust: another
format version, an IR that does not parse or verify (unknown ops included), parameters whose
stored shape, dtype or bytes disagree with the manifest or the IR.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

import ir
from ir.dtypes import pack, packed_len, unpack
from ir.errors import CompileError

FORMAT, VERSION = "tritium-artifact", 1
IR_FILE, WEIGHTS_FILE, MANIFEST_FILE = "model.ir", "weights.safetensors", "manifest.json"
# Output classes a manifest may name: rebuilding them imports their module, so only trusted packages.
_TRUSTED_MODULES = ("builtins", "collections", "transformers.")


def _stored(a: np.ndarray, t: ir.TensorType) -> np.ndarray:
    """Sub-byte codes are stored packed (a little-endian bit stream per row, as ir.dtypes.pack)."""
    return pack(a, t.dtype) if t.dtype.packed else np.ascontiguousarray(a)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()


def save(g: ir.Graph, path: str | Path, *, imported: Any = None, target: str = "cpu", pipeline: str = "") -> Path:
    """Write `g` (verified) and its weights to the directory `path`."""
    ir.verify(g)
    missing = [p for p in g.params if p not in g.weights]
    if missing:
        raise CompileError(f"cannot save: parameters without data: {', '.join('@' + m for m in missing[:5])}")
    out = Path(path)
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
    (out / IR_FILE).write_text(str(g), encoding="utf-8")
    save_file(tensors, str(out / WEIGHTS_FILE))
    manifest = {"format": FORMAT, "version": VERSION, "graph": IR_FILE, "weights": WEIGHTS_FILE, "target": target,
                "pipeline": pipeline, "params": params, "io": io}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out


def read(path: str | Path) -> tuple[ir.Graph, dict]:
    """Load and check an artifact: the graph with its weights bound, and the manifest."""
    d = Path(path)
    try:
        manifest = json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompileError(f"{d} is not a Tritium artifact: no {MANIFEST_FILE}") from None
    except json.JSONDecodeError as e:
        raise CompileError(f"{d / MANIFEST_FILE}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CompileError(f"{d / MANIFEST_FILE}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CompileError(f"{d}: artifact format version {manifest.get('version')!r}; this Tritium reads version {VERSION}. "
                           "Re-save it with a matching Tritium.")
    try:
        g = ir.parse((d / IR_FILE).read_text(encoding="utf-8"))
    except ir.ParseError as e:
        raise ir.ParseError(f"{d / IR_FILE}: {e}", e.line, e.column) from None
    params = manifest.get("params")
    if not isinstance(params, dict) or set(params) != set(g.params):
        extra = sorted(set(params or {}) - set(g.params))
        lost = sorted(set(g.params) - set(params or {}))
        raise CompileError(f"{d}: manifest and IR disagree on parameters (only in manifest: {extra[:5]}, only in IR: {lost[:5]})")
    stored = load_file(str(d / WEIGHTS_FILE))
    for name, t in g.params.items():
        meta, s = params[name], stored.get(name)
        if s is None:
            raise CompileError(f"{d}: {WEIGHTS_FILE} has no tensor for @{name}")
        want_shape = list(t.shape[:-1]) + [packed_len(t.shape[-1], t.dtype)] if t.dtype.packed else list(t.shape)
        if meta.get("dtype") != t.dtype.name or meta.get("shape") != list(t.shape):
            raise CompileError(f"{d}: @{name} is {meta.get('dtype')}{meta.get('shape')} in the manifest but {t} in the IR")
        want_dtype = np.dtype(np.uint8) if t.dtype.packed else t.dtype.np
        if list(s.shape) != want_shape or s.dtype != want_dtype:
            raise CompileError(f"{d}: stored @{name} is {s.dtype}{list(s.shape)}, expected {want_dtype}{want_shape} for {t}")
        if _digest(s) != meta.get("sha256"):
            raise CompileError(f"{d}: the bytes of @{name} do not match the manifest's SHA-256 (modified or corrupt)")
        g.weights[name] = unpack(s, t.dtype, t.shape[-1]) if t.dtype.packed else s
    ir.verify(g)
    return g, manifest


class Loaded:
    """A loaded artifact: call it like the compiled model it was saved from."""

    def __init__(self, g: ir.Graph, manifest: dict, target: str):
        from backends import get_backend

        from .pass_manager import lower

        backend = get_backend(target)
        self.graph, self.manifest, self.target = lower(backend, g), manifest, target
        self.executable = backend.build(self.graph)
        self._io = _io_specs(manifest.get("io"))

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


def _io_specs(io: Any) -> tuple | None:
    if io is None:
        return None
    from torch.utils import _pytree as pytree

    for spec in (io["in_spec"], io["out_spec"]):
        for t in _types_named(json.loads(spec)):
            if not t.startswith(_TRUSTED_MODULES):
                raise CompileError(f"the manifest names the output type {t!r}, which is not from a trusted package")
            importlib.import_module(t.rsplit(".", 1)[0])  # registers the type with pytree
    return (pytree.treespec_loads(io["in_spec"]), pytree.treespec_loads(io["out_spec"]),
            [int(i) for i in io["input_leaves"]], dict(io["extra_kwargs"]))


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
    return Loaded(g, manifest, target)


__all__ = ["save", "load", "read", "Loaded"]
