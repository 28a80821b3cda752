"""Block floating point with outlier rearrangement: W ≈ mant · 2^exp, one exponent per block of columns.

Rearrangement is a compile-time permutation of the channels of an activation, folded into the
weights so that it costs nothing at inference. `outlier_order` chooses the permutation of each
channel space (passes/fold_permutations.py: the tensors whose last axis must be permuted
together); `rearrange` states it as takes and folds them into the weights with fold_permutations.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

import ir
from ir.dtypes import DTYPES

from ._quant import Quantized, linear_input_moments, padded_groups, quantize_linears, select_linears
from .base import Pass, PassContext, register_pass
from .fold_permutations import ChannelSpace, channel_spaces, fold

E_MIN, E_MAX = -128, 127  # the i8 exponent range


# -- the quantizer ------------------------------------------------------------------------------
def block_exponents(amax: np.ndarray, qmax: int) -> np.ndarray:
    """The smallest e in [-128, 127] with amax <= qmax · 2^e, per block (-128 for an all-zero block)."""
    safe = np.where(amax > 0, amax, 1.0)
    e = np.clip(np.ceil(np.log2(safe / qmax)), E_MIN - 2, E_MAX + 2).astype(np.int32)
    e = np.where(amax > np.ldexp(float(qmax), e), e + 1, e)  # log2 may round across a power of two
    e = np.where(amax <= np.ldexp(float(qmax), e - 1), e - 1, e)
    return np.clip(np.where(amax > 0, e, E_MIN), E_MIN, E_MAX)


def bfp(W: np.ndarray, block: int, mbits: int) -> Quantized:
    """Mantissas rint(W / 2^e) in [-(2^(mbits-1) - 1), 2^(mbits-1) - 1] (symmetric), e from
    `block_exponents`: exact in f64, so |W - mant · 2^e| <= 2^(e-1) for every weight."""
    qmax = 2 ** (mbits - 1) - 1
    Wb, _ = padded_groups(W.astype(np.float64), block)
    amax = np.abs(Wb).max(-1)
    if amax.max(initial=0.0) > np.ldexp(float(qmax), E_MAX):
        raise ir.PassError(f"bfp: a weight of magnitude {amax.max():.3g} needs an exponent above {E_MAX}; use more mbits")
    e = block_exponents(amax, qmax)
    m = np.rint(np.ldexp(Wb, -e[..., None])).reshape(W.shape[0], -1)[:, : W.shape[1]]
    dt = DTYPES[f"i{mbits}"] if f"i{mbits}" in DTYPES else DTYPES["i8"]
    return Quantized("dequant_bfp", {"mant": (m.astype(np.int8), dt), "exp": (e.astype(np.int8), DTYPES["i8"])},
                     {"block": block})


# -- the rearrangement ---------------------------------------------------------------------------
def outlier_order(g: ir.Graph, space: ChannelSpace, weights: set[str],
                  moments: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Channels by decreasing outlier score, so that outliers share blocks. A channel's score sums,
    over the space's readers in `weights`, its column absmax max_o |W[o, j]| (with `moments`:
    E[x_j^2] · ||W[:, j]||), each reader's scores divided by their mean so that layers weigh alike."""
    score = np.zeros(space.size)
    for w in space.readers(g):
        if w not in weights:
            continue
        A = np.abs(g.weights[w].astype(np.float64))
        col = A.max(0) if moments is None else moments[w] * np.linalg.norm(A, axis=0)
        score += col / col.mean() if col.mean() > 0 else 0.0
    return np.argsort(-score, kind="stable")


def rearrange(g: ir.Graph, weights: set[str], moments: dict[str, np.ndarray] | None = None) -> ir.Graph:
    """Permute every channel space read by a linear whose weight is in `weights` by its
    `outlier_order`: stated as takes (each reader reads take(x, p) and take(W, p)), then folded into
    the weights by `fold_permutations`, so that the result has no takes."""
    g = g.copy()
    types = g.types()
    for sp in channel_spaces(g, weights):
        perm = g.fresh_param("bfp.perm")
        g.params[perm], g.weights[perm] = ir.TensorType(DTYPES["i64"], (sp.size,)), outlier_order(g, sp, weights, moments)
        nodes: list[ir.Node] = []
        for n in g.nodes:
            if n.op == "linear" and (n.operands[1], 1) in sp.members:
                (x, w), rest = n.operands[:2], n.operands[2:]
                xp = ir.Node(g.fresh_name(f"{n.name}.in"), "take", (x, "@" + perm), {"axis": -1}, types[x], n.loc)
                wp = ir.Node(g.fresh_name(f"{n.name}.w"), "take", (w, "@" + perm), {"axis": -1}, types[w], n.loc)
                nodes += [xp, wp]
                n.operands = (xp.ref, wp.ref) + rest
            nodes.append(n)
        g.nodes = nodes
    g, stay = fold(g)
    assert not stay, f"bfp: takes {stay} were not folded, but their spaces were permutable"
    return g


# -- the pass -----------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class Bfp(Pass):
    """Block floating point: W[o, i] = mant[o, i] · 2^exp[o, i // block], i8 exponents, `mbits`-bit
    mantissas, after an optional outlier rearrangement of input channels.

    Each block's exponent is the smallest for which its absmax fits the symmetric mantissa range
    ±(2^(mbits-1) - 1); mantissas round to nearest. Error contract: |W - Ŵ| <= 2^(exp-1), half a
    mantissa step, for every weight. Bits per weight: mbits + 8 / block.

    `rearrange`: before quantizing, the input channels of every linear are permuted so that
    outlier channels (by column absmax, or E[x_j^2] · ||W[:, j]|| when the pipeline has calibration
    data) share blocks instead of inflating the exponents of many. The permutation is folded into
    the weights wherever the activation's channels flow (see `channel_spaces`): on a Llama that is
    the whole residual stream, one permutation for all layers (embedding columns, o_proj and
    down_proj rows, every RMSNorm weight, the final norm, the lm_head columns; a tied embedding is
    one parameter and stays consistent), and each MLP's intermediate (gate_proj and up_proj rows,
    down_proj columns). The attention output (o_proj's input) comes from a reshape of the heads and
    keeps its order. Without quantization the rearranged graph computes the same outputs up to the
    order of float sums.
    """

    name = "bfp"
    block: int = 32
    mbits: int = 8
    rearrange: bool = True
    layers: str = "*"
    head: bool = False

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        if not 2 <= self.mbits <= 8:
            raise ir.PassError(f"bfp: mbits must be 2..8, got {self.mbits}")
        if self.block < 1:
            raise ir.PassError(f"bfp: block must be >= 1, got {self.block}")
        if self.rearrange:
            weights = {w for _, w in select_linears(g, self.layers, self.head)}
            moments = (linear_input_moments(g, ctx.calibration, weights, ctx.progress)
                       if ctx.calibration and weights else None)
            g = rearrange(g, weights, moments)

        def quantize(name: str, W: np.ndarray) -> Quantized:
            if not np.isfinite(W).all():
                raise ir.PassError(f"bfp: @{name} has non-finite weights")
            return bfp(W, self.block, self.mbits)

        return quantize_linears(g, quantize, desc=f"bfp{self.mbits}", layers=self.layers, head=self.head,
                                progress=ctx.progress)
