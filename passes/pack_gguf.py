"""Layout: linear layers and embeddings over GGUF blocks read the blocks themselves, never a decoded weight.

    %w = dequant_gguf(@w) {type = "q4_1", cols = K}
    %y = linear(%x, %w, @b)                  ->      %y = gguf_linear(%x, @w, @b) {type = "q4_1", cols = K}
    %e = embedding(%w, %ids)                 ->      %e = gguf_embedding(@w, %ids) {type = "q4_1", cols = K}

`gguf_linear` (ir/ops/quant/gguf_linear.py) multiplies by the blocks with integer dot products over int8
activations (the CPU kernels: backends/cpu/gguf_kernel.py); `gguf_embedding` decodes only the rows it
gathers, bit for bit what the embedding of the decoded table gives. A tied LM head is both: the embedding
and the head then read the same blocks, and the decoded table is never built. The blocks stay exactly as
the file holds them (no repacking), so every GGUF weight keeps one copy. (linear's operands share one
dtype, so x and the bias are f32 like the decoded weight: every such linear is rewritten.)

Error contract: gguf_embedding is exact; gguf_linear rounds each activation to one of 255 levels per 32
values (about 1e-3 to 1e-2 of a layer's output, as llama.cpp's Q8_0/Q8_1 activations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import ir

from .base import Pass, register_pass

# (op, operand holding the decoded weight) -> (new op, its operands from the node's and the dequant's)
RULES: dict[tuple[str, int], tuple[str, Callable[[ir.Node, ir.Node], tuple[str, ...]]]] = {
    ("linear", 1): ("gguf_linear", lambda n, dq: (n.operands[0], dq.operands[0], *n.operands[2:])),  # x, blocks, bias?
    ("embedding", 0): ("gguf_embedding", lambda n, dq: (dq.operands[0], n.operands[1])),  # decode the rows taken
}


@register_pass
@dataclass(frozen=True)
class PackGguf(Pass):
    """Rewrite linear(x, dequant_gguf(b)) into gguf_linear(x, b) (integer kernels over the blocks) and
    embedding(dequant_gguf(b), ids) into gguf_embedding(b, ids) (only the gathered rows are decoded)."""

    name = "pack_gguf"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        producer = {n.ref: n for n in g.nodes}
        for i, n in enumerate(g.nodes):
            for (op, k), (new_op, operands) in RULES.items():
                dq = producer.get(n.operands[k]) if n.op == op else None
                if dq is not None and dq.op == "dequant_gguf":
                    attrs = ir.OPS[new_op].normalize_attrs({"type": dq.attrs["type"], "cols": dq.attrs["cols"]})
                    g.nodes[i] = ir.Node(n.name, new_op, operands(n, dq), attrs, n.type, n.loc)
        used = {o for n in g.nodes for o in n.operands} | set(g.outputs)
        g.nodes = [n for n in g.nodes if n.op != "dequant_gguf" or n.ref in used]  # decoded tables nobody reads
        return g
