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
values (about 1e-3 to 1e-2 of a layer's output, as llama.cpp's Q8_0/Q8_1 activations), or, with
acts = q8x2, to the sum of that and its residual's codes (about 15 bits).

Option `acts` decides which linears take the two-part activations:
- "q8" (the default): every linear q8, llama.cpp's numerics (SmolLM2's Q4_1 file: perplexity 13.717
  against the float model's 13.699, +0.13%);
- "q8x2": every linear two-part (13.699: the float model's, to 4 digits), for about 1.4x the integer
  work of a q8 linear (single-thread kernel, cache-resident weights);
- "mlp": only those whose input is an MLP's activation product, the SwiGLU/GeGLU `mul(act(gate), up)`
  or a plain `gelu`/`silu`/`relu` output, whose outliers crush the small values (13.714: most of the
  error is elsewhere on SmolLM2).
Perplexities: the default Wikipedia set, target="cpu", measured on a loaded machine (the numbers do not
depend on load). The decode-speed cost of q8x2 in the whole step is not measured yet.
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


MODES = ("mlp", "q8", "q8x2")
ACTIVATIONS = ("silu", "gelu", "relu")


def _mlp_product(ref: str, producer: dict[str, ir.Node]) -> bool:
    """Is `ref` an MLP's activation product: act(x), or mul(act(gate), up) in either order?"""
    n = producer.get(ref)
    if n is None:
        return False
    if n.op in ACTIVATIONS:
        return True
    return n.op == "mul" and any(getattr(producer.get(o), "op", None) in ACTIVATIONS for o in n.operands)


@register_pass
@dataclass(frozen=True)
class PackGguf(Pass):
    """Rewrite linear(x, dequant_gguf(b)) into gguf_linear(x, b) (integer kernels over the blocks) and
    embedding(dequant_gguf(b), ids) into gguf_embedding(b, ids) (only the gathered rows are decoded)."""

    name = "pack_gguf"
    acts: str = "q8"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.acts not in MODES:
            raise ir.PassError(f"pack_gguf: acts must be one of {', '.join(MODES)}, got {self.acts!r}")

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        producer = {n.ref: n for n in g.nodes}
        for i, n in enumerate(g.nodes):
            for (op, k), (new_op, operands) in RULES.items():
                dq = producer.get(n.operands[k]) if n.op == op else None
                if dq is not None and dq.op == "dequant_gguf":
                    attrs = {"type": dq.attrs["type"], "cols": dq.attrs["cols"]}
                    if new_op == "gguf_linear":
                        two = self.acts == "q8x2" or (self.acts == "mlp" and _mlp_product(n.operands[0], producer))
                        attrs["acts"] = "q8x2" if two else "q8"
                    attrs = ir.OPS[new_op].normalize_attrs(attrs)
                    g.nodes[i] = ir.Node(n.name, new_op, operands(n, dq), attrs, n.type, n.loc)
        used = {o for n in g.nodes for o in n.operands} | set(g.outputs)
        g.nodes = [n for n in g.nodes if n.op != "dequant_gguf" or n.ref in used]  # decoded tables nobody reads
        return g
