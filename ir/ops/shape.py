"""Shape, layout and indexing ops. Every size is explicit (no -1): the frontend resolves them."""
from __future__ import annotations

import numpy as np

from ..dtypes import bool_
from ..errors import RuntimeShapeError
from ..shapes import Dim, TensorType, broadcast, div_exact, expr, fmt_shape, normalize_axis, numel, sub
from .base import VIEW_COST, Attr, Cost, OpDef, need, reads, register_op, same_dtype


@register_op
class Reshape(OpDef):
    name = "reshape"
    operands = ("x",)
    attrs = {"shape": Attr("dims")}
    doc = "same elements in row-major order, new shape (also squeeze/unsqueeze/view)"

    def infer(self, ins, attrs):
        t, shape = ins[0], tuple(attrs["shape"])
        need(expr(numel(t.shape)) == expr(numel(shape)), f"cannot reshape {t} to {fmt_shape(shape)}: element counts differ")
        return t.with_shape(shape)

    def reference(self, ins, attrs):
        return ins[0].reshape(attrs["shape"])

    def cost(self, ins, out, attrs):
        return VIEW_COST


@register_op
class Permute(OpDef):
    name = "permute"
    operands = ("x",)
    attrs = {"perm": Attr("ints")}
    doc = "out.shape[i] = x.shape[perm[i]] (also transpose)"

    def infer(self, ins, attrs):
        t, perm = ins[0], attrs["perm"]
        need(sorted(perm) == list(range(t.rank)), f"perm {perm} is not a permutation of the {t.rank} axes of {t}")
        return t.with_shape(t.shape[p] for p in perm)

    def reference(self, ins, attrs):
        return np.transpose(ins[0], attrs["perm"]).copy()  # not ascontiguousarray: it makes 0-d arrays 1-d

    def cost(self, ins, out, attrs):
        return VIEW_COST


@register_op
class Expand(OpDef):
    name = "expand"
    operands = ("x",)
    attrs = {"shape": Attr("dims")}
    doc = "broadcast x to shape (size-1 dims repeat, new leading dims are added)"

    def infer(self, ins, attrs):
        t, shape = ins[0], tuple(attrs["shape"])
        need(len(shape) >= t.rank, f"cannot expand {t} to the lower rank {fmt_shape(shape)}")
        for d, s in zip(t.shape[::-1], shape[::-1]):
            need(d == s or d == 1, f"cannot expand {t} to {fmt_shape(shape)}")
        return t.with_shape(shape)

    def reference(self, ins, attrs):
        return np.broadcast_to(ins[0], attrs["shape"]).copy()  # (ascontiguousarray makes 0-d arrays 1-d)

    def cost(self, ins, out, attrs):
        return VIEW_COST


@register_op
class Slice(OpDef):
    name = "slice"
    operands = ("x",)
    attrs = {"dim": Attr("int"), "start": Attr("dim", 0), "end": Attr("dim"), "step": Attr("int", 1)}
    doc = "x[..., start:end:step, ...] along dim; 0 <= start <= end <= size (the frontend clamps)"

    def infer(self, ins, attrs):
        t = ins[0]
        ax = normalize_axis(attrs["dim"], t.rank)
        start, end, step = attrs["start"], attrs["end"], attrs["step"]
        need(step >= 1, f"slice step must be >= 1, got {step}")
        size = t.shape[ax]
        if all(isinstance(v, int) for v in (start, end, size)):
            need(0 <= start <= end <= size, f"slice [{start}:{end}] is outside dim {ax} of {t}")
            n: Dim = -(-(end - start) // step)
        else:
            need(step == 1, "a slice with symbolic bounds must have step 1")
            n = sub(end, start)
        return t.with_shape(n if i == ax else d for i, d in enumerate(t.shape))

    def reference(self, ins, attrs):
        x = ins[0]
        ax = attrs["dim"] % x.ndim
        idx = tuple(slice(attrs["start"], attrs["end"], attrs["step"]) if i == ax else slice(None) for i in range(x.ndim))
        return np.ascontiguousarray(x[idx])

    def cost(self, ins, out, attrs):
        return VIEW_COST


@register_op
class Cat(OpDef):
    name = "cat"
    operands = ("xs*",)
    attrs = {"dim": Attr("int")}
    doc = "concatenate along dim"

    def infer(self, ins, attrs):
        dt = same_dtype(ins, "cat")
        rank = ins[0].rank
        need(all(t.rank == rank for t in ins), f"cat needs operands of one rank, got {', '.join(map(str, ins))}")
        ax = normalize_axis(attrs["dim"], rank)
        total: Dim = 0
        for t in ins:
            need(all(a == b for i, (a, b) in enumerate(zip(t.shape, ins[0].shape)) if i != ax),
                 f"cat along dim {ax}: shapes {', '.join(str(t) for t in ins)} differ elsewhere")
            total = total + t.shape[ax] if isinstance(total, int) and isinstance(t.shape[ax], int) else _add(total, t.shape[ax])
        return TensorType(dt, tuple(total if i == ax else d for i, d in enumerate(ins[0].shape)))

    def reference(self, ins, attrs):
        return np.concatenate(ins, axis=attrs["dim"] % ins[0].ndim)

    def cost(self, ins, out, attrs):
        return Cost(reads=reads(ins), writes=out.nbytes())  # a copy: no arithmetic


def _add(a: Dim, b: Dim) -> Dim:
    from ..shapes import add

    return add(a, b)


def picked_cost(ins: list[TensorType], out: TensorType) -> Cost:
    """A gather (gather, take, index): from x only the entries it picks (the result's count, at most x
    whole), the index tensors whole; no arithmetic."""
    x = ins[0]
    return Cost(reads=(min(out.nbytes(), x.nbytes()), *reads(ins[1:])), writes=out.nbytes())


def _int_index(t: TensorType, what: str) -> None:
    need(t.dtype.kind in ("int", "uint") and not t.dtype.packed, f"{what} must be an integer tensor, got {t}")


@register_op
class Gather(OpDef):
    name = "gather"
    operands = ("x", "index")
    attrs = {"dim": Attr("int")}
    doc = "out[i][j] = x[i][index[i][j]] along dim (torch.gather)"

    def infer(self, ins, attrs):
        x, idx = ins
        _int_index(idx, "gather's index")
        need(x.rank == idx.rank, f"gather needs index of the rank of x, got {x} and {idx}")
        normalize_axis(attrs["dim"], x.rank)
        return TensorType(x.dtype, idx.shape)

    def reference(self, ins, attrs):
        x, idx = ins
        ax = attrs["dim"] % x.ndim
        if any(i != ax and n > m for i, (n, m) in enumerate(zip(idx.shape, x.shape))):
            raise ValueError(f"gather: index {list(idx.shape)} is longer than x {list(x.shape)} off dim {ax}")
        # torch.gather only needs index.size(d) <= x.size(d) off the axis: crop x to match
        crop = tuple(slice(None) if d == ax else slice(0, idx.shape[d]) for d in range(x.ndim))
        return np.take_along_axis(x[crop], idx.astype(np.int64), axis=ax)

    def cost(self, ins, out, attrs):
        return picked_cost(ins, out)


@register_op
class Take(OpDef):
    name = "take"
    operands = ("x", "index")
    attrs = {"axis": Attr("int")}
    doc = "x's entries at the 1-D `index` along axis (np.take, torch.index_select): a channel permutation or selection"

    def infer(self, ins, attrs):
        x, idx = ins
        _int_index(idx, "take's index")
        need(idx.rank == 1, f"take's index must be 1-D, got {idx}")
        ax = normalize_axis(attrs["axis"], x.rank)
        return x.with_shape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])

    def reference(self, ins, attrs):
        x, idx = ins
        return np.take(x, idx.astype(np.int64), axis=attrs["axis"] % x.ndim)

    def cost(self, ins, out, attrs):
        return picked_cost(ins, out)


@register_op
class IndexCopy(OpDef):
    name = "index_copy"
    operands = ("x", "index", "src")
    attrs = {"axis": Attr("int"), "inplace": Attr("bool", False)}
    doc = ("x with x[..., index[i], ...] = src[..., i, ...] along axis (torch.index_copy; a KV-cache write); "
           "inplace: nothing reads x after this, so a backend may write into x's buffer (the donate_state pass)")

    def infer(self, ins, attrs):
        x, idx, src = ins
        _int_index(idx, "index_copy's index")
        need(idx.rank == 1, f"index_copy's index must be 1-D, got {idx}")
        ax = normalize_axis(attrs["axis"], x.rank)
        need(src.dtype == x.dtype and src.shape == x.shape[:ax] + idx.shape + x.shape[ax + 1:],
             f"index_copy: src {src} must be {x} with axis {ax} of the index's length {fmt_shape(idx.shape)}")
        return x

    def reference(self, ins, attrs):
        x, idx, src = ins
        ax = attrs["axis"] % x.ndim
        out = x.copy()
        out[(slice(None),) * ax + (idx.astype(np.int64),)] = src  # a repeated index keeps the last write
        return out

    def cost(self, ins, out, attrs):
        """In place: only the new entries move (the index and src read, src's bytes written); else x is copied too."""
        x, idx, src = ins
        if attrs["inplace"]:
            return Cost(reads=(0, idx.nbytes(), src.nbytes()), writes=src.nbytes())
        return Cost(reads=reads(ins), writes=out.nbytes())


@register_op
class Index(OpDef):
    name = "index"
    operands = ("x", "indices*")
    doc = "x[i0, i1, ...] with integer index tensors on the leading dims, broadcast together"

    def infer(self, ins, attrs):
        x, idx = ins[0], ins[1:]
        need(len(idx) <= x.rank, f"{len(idx)} indices for {x}")
        shape: tuple[Dim, ...] = ()
        for t in idx:
            _int_index(t, "an index")
            shape = broadcast(shape, t.shape)
        return TensorType(x.dtype, shape + x.shape[len(idx):])

    def reference(self, ins, attrs):
        return ins[0][tuple(i.astype(np.int64) for i in ins[1:])]

    def cost(self, ins, out, attrs):
        return picked_cost(ins, out)


@register_op
class Embedding(OpDef):
    name = "embedding"
    operands = ("weight", "ids")
    doc = "weight[ids]: one row per id"

    def infer(self, ins, attrs):
        w, ids = ins
        need(w.rank == 2, f"embedding weight must be 2-D, got {w}")
        _int_index(ids, "embedding ids")
        return TensorType(w.dtype, ids.shape + w.shape[1:])

    def reference(self, ins, attrs):
        w, ids = ins
        check_ids(ids, w.shape[0])
        return w[ids.astype(np.int64)]

    def cost(self, ins, out, attrs):
        """The rows it gathers (one per id, at most the whole table) and the ids; no arithmetic."""
        w, ids = ins
        rows = min(ids.numel(), w.shape[0])
        return Cost(reads=(rows * (w.nbytes() // w.shape[0] if w.shape[0] else 0), ids.nbytes()), writes=out.nbytes())


def check_ids(ids: np.ndarray, rows: int) -> None:
    """Embedding ids index a table of `rows` rows by NumPy's rule: -rows <= id < rows (a negative id counts
    from the end). Anything else is a RuntimeShapeError (the reference, and every backend where the ids
    enter, once per call: never a read past the table)."""
    if ids.size and (int(ids.min()) < -rows or int(ids.max()) >= rows):
        bad = int(ids[(ids < -rows) | (ids >= rows)].flat[0])
        raise RuntimeShapeError(f"token id {bad} is out of range for an embedding table of {rows} rows "
                                f"(ids must lie in [{-rows}, {rows - 1}])")


__all__ = ["bool_", "div_exact"]
