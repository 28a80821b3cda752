"""Graph -> graph passes, a registry of them by name, and the pipeline text that names them.

    from passes import parse_pipeline
    for p in parse_pipeline("constant_fold,cse,dce"):
        g = p.run(g)

Plugins add passes through the `tritium.plugins` entry-point group (see compiler/plugins.py).
"""
from .base import PASSES, Pass, get_pass, parse_pipeline, pass_origin, register_pass

from . import constant_fold, cse, dce  # noqa: E402,F401  (built-in passes register on import)

__all__ = ["PASSES", "Pass", "get_pass", "parse_pipeline", "pass_origin", "register_pass"]
