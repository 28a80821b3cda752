"""Layout: rewrite linear layers over low-bit weights into `lut_linear`, packed for the LUT kernels.

    %w = dequant_planes(@w.t, @w.alpha) {group = G}        %y = lut_linear(%x, @w.lut.bits,
    %y = linear(%x, %w, @b)                          ->          @w.lut.coef, @w.lut.offs, @b)

Bit-planes (see ir/ops/quant/lut.py for the op and its tile layout):
  * trit-planes (ptqtp, ternary): plane k is T_k = B+ - B-, two bit-planes with coefficients
    +alpha_k and -alpha_k, no offset;
  * uniform codes of at most `max_bits` bits (rtn): W = (q - z) * s; with u = q + 2^(b-1) for
    signed codes (u = q unsigned), u = sum_p 2^p B_p, so b bit-planes with coefficients s * 2^p and
    the offset -(2^(b-1) + z) * s per group (- z * s unsigned), one multiply per group sum of x;
  * per-row codebooks of at most `max_bits`-bit codes (squeezellm): 2^b - 1 AND-ed bit-planes with
    per-row coefficients, the Moebius transform of the book (`planes_from_codebook`); a sparse
    part (add_sparse between the codebook and the linear) becomes `sparse_linear` added to it.

Other weights, wider codes, non-f32 activations and groups the tables cannot follow (a group that
is not a multiple of 8 and shorter than a row) stay as they are; the pass says which on stderr.

Error contract: with table=f32, lut_linear computes the same sum as linear(x, dequant(...)) up to
float rounding (relative ~1e-6); with table=i16 (the default) or i8 (T-MAC's tables) each table
is quantized per block of tgroup activations, at most half a step, max|T| / (2 qmax), per lookup:
~1e-5 relative on a layer's output with i16, ~1e-2 with i8 (faster: half the lookups). Packing is exact: `unpack_bitplanes` returns the planes the weights were split into.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

import ir
from ir.dtypes import DTYPES
from ir.ops.quant.affine import expand_groups
from ir.ops.quant.lut import TABLES, pack_bitplanes

from ._quant import source_weight
from .base import Pass, register_pass


def planes_from_trits(t: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dequant_planes parts -> (0/1 planes [2K, out, in], coef [2K, ng, out] f32, offs [ng, out] f32)."""
    K, out, _ = t.shape
    B = np.stack([t == 1, t == -1], axis=1).reshape(2 * K, out, -1).astype(np.uint8)
    a = np.moveaxis(alpha.astype(np.float32), 2, 1)  # [K, ng, out]
    coef = np.stack([a, -a], axis=1).reshape(2 * K, *a.shape[1:])
    return B, coef, np.zeros(a.shape[1:], np.float32)


def planes_from_codes(q: np.ndarray, bits: int, signed: bool, scale: np.ndarray,
                      zero: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dequant_affine parts -> (0/1 planes [bits, out, in], coef [bits, ng, out], offs [ng, out])."""
    bias = 2 ** (bits - 1) if signed else 0
    u = (q.astype(np.int32) + bias).astype(np.uint8)
    B = np.stack([(u >> p) & 1 for p in range(bits)]).astype(np.uint8)
    s = scale.astype(np.float32).T  # [ng, out]
    z = zero.astype(np.float32).T if zero is not None else np.float32(0)
    coef = np.stack([s * np.float32(2**p) for p in range(bits)])
    return B, coef, (-(np.float32(bias) + z) * s).astype(np.float32)


def planes_from_codebook(codes: np.ndarray, book: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dequant_codebook parts -> (0/1 planes [2^b - 1, out, in], coef [2^b - 1, 1, out], offs [1, out]).

    A per-row table of a b-bit code is a multilinear polynomial in the code's bits: book[c] =
    sum over the bit sets m inside c of a[m], with a the Moebius transform of the book
    (a[m] = sum over t inside m of (-1)^(|m| - |t|) book[t]). Plane m is "every bit of m is set"
    (an AND of bit-planes), its coefficient a[m]; a[0] = book[0] is the offset. Exact in f64; the
    f32 coefficients round once (alternating sums: up to 2^b times the book's magnitude)."""
    c = codes.astype(np.int64)
    a = book.astype(np.float64).copy()  # [out, 2^b], Moebius transform in place, bit by bit
    for j in range(bits):
        hi = np.arange(2**bits)[(np.arange(2**bits) >> j) & 1 == 1]
        a[:, hi] -= a[:, hi ^ (1 << j)]
    masks = np.arange(1, 2**bits)
    B = np.stack([(c & m) == m for m in masks]).astype(np.uint8)
    return B, a[:, masks].T[:, None, :].astype(np.float32), a[:, :1].T.astype(np.float32)


DEQUANT = ("dequant_planes", "dequant_affine", "dequant_codebook")  # the weight forms pack_lut rewrites


@register_pass
@dataclass(frozen=True)
class PackLut(Pass):
    """Rewrite linear layers over trit-planes, <= `max_bits`-bit uniform codes and per-row codebooks
    into packed `lut_linear` (T-MAC lookup tables; `table` = i16, i8 or f32, quantized per `tgroup`
    activations)."""

    name = "pack_lut"
    table: str = "i16"
    tgroup: int = 64
    max_bits: int = 4

    def run(self, g: ir.Graph) -> ir.Graph:
        if self.table not in TABLES:
            raise ir.PassError(f"pack_lut: table must be one of {', '.join(TABLES)}, got {self.table!r}")
        top = 512 if self.table == "i16" else 1024  # int16 block sums
        if self.tgroup < 8 or self.tgroup % 8 or self.tgroup > top:
            raise ir.PassError(f"pack_lut: tgroup must be a multiple of 8 in 8..{top} for {self.table} tables, got {self.tgroup}")
        g = g.copy()
        types = g.types()
        producer = {n.ref: n for n in g.nodes}
        skipped: list[str] = []
        made: dict[str, list[str]] = {}  # dequant ref -> its packed parameters
        for lin in list(g.nodes):
            dq = producer.get(lin.operands[1]) if lin.op == "linear" else None
            sparse = None
            if dq is not None and dq.op == "add_sparse":  # squeezellm: codebook + exact sparse corrections
                base = producer.get(dq.operands[0])
                if base is None or base.op != "dequant_codebook" or any(o[1:] not in g.weights for o in dq.operands[1:]):
                    skipped.append(f"%{lin.name} (a sparse part on a weight that is not a bound codebook)")
                    continue
                sparse, dq = dq, base
            if dq is None or dq.op not in DEQUANT:
                continue
            why = self._unsupported(g, lin, dq, types)
            if why:
                skipped.append(f"%{lin.name} ({why})")
                continue
            cols = types[dq.ref].shape[1]
            group = dq.attrs.get("group", cols)  # a codebook is per row
            tg = self.tgroup if group >= cols or group % self.tgroup == 0 else group  # group % 8 == 0 here
            if dq.ref not in made:  # a weight read by several linears is packed once
                B, coef, offs = self._planes(g, dq)
                prefix = (source_weight(dq) or dq.name) + ".lut"
                made[dq.ref] = []
                for part, a, dt in (("bits", pack_bitplanes(B), "u8"), ("coef", coef, "f32"), ("offs", offs, "f32")):
                    name = f"{prefix}.{part}"
                    if name in g.params:
                        raise ir.PassError(f"pack_lut: parameter @{name} already exists; was the graph packed twice?")
                    g.params[name] = ir.TensorType(DTYPES[dt], a.shape)
                    g.weights[name] = np.ascontiguousarray(a)
                    made[dq.ref].append("@" + name)
            refs = made[dq.ref]
            op = ir.OPS["lut_linear"]
            attrs = op.normalize_attrs({"cols": cols, "group": group, "tgroup": tg, "table": self.table})
            name = g.fresh_name(lin.name + ".lut") if sparse else lin.name
            node = ir.Node(name, "lut_linear", (lin.operands[0], *refs, *lin.operands[2:]), attrs, lin.type, lin.loc)
            node.type = op.infer([types[o] if o[0] == "%" else g.params[o[1:]] for o in node.operands], attrs)
            new = [node]
            if sparse is not None:  # y = lut(x) + the sparse part times x, as two ops the backend can fuse
                sp_op = ir.OPS["sparse_linear"]
                sp_attrs = sp_op.normalize_attrs({"rows": node.type.shape[-1], "cols": cols})
                sp = ir.Node(g.fresh_name(lin.name + ".sparse"), "sparse_linear", (lin.operands[0], *sparse.operands[1:]),
                             sp_attrs, node.type, lin.loc)
                new += [sp, ir.Node(lin.name, "add", (node.ref, sp.ref), {}, node.type, lin.loc)]
            at = g.nodes.index(lin)
            g.nodes[at:at + 1] = new
        _drop_dead_dequant(g)
        if skipped:
            print(f"pack_lut: left {len(skipped)} linear layer(s) as they are: {', '.join(skipped[:5])}"
                  + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
        return g

    def _unsupported(self, g: ir.Graph, lin: ir.Node, dq: ir.Node, types: dict) -> str:
        if types[lin.operands[0]].dtype != DTYPES["f32"] or dq.attrs["dtype"] != DTYPES["f32"]:
            return "not f32"
        if any(o[0] != "@" or o[1:] not in g.weights for o in dq.operands):
            return "weights not bound"
        if len(lin.operands) == 3 and types[lin.operands[2]].dtype != DTYPES["f32"]:
            return "bias not f32"
        cols = types[dq.ref].shape[1]
        group = dq.attrs.get("group", cols)
        top = 512 if self.table == "i16" else 1024
        if group < cols and (group % 8 or (group % self.tgroup and group > top)):
            return f"group {group} is not a multiple of 8 (nor, above {top}, of tgroup {self.tgroup})"
        if dq.op in ("dequant_affine", "dequant_codebook") and g.params[dq.operands[0][1:]].dtype.bits > self.max_bits:
            return f"{g.params[dq.operands[0][1:]].dtype} codes are wider than max_bits={self.max_bits}"
        return ""

    def _planes(self, g: ir.Graph, dq: ir.Node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ws = [g.weights[o[1:]] for o in dq.operands]
        if dq.op == "dequant_planes":
            return planes_from_trits(ws[0], ws[1])
        if dq.op == "dequant_codebook":
            return planes_from_codebook(ws[0], ws[1], g.params[dq.operands[0][1:]].dtype.bits)
        dt = g.params[dq.operands[0][1:]].dtype
        return planes_from_codes(ws[0], dt.bits, dt.kind == "int", ws[1], ws[2] if len(ws) == 3 else None)


def _drop_dead_dequant(g: ir.Graph) -> None:
    """Remove the dequant nodes the rewrite left unused, and their parameters once nothing reads them."""
    dead: list[ir.Node] = []
    while True:  # an add_sparse goes first, then the codebook it read
        used = {o for n in g.nodes for o in n.operands} | set(g.outputs)
        now = [n for n in g.nodes if n.op in DEQUANT + ("add_sparse",) and n.ref not in used]
        if not now:
            break
        dead += now
        g.nodes = [n for n in g.nodes if n not in now]
    used = {o for n in g.nodes for o in n.operands} | set(g.outputs)
    for p in {o[1:] for n in dead for o in n.operands if o[0] == "@" and o not in used}:
        del g.params[p]
        g.weights.pop(p, None)


def lut_weight(g: ir.Graph, n: ir.Node) -> np.ndarray:
    """The dense f32 weight [out, cols] a lut_linear node multiplies by (for tests and reports)."""
    from ir.ops.quant.lut import unpack_bitplanes

    bits, coef, offs = (g.weights[o[1:]] for o in n.operands[1:4])
    cols, group = n.attrs["cols"], n.attrs["group"]
    B = unpack_bitplanes(bits, coef.shape[2], cols).astype(np.float32)
    W = sum(expand_groups(coef[p].T, group, cols) * B[p] for p in range(B.shape[0]))
    return (W + expand_groups(offs.T, group, cols)).astype(np.float32)
