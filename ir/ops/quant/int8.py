"""LLM.int8(): int8 weights and activations with a 16-bit path for outlier features (Dettmers et al. 2022)."""
from __future__ import annotations

import math

import numpy as np

from ...shapes import TensorType
from ..base import Attr, Cost, OpDef, need, reads, register_op


def outlier_columns(X: np.ndarray, threshold: float) -> np.ndarray:
    """O = {j : max_t |X[t, j]| >= threshold} over the flattened tokens X [T, in]; no columns when
    the threshold is off (<= 0, inf or nan) or there are no tokens."""
    if not 0.0 < threshold < math.inf or X.shape[0] == 0:
        return np.zeros(X.shape[1], dtype=bool)
    return np.abs(X).max(axis=0) >= threshold


@register_op
class Int8Linear(OpDef):
    """y = x @ W^T + bias, W[o, i] = wq[o, i] * wscale[o] / 127, in LLM.int8()'s mixed precision.

    Over the flattened tokens X [T, in] (computed in f32, result in x's dtype):
      O        = {j : max_t |X[t, j]| >= threshold}            (none when threshold <= 0 or inf)
      outlier  = f16(X[:, O]) @ f16(Wdeq[:, O])^T, accumulated in f32; Wdeq = wq * wscale / 127 (f32)
      sx[t]    = max_{j not in O} |X[t, j]| / 127              (f32; a zero row has sx = 0)
      xq       = round_half_even(X[:, not O] / sx[t])           (int8 codes; 0 where sx = 0)
      acc      = xq @ wq[:, not O]^T                            (exact int32 sum)
      int8     = f32(acc * sx[t] * wscale[o] / 127)             (scaled in f64, left to right)
      y        = int8 + outlier + bias
    f16(v) rounds to nearest even, so an outlier beyond the f16 range is ±inf, as in a 16-bit kernel.
    """

    name = "int8_linear"
    operands = ("x", "wq", "wscale", "bias?")
    attrs = {"threshold": Attr("float", 6.0)}
    doc = ("LLM.int8() linear: x @ (wq * wscale / 127)^T + bias with row-wise absmax int8 activations; input "
           "columns with max |x| >= threshold take a f16 path (threshold <= 0 or inf: none); wq: i8[out, in], "
           "wscale: float[out]")

    def infer(self, ins, attrs):
        x, wq, s = ins[0], ins[1], ins[2]
        need(x.dtype.is_float, f"int8_linear: input must be floating point, got {x}")
        need(wq.dtype.name == "i8" and wq.rank == 2 and wq.is_static,
             f"int8_linear: wq must be a static i8[out, in], got {wq}")
        need(x.rank >= 1 and x.shape[-1] == wq.shape[1],
             f"int8_linear: input {x} does not match weight {wq} (needs x[..., {wq.shape[1]}])")
        need(s.dtype.is_float and s.shape == (wq.shape[0],), f"int8_linear: wscale {s} must be float[{wq.shape[0]}]")
        if len(ins) == 4:
            need(ins[3].shape == (wq.shape[0],) and ins[3].dtype == x.dtype,
                 f"int8_linear: bias {ins[3]} must be {x.dtype}[{wq.shape[0]}]")
        return TensorType(x.dtype, x.shape[:-1] + (wq.shape[0],))

    def weight(self, parts: list[np.ndarray], attrs) -> np.ndarray:
        """The weight this op multiplies by (activation rounding aside): for error reports."""
        wq, ws = parts[0], parts[1]
        return wq.astype(np.float32) * (ws.astype(np.float32) / np.float32(127))[:, None]

    def reference(self, ins, attrs):
        x, wq, ws = ins[0], ins[1], ins[2].astype(np.float32)
        n_out, n_in = wq.shape
        X = x.reshape(math.prod(x.shape[:-1]), n_in).astype(np.float32)  # T may be 0
        O = outlier_columns(X, attrs["threshold"])
        Xi = np.where(O, np.float32(0), X)  # the int8 part sees the outlier columns as zeros
        sx = np.abs(Xi).max(axis=1, initial=np.float32(0)) / np.float32(127)
        xq = np.clip(np.rint(Xi / np.where(sx > 0, sx, np.float32(1))[:, None]), -127, 127)
        # Exact int32 matmul in float64 BLAS: every product is an integer of size <= 127^2 and every
        # partial sum <= 127^2 * in < 2^53, so each addition is exact in any order (blocking, FMA).
        acc = xq.astype(np.float64) @ wq.T.astype(np.float64)
        y = (acc * sx.astype(np.float64)[:, None] * ws.astype(np.float64)[None, :] / 127).astype(np.float32)
        if O.any():  # f16 values multiply exactly in f32 (11 + 11 significant bits), so f32 BLAS accumulates them
            wd = (wq[:, O].astype(np.float32) * ws[:, None] / np.float32(127)).astype(np.float16)
            y += X[:, O].astype(np.float16).astype(np.float32) @ wd.astype(np.float32).T
        if len(ins) == 4:
            y += ins[3].astype(np.float32)
        return y.reshape(x.shape[:-1] + (n_out,)).astype(x.dtype, copy=False)

    def cost(self, ins, out, attrs):
        """M tokens, N rows, K inputs: 3 * M * K flops to find outlier columns and quantize x (column max,
        row |x| max, x / sx rounded), 2 * M * N * K integer ops for the int8 dots, 3 * M * N to rescale
        (x sx, x wscale, / 127), M * N for a bias. The f16 outlier path depends on the data: not counted."""
        x, wq = ins[0], ins[1]
        n, k = wq.shape
        m = x.numel() // k if k else 0
        return Cost(flops=3 * m * k + 3 * m * n + (m * n if len(ins) == 4 else 0), int_ops=2 * m * n * k,
                    reads=reads(ins), writes=out.nbytes())
