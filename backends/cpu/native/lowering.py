"""The registry of C lowerings: `register_c_op(op)(emitter)`, one emitter per op.

    @register_c_op("gguf_linear")
    def gguf_linear(node: ir.Node, graph: ir.Graph, ctx: Ctx) -> CLowering | None:
        x = ctx.contiguous(0)                        # operand layouts; a copy is made where asked
        return CLowering(body=f"gguf_linear_q4_1(x0, {ctx.c(rows)}, x1, N, K, NULL, y, scratch);",
                         team=(gguf_kernel.c_source("q4_1"),), scratch=ctx.sym(bytes), all_threads=True)

The codegen wraps `body` into one C function per node,

    /* %mul_3: f32[1, 4, s0, 16] = mul(%transpose, %unsqueeze_13) */
    static void op12_mul(int par, int *err, float *restrict y, const float *x0, const float *x1, SYMS) { body }

called by every thread of the step's one OpenMP team: `par` says whether the op shares its work
(`SHARE(n)` declares this thread's rows [lo, hi) of n: all threads' share when `par`, else thread 0
runs them all), `err` takes an error code (1: an index out of range, 2: out of memory), `y` is the
result (C-contiguous unless the lowering is a view), `x<j>` operand j (through its layout's strides,
or contiguous where the emitter asked `ctx.contiguous(j)`), `c<k>` the arrays it derived (`ctx.constant`:
weights as a kernel reads them, made once at build), `scratch` the `scratch` bytes, and SYMS
the graph's symbols `n0, n1, ...`. `team` texts (functions every op of that kind calls) are pasted
once per C file. An emitter returns None to decline a node: it then runs its Python kernel (or NumPy
reference) through a callback, and the build reports it as a fallback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sympy

import ir

from .layout import CDims, Layout, ctype, numel, sym_shape


@dataclass
class CLowering:
    body: str = ""  # C statements; empty for a pure view
    view: Layout | None = None  # the result's layout when it aliases operand 0 (reshape, slice, in-place write)
    team: tuple[str, ...] = ()  # C text pasted once per file (helpers the body calls)
    work: sympy.Expr | None = None  # elements of work, to decide `par` (default: the result's size)
    scratch: sympy.Expr | None = None  # bytes of scratch memory the body uses (`scratch`)
    all_threads: bool = False  # the body is a team function that splits itself (orphaned omp for): par = 1
    synced: bool = False  # (all_threads) it returns after a barrier of the whole team: the next op needs none


Emitter = Callable[[ir.Node, ir.Graph, "Ctx"], "CLowering | None"]
C_OPS: dict[str, Emitter] = {}


def register_c_op(*ops: str) -> Callable[[Emitter], Emitter]:
    """Decorator: `emitter(node, graph, ctx) -> CLowering | None` lowers every node of these ops to C."""
    def deco(fn: Emitter) -> Emitter:
        for op in ops:
            C_OPS[op] = fn
        return fn
    return deco


@dataclass
class Ctx:
    """What an emitter sees of its node: operand layouts, the result shape, C printing of dims."""

    node: ir.Node
    graph: ir.Graph
    layouts: list[Layout]
    types: list[ir.TensorType]  # operand types
    dims: CDims
    copies: set[int] = field(default_factory=set)  # operands the codegen copies to contiguous temporaries
    constants: list[np.ndarray] = field(default_factory=list)  # arrays the emitter derived (ctx.constant)

    @property
    def shape(self) -> tuple[sympy.Expr, ...]:
        return sym_shape(self.node.type)

    def layout(self, j: int) -> Layout:
        return self.layouts[j]

    def contiguous(self, j: int) -> Layout:
        """Operand j as a C-contiguous array: its own layout if it is one, else a copy's (made before the op)."""
        lay = self.layouts[j]
        if lay.contiguous:
            return lay
        self.copies.add(j)
        return Layout.fresh(f"copy{j}", lay.shape)

    def c(self, e: sympy.Expr | int) -> str:
        return self.dims.c(e)

    def ctype(self, j: int | None = None) -> str:
        """C type of the result (None) or of operand j."""
        return ctype(self.node.type if j is None else self.types[j]) or "void"

    def weight(self, j: int) -> np.ndarray | None:
        """Operand j's data when it is a parameter (for emitters that specialise on constants)."""
        o = self.node.operands[j]
        return self.graph.weights.get(o[1:]) if o.startswith("@") else None

    def constant(self, a: np.ndarray) -> str:
        """A C-contiguous array the body reads (e.g. weights padded or converted as a kernel wants them), held
        by the executable with the parameters: its name in the body, `c<k>` (a `const void *`)."""
        self.constants.append(np.ascontiguousarray(a))
        return f"c{len(self.constants) - 1}"

    def numel(self) -> sympy.Expr:
        return numel(self.shape)


__all__ = ["CLowering", "Ctx", "C_OPS", "Emitter", "register_c_op"]
