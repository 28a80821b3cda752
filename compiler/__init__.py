"""Tritium's public API.

    import compiler
    compiled = compiler.compile(model, target="cpu")     # or "reference"; "cuda" once the Triton backend lands
    out = compiled(input_ids)
"""
from .api import DEFAULT_PASSES, Compiled, compile

__all__ = ["compile", "Compiled", "DEFAULT_PASSES"]
