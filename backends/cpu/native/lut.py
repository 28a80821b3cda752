"""Native lowering of `lut_linear`: lut_kernel.py's team function, one specialisation per layer shape.

Every thread of the step's team calls `lut_<shape>_run` (it builds the tables, a barrier, then shares the
row tiles); its tables live in an arena scratch slot, and its coefficients and offsets are the padded
copies the per-op kernel reads too (whole tiles; coefficients as f16 where that is exact), held with the
step's parameters. Layers of one shape share one specialisation (the team text is pasted once per file).
"""
from __future__ import annotations

import sympy

import ir

from .layout import numel
from .lowering import CLowering, Ctx, register_c_op


@register_c_op("lut_linear")
def _lut_linear(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    from .. import lut_kernel

    spec = lut_kernel.spec_for(node, g)
    coef, offs = ctx.weight(2), ctx.weight(3)
    if spec is None or coef is None or offs is None:
        return None  # weights computed in the graph: the Python kernel
    x = ctx.contiguous(0)
    ctx.contiguous(1)  # the bits: a parameter, so contiguous
    bias = "NULL"
    if len(node.operands) == 5:
        ctx.contiguous(4)
        bias = "x4"
    c, o = spec.weights(coef, offs)
    N = numel(x.shape[:-1])
    body = (f"{spec.name}_run(par, x0, {ctx.c(N)}, x1, {ctx.constant(c)}, "
            f"{'(const float *)' + ctx.constant(o) if spec.has_offs else 'NULL'}, {bias}, y, scratch);")
    return CLowering(body, team=(spec.team(),), scratch=sympy.expand(N * spec.scratch_per_token), all_threads=True)
