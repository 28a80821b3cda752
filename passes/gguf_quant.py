"""llama.cpp's block formats as a quantization method: f32 linears -> GGUF blocks, run by `gguf_linear`.

`compile_gguf` keeps a file's blocks as they are; this pass makes the same blocks from float weights,
with the `gguf` package's reference quantizer (llama.cpp's round-to-nearest per block), so any model
gets a Q8_0 head or Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 linears on the integer kernels. Its main use is an
8-bit LM head beside another method: `ptqtp{planes=2,group=64},gguf_quant{type=q8_0,layers=lm_head*,head=true}`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ir.dtypes import DTYPES
from ir.errors import PassError
from ir.ops.quant.gguf import BLOCKS, dequantize

from ._quant import Quantized, quantize_linears
from .base import Pass, register_pass

# The types the gguf package can make from floats (it has no NumPy quantizer for the K-quants).
QUANTIZABLE = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")


def gguf_blocks(W: np.ndarray, qtype: str) -> np.ndarray:
    """W [out, in] (in a multiple of 32) -> u8 [out, row_bytes] as llama.cpp quantizes it."""
    try:
        import gguf
        from gguf.quants import quantize
    except ImportError:
        raise PassError("gguf_quant needs the 'gguf' package: pip install gguf") from None
    return np.ascontiguousarray(quantize(np.ascontiguousarray(W, np.float32), gguf.GGMLQuantizationType[qtype.upper()]))


@register_pass
@dataclass(frozen=True)
class GgufQuant(Pass):
    """Quantize linears into llama.cpp blocks: `linear(x, @w)` -> `linear(x, dequant_gguf(@w.blocks))`
    (the CPU lowering `pack_gguf` turns that into `gguf_linear`, the integer kernels).

    Error contract: each weight equals `gguf.quants.dequantize(gguf.quants.quantize(W))` exactly, i.e. the
    file format's own round trip (Q8_0: |error| <= max|block| / 254 per block of 32). Linears whose input
    size is not a multiple of 32 are left as they are.
    """

    name = "gguf_quant"
    type: str = "q8_0"
    layers: str = "*"
    head: bool = False

    def run(self, g):
        if self.type not in QUANTIZABLE:
            raise PassError(f"gguf_quant: type {self.type!r} cannot be made from floats here; use one of "
                            f"{', '.join(QUANTIZABLE)} (K-quants come only from a .gguf file: compile_gguf)")
        elems = BLOCKS[self.type][0]

        def one(name: str, W: np.ndarray) -> Quantized | None:
            if W.shape[1] % elems:
                return None
            return Quantized("dequant_gguf", {"blocks": (gguf_blocks(W, self.type), DTYPES["u8"])},
                             {"type": self.type, "cols": W.shape[1]})

        return quantize_linears(g, one, desc=f"gguf_quant {self.type}", layers=self.layers, head=self.head)


__all__ = ["GgufQuant", "gguf_blocks", "dequantize"]
