"""Plugins: installed distributions that add passes through the `tritium.plugins` entry-point group.

    [project.entry-points."tritium.plugins"]
    example = "tritium_example_pass"          # a module: importing it registers its passes
    other = "my_pkg.setup:register"           # or a callable, called with no arguments

Loading is lazy (the pass registry calls `load_plugins()` when it is read) and idempotent. A plugin
that fails to load raises PassError naming it; it is retried, and fails again, on the next call.
"""
from __future__ import annotations

import importlib.metadata
from types import ModuleType

from ir.errors import PassError
from passes import base

GROUP = "tritium.plugins"
_loaded: set[tuple[str, str]] = set()  # (name, value) of entry points already loaded
_done = False  # every entry point found so far has loaded
_busy = False  # a plugin is loading and reads the registry: don't recurse


def load_plugins(force: bool = False) -> None:
    """Load every `tritium.plugins` entry point not loaded yet; `force` rescans installed ones."""
    global _done, _busy
    if _busy or (_done and not force):
        return
    _busy = True
    try:
        for ep in importlib.metadata.entry_points(group=GROUP):
            if (ep.name, ep.value) in _loaded:
                continue
            dist = ep.dist.name if ep.dist is not None else ep.name
            origin = f"plugin:{dist}"
            try:
                with base.registering_from(origin):
                    obj = ep.load()
                    if not isinstance(obj, ModuleType) and callable(obj):
                        obj()
            except Exception as e:  # a broken plugin must be loud, not silently missing
                raise PassError(f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to load: "
                                f"{type(e).__name__}: {e}") from e
            if isinstance(obj, ModuleType):  # it may have been imported before: label its passes anyway
                pkg = obj.__name__
                for name, cls in base._REGISTRY.items():
                    if cls.__module__ == pkg or cls.__module__.startswith(pkg + "."):
                        base._ORIGINS[name] = origin
            _loaded.add((ep.name, ep.value))
        _done = True
    finally:
        _busy = False
