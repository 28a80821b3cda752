"""Tritium's graph IR: typed SSA graphs that round-trip through text.

    import ir
    g = ir.parse(text)          # lark grammar; ParseError with line and column
    ir.verify(g)                # VerifyError names the node
    outs = ir.run(g, [x])       # NumPy reference semantics of every op
    assert ir.parse(str(g)) == g
"""
from . import ops  # noqa: F401  (registers the built-in ops)
from .dtypes import DTYPES, DType, dtype
from .errors import CompileError, ParseError, PassError, TritiumError, UnsupportedOpError, VerifyError
from .graph import Graph, Node, count_ops
from .interpreter import RuntimeShapeError, run
from .ops import OPS, Attr, OpDef, register_op
from .parser import parse
from .printer import print_graph
from .shapes import Dim, TensorType
from .verifier import verify

__all__ = [
    "DTYPES", "DType", "dtype", "CompileError", "ParseError", "PassError", "TritiumError",
    "UnsupportedOpError", "VerifyError", "Graph", "Node", "count_ops", "RuntimeShapeError", "run",
    "OPS", "Attr", "OpDef", "register_op", "parse", "print_graph", "Dim", "TensorType", "verify",
]
