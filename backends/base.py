"""What a backend is: a name, the capabilities it declares, and `build(graph) -> Executable`.

Passes ask capabilities (`"packed_weights" in backend.capabilities`), never target names.
Plugins add backends with `@register_backend`, like passes.
"""
from __future__ import annotations

from typing import ClassVar, Protocol, Sequence

import numpy as np

import ir
from ir import plugins
from ir.errors import CompileError


class Executable(Protocol):
    source: str | None  # generated code, where the backend generates code

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend:
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # Layout passes (a pipeline spec) this target runs after the user's pipeline: they live in
    # passes/ and show in the IR dumps; the backend only prints what they decided.
    lowering: ClassVar[str] = ""

    def build(self, g: ir.Graph) -> Executable:
        raise NotImplementedError


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    if cls.name in BACKENDS and BACKENDS[cls.name] is not cls:
        raise CompileError(f"backend {cls.name!r} is registered twice ({BACKENDS[cls.name].__module__} and {cls.__module__})")
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str) -> Backend:
    plugins.load_plugins()  # a plugin that fails to import raises PassError naming it: never swallowed
    if name not in BACKENDS:
        raise CompileError(f"unknown target {name!r}; known targets: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name]()
