"""Plugins: installed distributions that add passes or backends through the `tritium.plugins` entry-point group.

    [project.entry-points."tritium.plugins"]
    example = "tritium_example_pass"          # a module: importing it registers its passes
    other = "my_pkg.setup:register"           # or a callable, called with no arguments

This module sits in `ir/`, below `passes/` and `backends/`: their registries call `load_plugins()`
when they are read (lazy, idempotent), and learn which plugin is registering from `current_origin()`.
It imports neither of them, so there is no import cycle. A plugin that fails to load raises PassError
naming it; it is retried, and fails again, on the next call.
"""
from __future__ import annotations

import importlib.metadata
from contextlib import contextmanager
from types import ModuleType
from typing import Callable, Iterator

from .errors import PassError

GROUP = "tritium.plugins"
_loaded: set[tuple[str, str]] = set()  # (name, value) of entry points already loaded
_done = False  # every entry point found so far has loaded
_busy = False  # a plugin is loading and reads the registry: don't recurse
_origin: str | None = None  # "plugin:<dist>" while that plugin loads
# Registries relabel what a module plugin registered before it was loaded as a plugin (imported early):
# each gets (package name, origin) after every module plugin loads.
LABELERS: list[Callable[[str, str], None]] = []


def current_origin() -> str | None:
    """The plugin registering right now (`plugin:<distribution>`), or None outside a plugin's load."""
    return _origin


@contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Everything registered inside the block is labelled `origin`."""
    global _origin
    saved, _origin = _origin, origin
    try:
        yield
    finally:
        _origin = saved


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
                with registering_from(origin):
                    obj = ep.load()
                    if not isinstance(obj, ModuleType) and callable(obj):
                        obj()
            except Exception as e:  # a broken plugin must be loud, not silently missing
                raise PassError(f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to load: "
                                f"{type(e).__name__}: {e}") from e
            if isinstance(obj, ModuleType):  # it may have been imported before: label what it registered anyway
                for label in LABELERS:
                    label(obj.__name__, origin)
            _loaded.add((ep.name, ep.value))
        _done = True
    finally:
        _busy = False
