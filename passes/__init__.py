"""Graph -> graph passes, a registry of them by name, and the pipeline text that names them.

    from passes import parse_pipeline
    for p in parse_pipeline("constant_fold,cse,dce"):
        g = p.run(g)

Plugins add passes through the `tritium.plugins` entry-point group (see ir/plugins.py).
"""
import importlib
import pkgutil

from .base import PASSES, Pass, PassContext, get_pass, parse_pipeline, pass_origin, register_pass

# Built-in passes register on import: every module here is a pass, except base and _helpers.
for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PASSES", "Pass", "PassContext", "get_pass", "parse_pipeline", "pass_origin", "register_pass"]
