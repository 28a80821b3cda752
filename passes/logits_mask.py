"""Decoding hook point: mask the logits output with a token bitmask fed as a graph input.

    graph @g(..., %token_bitmask: i32[B, ceil(V/32)])    ->    %masked = mask_logits(%logits, %token_bitmask)
    return ..., %logits                                        return ..., %masked

A token whose bit is 0 gets -inf, so neither argmax nor sampling can pick it. The mask is an op in
the compiled graph (not only a Python callback) so that backends can fuse it into the LM head;
the decoding runtime (compiler/generate.py) fills the input from its hooks each step, and the
grammar engine fills it from its matcher.
"""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class LogitsMask(Pass):
    """Mask output `output` (by index; default the last) with a new input %token_bitmask."""

    name = "logits_mask"
    output: int = -1

    def run(self, g: ir.Graph) -> ir.Graph:
        if any(n == "token_bitmask" for n, _ in g.inputs):
            return g  # already masked
        if not g.outputs or not -len(g.outputs) <= self.output < len(g.outputs):
            raise ir.PassError(f"logits_mask: graph @{g.name} has no output {self.output}")
        g = g.copy()
        ref = g.outputs[self.output]
        t = g.types()[ref]
        if not t.dtype.is_float or t.rank < 1 or not isinstance(t.shape[-1], int):
            raise ir.PassError(f"logits_mask: output {ref} is {t}; it needs float logits with a static vocabulary axis")
        mask_t = ir.TensorType(ir.dtype("i32"), t.shape[:-1] + (-(-t.shape[-1] // 32),))
        g.inputs.append(("token_bitmask", mask_t))
        name = g.fresh_name("masked_logits")
        g.nodes.append(ir.Node(name, "mask_logits", (ref, "%token_bitmask"), {}, t))
        g.outputs[self.output] = "%" + name
        return g
