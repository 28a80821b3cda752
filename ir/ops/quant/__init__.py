"""Quantized-weight ops: each rebuilds a weight (or a whole linear layer) from its stored parts.

Their NumPy reference implementations *define* what a quantized model computes; backends replace
`linear(x, dequant_*(...))` by fused kernels that never materialise the weight. One file per
family; every module in this package registers on import.
"""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
