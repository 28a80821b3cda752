"""Tritium's public API.

    import compiler
    compiled = compiler.compile(model, target="cpu")     # or "cuda" (Triton kernels), "reference"
    out = compiled(input_ids)
    m = compiler.compile_gguf("model.gguf")             # a llama.cpp file, its blocks kept as stored
"""
from __future__ import annotations

from typing import Any

__all__ = ["compile", "compile_gguf", "Compiled", "GGUFCompiled", "DEFAULT_PASSES", "load"]


def __getattr__(name: str) -> Any:
    # Lazy: `tritium opt`, `tritium passes` and plugin lookups must not pay for importing torch.
    if name == "load":
        from .artifact import load

        return load
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
