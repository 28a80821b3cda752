"""LayerCast: 16-bit weight storage with fp32 compute, for reproducible outputs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES, DType

from ._quant import Quantized, quantize_linears
from .base import Pass, register_pass

STORAGE = ("bf16", "f16")


def layercast(W: np.ndarray, storage: DType, compute: DType) -> Quantized:
    """@w.<storage> = W rounded to nearest even in `storage` (NumPy/ml_dtypes convert like
    torch's `W.to(torch.bfloat16)`); `cast` widens it back to `compute` exactly."""
    with np.errstate(over="ignore"):  # beyond the 16-bit range is inf, as in torch
        w16 = W.astype(storage.np)
    return Quantized("cast", {storage.name: (w16, storage)}, {"dtype": compute})


@register_pass
@dataclass(frozen=True)
class Layercast(Pass):
    """LayerCast: store linear weights in 16 bits (`dtype` = bf16 or f16), compute in fp32.

    Each selected `linear(x, @w, bias?)` becomes `linear(x, cast(@w.bf16) {dtype = f32}, bias?)`:
    half the weight bytes, and the matmul itself stays the fp32 one, so results do not depend on
    a 16-bit accumulation order. Biases stay in fp32.

    Error contract: Ŵ = round-to-nearest-even of W in `dtype`, bit for bit what torch's
    `W.to(torch.bfloat16).float()` gives; |W - Ŵ| <= 2^-9 |W| for bf16 (2^-12 for f16, in range).
    """

    name = "layercast"
    dtype: str = "bf16"
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        if self.dtype not in STORAGE:
            raise ir.PassError(f"layercast: dtype must be one of {', '.join(STORAGE)}, got {self.dtype!r}")
        storage = DTYPES[self.dtype]
        # The cast goes back to the weight's own dtype (f32 for the models we import), so the linear still types.
        return quantize_linears(g, lambda w, W: layercast(W, storage, g.params[w].dtype), desc="layercast",
                                layers=self.layers, head=self.head)
