"""Linear layers and embeddings that read GGUF weight blocks as the file holds them.

`gguf_linear(x, blocks, bias?) {type, cols}` multiplies by the weight `dequant_gguf(blocks)` with
integer dot products, as llama.cpp's CPU kernels do; its reference *defines* the numerics the C
kernels (backends/cpu/gguf_kernel.py) reproduce. `gguf_embedding(blocks, ids)` decodes only the
rows it gathers, bit for bit `embedding(dequant_gguf(blocks), ids)`.

Activations (one format for every weight type: per 32 values, llama.cpp's Q8_1 with f32 scales).
For token m and chunk b (x[m, 32b : 32b + 32]):

    amax     = max |x|                       (NaN or inf in the chunk: d = NaN, q = 0, s = NaN)
    d[m, b]  = amax / 127                    (f32)
    q[m, i]  = clip(rint(x[m, i] / d), -127, 127)    (int8, rint = round half to even; q = 0 when d = 0)
    s[m, b]  = d * f32(sum_i q[m, i])        (f32)

acts = "q8x2" adds a second part: the residual R = x - f32(d * f32(q)) (|R| <= d / 2) quantized the same way,
and the output sums both parts' terms (below): about 15 bits per activation for twice the integer dots
(one outlier in a chunk leaves the other values a few int8 levels). On SmolLM2's Q4_1 file q8 costs +0.13%
perplexity over the float model, q8x2 on every linear 0.00%; passes/pack_gguf.py chooses.

Weights, per 32-value chunk b of row n (every type is this form; see `weight_codes`):

    w[n, i] = D[n, b] * (S[n, i // 16] * Q[n, i]) + Mc[n, b]

with Q the signed integer code (q4_0: nibble - 8, q4_1: nibble, q5_0: 5 bits - 16, q5_1: 5 bits,
q8_0: int8, q4_k/q5_k: the 4/5-bit code, q6_k: 6 bits - 32), S an integer sub-scale (1; k-quants:
the 6-bit scale of the 32-chunk, q6_k: the int8 scale of each 16), D the f16 block scale (k-quants:
the super-block's d) and Mc the min term (q4_1/q5_1: m; q4_k/q5_k: -(dmin * min_j) in f32; else 0).

Output (S * Q * q summed exactly in integers; each term exact in f64; summed in f64, rounded once):

    I[m, n, b] = sum_{i in chunk b} S[n, i // 16] * Q[n, i] * q[m, i]            (exact int32)
    y[m, n]    = f32( sum_b f64(f32(D[n, b] * d[m, b])) * I[m, n, b] + f64(Mc[n, b]) * f64(s[m, b])
                      + bias[n] )

Kernels sum the same terms in f32 in another order: integer parts are exact, only the f32
summation across chunks differs. Why s = d * sum(q) rather than the exact sum of x: the min term
then multiplies the same quantized activations as the code term, so the error is sum_i w_i e_i
over the *centered* weight (llama.cpp's choice), about half the error of using the exact sum.
A chunk with a NaN or inf makes every output of its token NaN; zeros and d = 0 give no NaN.
"""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, Cost, OpDef, need, reads, register_op
from ..shape import check_ids
from .gguf import _f16, _k_scales, check_blocks, dequantize, unpack_blocks

CHUNK = 32  # activation block: int8 codes with an f32 scale and sum
MINS = ("q4_1", "q5_1", "q4_k", "q5_k")  # types with a min term Mc


def quantize_acts(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f32 [M, K] (K a multiple of 32) -> (q int8 [M, K], d f32 [M, K / 32], s f32 [M, K / 32]) as the
    module doc defines them."""
    M, K = X.shape
    Xb = X.astype(np.float32).reshape(M, K // CHUNK, CHUNK)
    amax = np.abs(Xb).max(-1)
    bad = ~np.isfinite(amax)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.clip(np.rint(Xb / np.where(d > 0, d, np.float32(1))[..., None]), -127, 127)
    q = np.where(((d > 0) & ~bad)[..., None], q, 0).astype(np.int8)
    d[bad] = np.nan
    s = (d * q.sum(-1, dtype=np.int32).astype(np.float32)).astype(np.float32)
    return q.reshape(M, K), d, s


ACTS = ("q8", "q8x2")  # the activation formats: int8 codes, or int8 codes plus int8 codes of their residual


def act_parts(X: np.ndarray, acts: str = "q8") -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """f32 [M, K] -> the quantized parts whose sum approximates X: [quantize_acts(X)] for "q8"; for "q8x2"
    also quantize_acts(R) of the residual R = X - f32(d * f32(q)) (f32 arithmetic), |R| <= d / 2 per chunk,
    so the two parts carry about 15 bits per value (an outlier-heavy input, like a SwiGLU product, keeps
    its small values)."""
    X = X.astype(np.float32)
    parts = [quantize_acts(X)]
    if acts == "q8x2":
        q, d, _ = parts[0]
        M, K = X.shape
        with np.errstate(invalid="ignore", over="ignore"):
            R = X - (np.repeat(d, CHUNK, axis=1) * q.astype(np.float32)).astype(np.float32)
        parts.append(quantize_acts(R.astype(np.float32)))
    return parts


def weight_codes(blocks: np.ndarray, qtype: str, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """u8 [N, row_bytes] -> (Q int8 [N, cols], S int16 [N, cols / 16], D f32 [N, cols / 32], Mc f32
    [N, cols / 32] or None): w = D * (S * Q) + Mc per 32-chunk, as the module doc defines them. Q and the
    min terms are gguf.py's `unpack_blocks` codes and offsets; k-quants keep d and the integer sub-scales apart."""
    q, scale, minus = unpack_blocks(blocks, qtype, cols)
    N = q.shape[0]
    S = np.ones((N, cols // 16), np.int16)
    if qtype in ("q4_k", "q5_k", "q6_k"):
        b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(N, cols // 256, -1)
        if qtype == "q6_k":
            D, sc = _f16(b, 208), b[..., 192:208].view(np.int8)  # one int8 scale per 16 values
        else:
            D, sc = _f16(b, 0), np.repeat(_k_scales(b[..., 4:16])[0], 2, axis=-1)  # 6-bit, per 32
        S, D = sc.reshape(N, -1).astype(np.int16), np.repeat(D, 8, axis=1)
    else:
        D = scale
    Mc = None if minus is None else -minus  # q4_1/q5_1: m; k-quants: -(dmin * m)
    return q, S, D.astype(np.float32), Mc


def _check_blocks(op: str, blocks: TensorType, qtype: str, cols: int) -> None:
    need(blocks.dtype == DTYPES["u8"] and blocks.rank == 2 and isinstance(blocks.shape[1], int),
         f"{op}: blocks must be u8[rows, row_bytes] with a static row length, got {blocks}")
    try:
        check_blocks(qtype, cols, blocks.shape[1])  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"{op}: {str(e).removeprefix('dequant_gguf: ')}") from None


@register_op
class GgufLinear(OpDef):
    name = "gguf_linear"
    operands = ("x", "blocks", "bias?")
    attrs = {"type": Attr("str"), "cols": Attr("int", bounds=COUNT), "acts": Attr("str", "q8")}
    doc = ("x @ dequant_gguf(blocks)^T + bias with integer dots: x quantized per 32 values to int8 (scale amax/127 "
           "and the scaled code sum; acts = q8x2: plus the int8 codes of the residual), each 32-chunk's integer "
           "dot scaled in f32; see ir/ops/quant/gguf_linear.py")

    def infer(self, ins, attrs):
        x, blocks = ins[:2]
        qtype, cols = attrs["type"], attrs["cols"]
        _check_blocks("gguf_linear", blocks, qtype, cols)
        need(attrs["acts"] in ACTS, f"gguf_linear: acts must be one of {', '.join(ACTS)}, got {attrs['acts']!r}")
        need(x.dtype == DTYPES["f32"] and x.rank >= 1 and x.shape[-1] == cols,
             f"gguf_linear: x must be f32[..., {cols}], got {x}")
        out = blocks.shape[0]
        if len(ins) == 3:
            need(ins[2].dtype == DTYPES["f32"] and ins[2].shape == (out,), f"gguf_linear: bias must be f32[{out}], got {ins[2]}")
        return TensorType(DTYPES["f32"], (*x.shape[:-1], out))

    def reference(self, ins, attrs):
        x, blocks = ins[:2]
        cols = attrs["cols"]
        N = blocks.shape[0]
        Q, S, D, Mc = weight_codes(blocks, attrs["type"], cols)
        M, nb = x.size // cols if cols else 0, cols // CHUNK
        y = np.zeros((M, N), np.float64)
        for q, d, s in act_parts(x.reshape(-1, cols), attrs["acts"]):  # each part's terms, as for one
            qf = q.astype(np.float64)
            for b in range(nb):  # I exact in f64 (|I| < 2^24), dd * I exact (24 x 24 bits)
                c = slice(CHUNK * b, CHUNK * (b + 1))
                W = Q[:, c].astype(np.float64) * np.repeat(S[:, 2 * b:2 * b + 2], 16, axis=1)  # S * Q, exact
                dd = (d[:, b, None] * D[None, :, b]).astype(np.float32)
                y += dd.astype(np.float64) * (qf[:, c] @ W.T)
                if Mc is not None:
                    y += s[:, b, None].astype(np.float64) * Mc[None, :, b].astype(np.float64)
        if len(ins) == 3:
            y += ins[2].astype(np.float64)
        return y.astype(np.float32).reshape(*x.shape[:-1], N)

    def cost(self, ins, out, attrs):
        """M tokens, N rows, K = cols, nb = K / 32 chunks: quantizing x is 2 * M * K flops (|x| max, x / d
        rounded), 2 * M * nb (d, s) and M * K integer adds (the code sums); the dots are 2 * M * N * K
        integer ops; each (token, row, chunk) takes 3 flops (d * D, times I, accumulate), 5 with a min
        term; a bias M * N. The blocks are read once, at their stored bytes."""
        x, blocks = ins[:2]
        k = attrs["cols"]
        m, n, nb = x.numel() // k * (2 if attrs["acts"] == "q8x2" else 1), blocks.shape[0], k // CHUNK  # parts x tokens
        per_chunk = 5 if attrs["type"] in MINS else 3
        flops = 2 * m * k + 2 * m * nb + per_chunk * m * n * nb + (m * n if len(ins) == 3 else 0)
        return Cost(flops=flops, int_ops=2 * m * n * k + m * k, reads=reads(ins), writes=out.nbytes())


@register_op
class GgufEmbedding(OpDef):
    name = "gguf_embedding"
    operands = ("blocks", "ids")
    attrs = {"type": Attr("str"), "cols": Attr("int", bounds=COUNT)}
    doc = "embedding(dequant_gguf(blocks), ids), decoding only the rows it gathers (bit for bit the same)"

    def infer(self, ins, attrs):
        blocks, ids = ins
        _check_blocks("gguf_embedding", blocks, attrs["type"], attrs["cols"])
        need(ids.dtype.kind in ("int", "uint") and not ids.dtype.packed, f"gguf_embedding: ids must be an integer tensor, got {ids}")
        return TensorType(DTYPES["f32"], (*ids.shape, attrs["cols"]))

    def reference(self, ins, attrs):
        blocks, ids = ins
        check_ids(ids, blocks.shape[0])
        rows = blocks[ids.astype(np.int64).reshape(-1)]  # numpy's indexing rules, as embedding's
        return dequantize(rows, attrs["type"], attrs["cols"]).astype(np.float32).reshape(*ids.shape, attrs["cols"])

    def cost(self, ins, out, attrs):
        """The blocks of the rows it gathers (one per id, at most all) and the ids; 2 flops per value decoded."""
        blocks, ids = ins
        rows = min(ids.numel(), blocks.shape[0])
        return Cost(flops=2 * out.numel(), reads=(rows * blocks.shape[1], ids.nbytes()), writes=out.nbytes())
