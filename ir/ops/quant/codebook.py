"""Look-up-table grids and sparse corrections: SqueezeLLM's dense-and-sparse weights.

    %w.dq: f32[out, in] = dequant_codebook(@w.codes, @w.book) {dtype = f32}   # per-row codebook
    %w.sp: f32[out, in] = add_sparse(%w.dq, @w.idx, @w.val)                 # exact outliers
"""
from __future__ import annotations

import numpy as np

from ...dtypes import DTYPES
from ...shapes import TensorType
from ..base import Attr, COUNT, OpDef, need, register_op


@register_op
class DequantCodebook(OpDef):
    name = "dequant_codebook"
    operands = ("codes", "book")
    attrs = {"dtype": Attr("dtype", DTYPES["f32"])}
    doc = ("W[o, i] = book[o, codes[o, i]]: codes are unsigned b-bit indices (u2..u8) into a per-row "
           "table book: float[out, 2^b]; computed in f32")

    def infer(self, ins, attrs):
        c, b = ins
        need(c.dtype.kind == "uint" and c.dtype.bits <= 8, f"dequant_codebook: codes must be u2..u8, got {c}")
        need(c.rank == 2 and c.is_static, f"dequant_codebook: codes must be a static 2-D [out, in] tensor, got {c}")
        want = (c.shape[0], 2 ** c.dtype.bits)
        need(b.dtype.is_float and b.shape == want,
             f"dequant_codebook: book {b} must be float[{want[0]}, {want[1]}] (one {want[1]}-entry table per row of {c})")
        need(attrs["dtype"].is_float, f"dequant_codebook: dtype must be floating point, got {attrs['dtype']}")
        return TensorType(attrs["dtype"], c.shape)

    def reference(self, ins, attrs):
        codes, book = ins[0].astype(np.intp), ins[1].astype(np.float32)
        if codes.size and (codes.min() < 0 or codes.max() >= book.shape[1]):
            raise ValueError(f"codes outside [0, {book.shape[1] - 1}]")
        return np.take_along_axis(book, codes, axis=1).astype(attrs["dtype"].np)


@register_op
class AddSparse(OpDef):
    name = "add_sparse"
    operands = ("w", "idx", "val")
    doc = ("W = w; W.flat[idx[k]] += val[k] (row-major: idx = o * in + i). idx: i32[nnz], strictly "
           "increasing (so unique) and inside [0, out*in), checked when run; val: float[nnz]")

    def infer(self, ins, attrs):
        w, idx, val = ins
        need(w.rank == 2 and w.is_static and w.dtype.is_float, f"add_sparse: w must be a static float [out, in] tensor, got {w}")
        need(idx.dtype == DTYPES["i32"] and idx.rank == 1 and idx.is_static, f"add_sparse: idx must be i32[nnz], got {idx}")
        need(val.dtype.is_float and val.shape == idx.shape, f"add_sparse: val {val} must be float{list(idx.shape)} like idx {idx}")
        n = w.shape[0] * w.shape[1]  # type: ignore[operator]
        need(idx.shape[0] <= n, f"add_sparse: {idx.shape[0]} unique indices cannot fit in {w}")
        need(n <= 2**31, f"add_sparse: i32 indices cannot address {w}")
        return w

    def reference(self, ins, attrs):
        w, idx, val = ins
        i = idx.astype(np.int64)
        if i.size and (np.any(np.diff(i) <= 0) or i[0] < 0 or i[-1] >= w.size):  # numpy would wrap a -1
            bad = "not strictly increasing" if np.any(np.diff(i) <= 0) else f"outside [0, {w.size})"
            raise ValueError(f"add_sparse: indices {bad}")
        out = np.array(w, copy=True, order="C")
        out.reshape(-1)[i] += val.astype(w.dtype)
        return out


@register_op
class SparseLinear(OpDef):
    name = "sparse_linear"
    operands = ("x", "idx", "val")
    attrs = {"rows": Attr("int", bounds=COUNT), "cols": Attr("int", bounds=COUNT)}
    doc = ("y[..., o] = sum_k val[k] * x[..., i] over the entries idx[k] = o * cols + i (add_sparse's "
           "encoding: strictly increasing, checked when run): the sparse part of a linear, in f32")

    def infer(self, ins, attrs):
        x, idx, val = ins
        rows, cols = attrs["rows"], attrs["cols"]
        need(rows >= 1 and cols >= 1, f"sparse_linear: rows and cols must be >= 1, got {rows}, {cols}")
        need(x.dtype == DTYPES["f32"] and x.rank >= 1 and x.shape[-1] == cols,
             f"sparse_linear: x must be f32[..., {cols}], got {x}")
        need(idx.dtype == DTYPES["i32"] and idx.rank == 1 and idx.is_static, f"sparse_linear: idx must be i32[nnz], got {idx}")
        need(val.dtype.is_float and val.shape == idx.shape, f"sparse_linear: val {val} must be float{list(idx.shape)} like idx {idx}")
        need(rows * cols <= 2**31, f"sparse_linear: i32 indices cannot address {rows} x {cols}")
        return TensorType(DTYPES["f32"], (*x.shape[:-1], rows))

    def reference(self, ins, attrs):
        import scipy.sparse

        x, idx, val = ins
        rows, cols = attrs["rows"], attrs["cols"]
        i = idx.astype(np.int64)
        if i.size and (np.any(np.diff(i) <= 0) or i[0] < 0 or i[-1] >= rows * cols):
            bad = "not strictly increasing" if np.any(np.diff(i) <= 0) else f"outside [0, {rows * cols})"
            raise ValueError(f"sparse_linear: indices {bad}")
        M = scipy.sparse.csr_matrix((val.astype(np.float32), (i // cols, i % cols)), shape=(rows, cols))
        X = x.reshape(-1, cols).astype(np.float32)
        return np.asarray((M @ X.T).T, dtype=np.float32).reshape(*x.shape[:-1], rows)
