"""TEAL: training-free activation sparsity by magnitude (FasterDecoding/TEAL), WINA's baseline."""
from __future__ import annotations

from dataclasses import dataclass

import ir

from ._sparse import DEFAULT_LAYERS, sparsify_linears
from .base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class Teal(Pass):
    """For each selected linear, keep only the input entries with the largest |x_i| and zero the
    rest (a `sparsify` op without a scale). The options are WINA's (see passes/wina.py): sparsity,
    mode=topk|threshold (threshold: calibrated per layer from `calibration=` data, as TEAL's
    histograms), layers, per_layer, allocate=uniform|greedy (greedy: TEAL's block-wise search), prefix
    (the fraction of each prompt's first tokens left dense; the WINA reference's TEAL mode: 0.01).
    q/k/v (gate/up) read one input and get one mask: |x| alone does not depend on the layer.
    """

    name = "teal"
    sparsity: float = 0.5
    mode: str = "topk"
    layers: str = DEFAULT_LAYERS
    per_layer: str = ""
    allocate: str = "uniform"
    prefix: float = 0.0

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        return sparsify_linears(g, ctx, who=self.name, sparsity=self.sparsity, layers=self.layers,
                                per_layer=self.per_layer, mode=self.mode, scale_of=lambda ws, g: None, shared=True,
                                allocate=self.allocate, prefix=self.prefix)
