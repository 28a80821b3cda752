"""The op set. Importing this package registers every built-in op in `OPS`."""
from . import elementwise, moe, nn, quant, reduce, shape  # noqa: F401  (registration side effect)
from .base import OPS, Attr, Cost, OpDef, coerce_attr, get_op, register_op

__all__ = ["OPS", "Attr", "Cost", "OpDef", "coerce_attr", "get_op", "register_op"]
