"""Neural-network ops: the units that quantization and backends rewrite."""
from __future__ import annotations

import numpy as np

from ..dtypes import bool_
from ..shapes import TensorType, broadcast, div_exact
from .base import Attr, KEEP, Cost, OpDef, float_only, need, reads, register_op, same_dtype, upcast16


@register_op
class Linear(OpDef):
    name = "linear"
    operands = ("x", "weight", "bias?")
    doc = "x @ weight.T + bias; weight is [out, in] (torch.nn.Linear)"

    def infer(self, ins, attrs):
        x, w = ins[0], ins[1]
        dt = same_dtype(ins, "linear")
        float_only(x, "linear")
        need(w.rank == 2 and x.rank >= 1 and x.shape[-1] == w.shape[1],
             f"linear: input {x} does not match weight {w} (needs x[..., {w.shape[1] if w.rank == 2 else '?'}])")
        if len(ins) == 3:
            need(ins[2].shape == (w.shape[0],), f"linear: bias {ins[2]} must be [{w.shape[0]}]")
        return TensorType(dt, x.shape[:-1] + (w.shape[0],))

    def reference(self, ins, attrs):
        x, w = upcast16(ins[0]), upcast16(ins[1])
        y = np.matmul(x, w.T)
        if len(ins) == 3:
            y = y + upcast16(ins[2])
        return y.astype(ins[0].dtype, copy=False)

    def cost(self, ins, out, attrs):
        """2 * M * N * K multiply-adds (M rows of x, N outputs, K inputs), plus M * N for the bias;
        the weight is read once, whatever M."""
        n_out, k = ins[1].shape
        m = ins[0].numel() // k if k else 0
        return Cost(flops=2 * m * n_out * k + (m * n_out if len(ins) == 3 else 0), reads=reads(ins), writes=out.nbytes())


@register_op
class Matmul(OpDef):
    name = "matmul"
    operands = ("a", "b")
    doc = "numpy.matmul: batched, broadcasting leading dims; 1-D operands are vectors"

    def infer(self, ins, attrs):
        a, b = ins
        dt = same_dtype(ins, "matmul")
        need(a.rank >= 1 and b.rank >= 1, f"matmul of a scalar: {a}, {b}")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.rank == 1 else b.shape[-2]
        need(k_a == k_b, f"matmul: inner dims differ in {a} @ {b}")
        batch = broadcast(a.shape[:-2], b.shape[:-2])
        m = a.shape[-2:-1] if a.rank >= 2 else ()
        n = b.shape[-1:] if b.rank >= 2 else ()
        return TensorType(dt, batch + m + n)

    def reference(self, ins, attrs):
        return np.matmul(upcast16(ins[0]), upcast16(ins[1])).astype(ins[0].dtype, copy=False)

    def cost(self, ins, out, attrs):
        """2 * K multiply-adds per result element (batch * M * N of them); each operand read once, even
        when it is broadcast over the batch."""
        return Cost(flops=2 * out.numel() * ins[0].shape[-1], reads=reads(ins), writes=out.nbytes())


class NormBase(OpDef):
    attrs = {"eps": Attr("float", 1e-5), "axes": Attr("int", 1)}

    def infer(self, ins, attrs):
        x = ins[0]
        float_only(x, self.name)
        same_dtype(ins, self.name)
        k = attrs["axes"]
        need(1 <= k <= x.rank, f"{self.name} over the last {k} axes of {x}")
        for t in ins[1:]:
            need(t.shape == x.shape[-k:], f"{self.name}: affine {t} must have shape of the last {k} axes of {x}")
        return x

    per_element = 0  # operations per element of x before the affine parameters

    def cost(self, ins, out, attrs):
        """Per element of x: `per_element` operations, plus 1 for each of weight and bias; per
        normalised row, 3 (divide by the count, add eps, the reciprocal square root)."""
        x = ins[0]
        n = x.numel()
        row = 1
        for d in x.shape[x.rank - attrs["axes"]:]:
            row *= d
        rows = n // row if row else 0
        return Cost(flops=n * (self.per_element + len(ins) - 1) + 3 * rows, reads=reads(ins), writes=out.nbytes())


@register_op
class LayerNorm(NormBase):
    name = "layer_norm"
    operands = ("x", "weight?", "bias?")
    doc = "(x - mean) / sqrt(var + eps) * weight + bias over the last `axes` axes (biased var)"
    per_element = 5  # sum, subtract the mean, square, sum, scale

    def reference(self, ins, attrs):
        x = upcast16(ins[0])
        ax = tuple(range(x.ndim - attrs["axes"], x.ndim))
        mu = np.mean(x, axis=ax, keepdims=True)
        var = np.mean(np.square(x - mu), axis=ax, keepdims=True)
        y = (x - mu) / np.sqrt(var + np.asarray(attrs["eps"], x.dtype))
        if len(ins) > 1:
            y = y * upcast16(ins[1])
        if len(ins) > 2:
            y = y + upcast16(ins[2])
        return y.astype(ins[0].dtype, copy=False)


@register_op
class RmsNorm(NormBase):
    name = "rms_norm"
    operands = ("x", "weight?")
    doc = "x / sqrt(mean(x^2) + eps) * weight over the last `axes` axes"
    per_element = 3  # square, sum, scale

    def reference(self, ins, attrs):
        x = upcast16(ins[0])
        ax = tuple(range(x.ndim - attrs["axes"], x.ndim))
        y = x * (1.0 / np.sqrt(np.mean(x * x, axis=ax, keepdims=True) + np.asarray(attrs["eps"], x.dtype)))
        if len(ins) > 1:
            y = y * upcast16(ins[1])
        return y.astype(ins[0].dtype, copy=False)


@register_op
class Attention(OpDef):
    name = "sdpa"
    operands = ("q", "k", "v", "mask?")
    attrs = {"scale": Attr("float"), "causal": Attr("bool", False)}
    doc = ("softmax(q @ k^T * scale + mask) @ v over [batch, heads, seq, dim]; k/v may have fewer "
           "heads (grouped-query: each kv head serves heads/kv_heads query heads); a bool mask keeps "
           "True positions, a float mask is added; causal keeps key j <= query i (top-left aligned); a query "
           "row whose keys are all masked gives 0, as torch does")

    def infer(self, ins, attrs):
        q, k, v = ins[:3]
        dt = same_dtype(ins[:3], "sdpa")
        float_only(q, "sdpa")
        need(q.rank == k.rank == v.rank == 4, f"sdpa needs 4-D q, k, v, got {q}, {k}, {v}")
        need(q.shape[0] == k.shape[0] == v.shape[0], "sdpa: batch sizes differ")
        need(k.shape[1] == v.shape[1] and k.shape[2] == v.shape[2], f"sdpa: k {k} and v {v} differ")
        need(q.shape[3] == k.shape[3], f"sdpa: q {q} and k {k} head dims differ")
        need(div_exact(q.shape[1], k.shape[1]) is not None, f"sdpa: {q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
        if len(ins) == 4:
            m = ins[3]
            need(m.dtype == bool_ or m.dtype == dt, f"sdpa mask must be bool or {dt}, got {m}")
            broadcast(m.shape, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
        return TensorType(dt, q.shape[:3] + (v.shape[3],))

    def reference(self, ins, attrs):
        q, k, v = (upcast16(t) for t in ins[:3])
        rep = q.shape[1] // max(k.shape[1], 1)
        if rep > 1:
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(attrs["scale"], q.dtype)
        if attrs["causal"]:
            L, S = s.shape[-2:]
            s = np.where(np.tril(np.ones((L, S), dtype=bool)), s, -np.inf)
        if len(ins) == 4:
            m = ins[3]
            s = np.where(m, s, -np.inf) if m.dtype == np.bool_ else s + upcast16(m)
        with np.errstate(invalid="ignore"):
            mx = np.max(s, axis=-1, keepdims=True) if s.size else s
            e = np.exp(s - mx)
            p = e / np.sum(e, axis=-1, keepdims=True)
            p = np.where(mx == -np.inf, 0, p)  # every key masked: the row is 0, as in torch (not NaN)
        return np.matmul(p.astype(q.dtype), v).astype(ins[0].dtype, copy=False)

    def cost(self, ins, out, attrs):
        """Per score (B * H query heads * Lq queries * S keys): 2 * D for q.k, 1 scale, 1 mask (when
        given), 5 for the softmax (max, subtract, exp, sum, divide) and 2 * Dv for p @ v. q, k, v and
        the mask are read once each (grouped kv heads once, not once per query head)."""
        q, k, v = ins[:3]
        B, H, Lq, D = q.shape
        scores = B * H * Lq * k.shape[2]
        per = 2 * D + 1 + (1 if len(ins) == 4 else 0) + 5 + 2 * v.shape[3]
        return Cost(flops=scores * per, reads=reads(ins), writes=out.nbytes())


def bitmask_allows(bitmask: np.ndarray, n: int) -> np.ndarray:
    """bool [..., n]: bit j % 32 of word j // 32 (least significant first), as XGrammar's token bitmask."""
    little = np.ascontiguousarray(bitmask, dtype="<i4").view(np.uint8)
    return np.unpackbits(little, axis=-1, bitorder="little")[..., :n].astype(bool)


@register_op
class MaskLogits(OpDef):
    name = "mask_logits"
    operands = ("logits", "bitmask")
    doc = "logits where the token's bit is set in the int32 bitmask [..., ceil(V/32)], else -inf (a decoding hook)"

    def infer(self, ins, attrs):
        x, m = ins
        float_only(x, "mask_logits")
        need(x.rank >= 1 and isinstance(x.shape[-1], int), f"mask_logits needs a static vocabulary axis, got {x}")
        need(m.dtype.name == "i32" and m.shape == x.shape[:-1] + (-(-x.shape[-1] // 32),),
             f"mask_logits: bitmask must be i32[{', '.join(map(str, x.shape[:-1] + (-(-x.shape[-1] // 32),)))}], got {m}")
        return x

    def reference(self, ins, attrs):
        x, m = ins
        return np.where(bitmask_allows(m, x.shape[-1]), x, np.asarray(-np.inf, x.dtype))


def sparsify_keep(score: np.ndarray, keep: int, threshold: float) -> np.ndarray:
    """bool mask [..., D] of the entries `sparsify` keeps, from their scores |x| * scale.
    keep >= 0: the `keep` largest scores of each row, ties to the lower index; NaN ranks highest.
    keep < 0: every score above `threshold` (NaN too: a NaN is never silently dropped)."""
    if keep < 0:
        return ~(score <= threshold)
    D = score.shape[-1]
    if keep >= D:
        return np.ones(score.shape, bool)
    s = np.where(np.isnan(score), np.inf, score)
    order = np.argsort(-s, axis=-1, kind="stable")[..., :keep]  # stable: equal scores keep index order
    mask = np.zeros(score.shape, bool)
    np.put_along_axis(mask, order, True, axis=-1)
    return mask


@register_op
class Sparsify(OpDef):
    name = "sparsify"
    operands = ("x", "scale?")
    attrs = {"keep": Attr("int", -1, KEEP), "threshold": Attr("float", 0.0)}
    doc = ("x with all but its most important entries zeroed, per row: score = |x| * scale (scale [D], e.g. the "
           "next linear's column norms (WINA); no scale: |x| (TEAL)); keep >= 0 keeps the `keep` largest (ties to "
           "the lower index), keep = -1 keeps the scores above `threshold`")

    def infer(self, ins, attrs):
        x = ins[0]
        float_only(x, "sparsify")
        need(x.rank >= 1, f"sparsify needs at least one axis, got {x}")
        if len(ins) == 2:
            need(ins[1].shape == x.shape[-1:] and ins[1].dtype.is_float,
                 f"sparsify: scale must be a float vector [{x.shape[-1]}], got {ins[1]}")
        need(attrs["keep"] >= -1, f"sparsify: keep must be >= 0 (top-k) or -1 (threshold), got {attrs['keep']}")
        return x

    def reference(self, ins, attrs):
        x = ins[0]
        with np.errstate(invalid="ignore"):  # inf * 0 is a NaN score: kept, like every NaN
            score = np.abs(upcast16(x)) * (upcast16(ins[1]) if len(ins) == 2 else np.float32(1))
        return np.where(sparsify_keep(score, attrs["keep"], attrs["threshold"]), x, np.zeros((), x.dtype))


@register_op
class SparseInputLinear(OpDef):
    name = "sparse_input_linear"
    operands = ("x", "scale", "wt", "bias?")
    attrs = {"keep": Attr("int", -1, KEEP), "threshold": Attr("float", 0.0)}
    doc = ("linear(sparsify(x, scale) {keep, threshold}, wt.T) + bias, with the weight stored transposed: wt is "
           "[in, out], so the weights that input i multiplies are the contiguous row wt[i] and a kernel reads only "
           "the rows of the entries it keeps (pack_sparse makes it)")

    def infer(self, ins, attrs):
        x, scale, wt = ins[:3]
        dt = same_dtype([x, wt, *ins[3:]], "sparse_input_linear")
        float_only(x, "sparse_input_linear")
        need(x.rank >= 1 and wt.rank == 2 and wt.shape[0] == x.shape[-1],
             f"sparse_input_linear: input {x} does not match the transposed weight {wt} (needs wt[{x.shape[-1] if x.rank else '?'}, out])")
        need(scale.shape == x.shape[-1:] and scale.dtype.is_float,
             f"sparse_input_linear: scale must be a float vector [{x.shape[-1]}], got {scale}")
        if len(ins) == 4:
            need(ins[3].shape == (wt.shape[1],), f"sparse_input_linear: bias {ins[3]} must be [{wt.shape[1]}]")
        need(attrs["keep"] >= -1, f"sparse_input_linear: keep must be >= 0 (top-k) or -1 (threshold), got {attrs['keep']}")
        return TensorType(dt, x.shape[:-1] + (wt.shape[1],))

    def reference(self, ins, attrs):
        x, scale, wt = ins[:3]
        xs = Sparsify().reference([x, scale], attrs)
        return Linear().reference([xs, wt.T, *ins[3:]], {})

    def cost(self, ins, out, attrs):
        """Per token: 2 per input to score and select, then 2 * N per kept input (keep >= 0: `keep` of
        them; a threshold: every input, the bound); the weight rows of the kept inputs, at most all of
        them, are read once."""
        x, wt = ins[0], ins[2]
        k, n_out = wt.shape
        m = x.numel() // k if k else 0
        kept = k if attrs["keep"] < 0 else min(attrs["keep"], k)
        rows = min(m * kept, k)
        r = reads(ins)
        return Cost(flops=2 * m * k + 2 * m * kept * n_out + (m * n_out if len(ins) == 4 else 0),
                    reads=(r[0], r[1], rows * (r[2] // k if k else 0), *r[3:]), writes=out.nbytes())
