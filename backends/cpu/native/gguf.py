"""Native lowerings of the GGUF ops: gguf_kernel.py's team functions pasted into the step's C file.

`gguf_linear_<type>` is called by every thread of the step's team (it splits its row tiles with orphaned
`omp for`), with its activation codes in an arena scratch slot; `gguf_embedding` decodes the gathered
rows with `gguf_dequant_row_<type>` (bit for bit dequant_gguf).
"""
from __future__ import annotations

import sympy

import ir

from .layout import numel
from .lowering import CLowering, Ctx, register_c_op


@register_c_op("gguf_linear")
def _gguf_linear(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    from .. import gguf_kernel

    q, K = node.attrs["type"], node.attrs["cols"]
    if q not in gguf_kernel.TYPES:
        return None
    x, w = ctx.contiguous(0), ctx.contiguous(1)
    bias = "NULL"
    if len(node.operands) == 3:
        ctx.contiguous(2)
        bias = "x2"
    M, N, acts = numel(x.shape[:-1]), w.shape[0], node.attrs["acts"]
    fn = f"gguf_linear_{q}" + ("_x2" if acts == "q8x2" else "")
    return CLowering(f"{fn}(x0, {ctx.c(M)}, x1, {ctx.c(N)}, {K}, {bias}, y, scratch);",
                     team=(gguf_kernel.c_source(q),), scratch=sympy.expand(gguf_kernel.scratch_bytes(q, M, K, acts)),
                     all_threads=True, synced=True)


@register_c_op("gguf_embedding")
def _gguf_embedding(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    from .. import gguf_kernel

    q, K = node.attrs["type"], node.attrs["cols"]
    if q not in gguf_kernel.TYPES:
        return None
    w, ids = ctx.contiguous(0), ctx.contiguous(1)
    V, row = w.shape
    body = (f"SHARE({ctx.c(numel(ids.shape))});\nfor (int64_t r = lo; r < hi; r++) {{\n"
            f"    const int64_t t = wrap((int64_t)x1[r], {ctx.c(V)});\n"
            f"    if (t < 0) {{ *err = ERR_INDEX; continue; }}\n"
            f"    gguf_dequant_row_{q}(x0 + t * {ctx.c(row)}, {K}, y + r * {K});\n}}")
    return CLowering(body, team=(gguf_kernel.c_source(q),))
