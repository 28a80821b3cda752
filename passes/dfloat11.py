"""DFloat11: lossless bf16 weights with Huffman-coded exponents (Zhang et al. 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES
from ir.ops.quant.dfloat11 import BF16, MAX_LEN, encode

from ._quant import Quantized, quantize_linears, source_weight
from .base import Pass, register_pass

U8, I64 = DTYPES["u8"], DTYPES["i64"]


def dfloat11(W: np.ndarray, block: int) -> Quantized:
    """W rounded to bf16 (to nearest even, as `cast`), then coded with its own exponent histogram."""
    with np.errstate(over="ignore"):  # beyond the bf16 range is inf, as in torch
        w16 = W.astype(BF16)
    stream, offsets, lengths, sm = encode(w16, block, max_len=MAX_LEN)
    return Quantized("dfloat11_decode", {"stream": (stream, U8), "offsets": (offsets, I64),
                                         "lengths": (lengths, U8), "sm": (sm, U8)}, {"block": block})


@register_pass
@dataclass(frozen=True)
class DFloat11(Pass):
    """Store linear weights as bf16, losslessly entropy-coded (DFloat11): about 11 bits a weight.

    Each selected weight W becomes `%w = dfloat11_decode(...)`, `%w.f32 = cast(%w) {dtype = f32}`
    in front of its linear (no cast when W is already bf16). Contract: the decoded weights are
    bit-identical to `W.astype(bf16)`, so the graph computes exactly what the bf16-weight graph
    (`cast(cast(@w) {dtype = bf16}) {dtype = f32}`, the layercast{dtype="bf16"} model) computes.
    Every exponent table is built from the weight's own histogram (length-limited canonical Huffman,
    codes of at most 24 bits), in blocks of `block` weights that decode independently.

    A compressed weight replaces every use of the float weight: with `head=true` an LM head tied
    to the token embedding also feeds the embedding, so the graph keeps a single copy and computes
    the all-bf16 model (layercast{head=true} instead keeps an f32 copy for the embedding, so on a
    tied model the two differ in the embedding lookup only). Re-running the pass changes nothing
    (its linears read decoded values, not parameters).
    """

    name = "dfloat11"
    block: int = 1024
    layers: str = "*"
    head: bool = False

    def run(self, g: ir.Graph) -> ir.Graph:
        if self.block < 1:
            raise ir.PassError(f"dfloat11: block must be >= 1, got {self.block}")
        old = {n.name for n in g.nodes}
        out = quantize_linears(g, lambda w, W: dfloat11(W, self.block), desc="dfloat11",
                               layers=self.layers, head=self.head)
        moved = False
        for dq in [n for n in out.nodes if n.op == "dfloat11_decode" and n.name not in old]:
            w = source_weight(dq)
            dt = g.params[w].dtype
            ref = dq.ref
            if dt != dq.type.dtype:  # back to the weight's own dtype: the linear computes as before
                cast = ir.Node(out.fresh_name(f"{w}.{dt}"), "cast", (dq.ref,), {"dtype": dt},
                               dq.type.with_dtype(dt), dq.loc)
                out.replace_uses(dq.ref, cast.ref)
                out.nodes.insert(out.nodes.index(dq) + 1, cast)
                ref = cast.ref
            if w in out.params:  # still read elsewhere (a tied embedding): read the decoded copy
                out.replace_uses("@" + w, ref)
                del out.params[w]
                out.weights.pop(w, None)
                moved = True
        if moved:
            out.topo_sort()
        return out
