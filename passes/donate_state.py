"""Layout: state written by index_copy into a graph input that nothing else reads is written in place.

    graph @step(..., %kv_0: f32[1, 3, C, 64])                 %k = index_copy(%kv_0, %pos, %new) {axis = 2,
    %k = index_copy(%kv_0, %pos, %new) {axis = 2}      ->                                          inplace = true}

A KV-cache step graph takes each layer's cache as an input and returns it with the new positions
written. Copying the whole cache to write one position costs more than the step's attention at
short prefixes; with `inplace` the CPU backend writes into the input's buffer instead. That
donates the input: the caller must not use the array it passed (the decoding runtime passes each
step's outputs back in as the next step's inputs, and never looks at the old ones). Only an input
read by this one index_copy, and not itself a graph output, is donated.
"""
from __future__ import annotations

from dataclasses import dataclass

import ir

from .base import Pass, register_pass


@register_pass
@dataclass(frozen=True)
class DonateState(Pass):
    """Mark index_copy into an otherwise unread graph input as in place (the input is donated)."""

    name = "donate_state"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        inputs, users = {"%" + n for n, _ in g.inputs}, g.users()
        for n in g.nodes:
            x = n.operands[0] if n.operands else None
            if n.op == "index_copy" and x in inputs and len(users[x]) == 1 and x not in g.outputs:
                n.attrs["inplace"] = True
        return g
