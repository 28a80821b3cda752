"""Kernel templates: one per kind of materialized node. Each writes its kernel into a KernelBuilder
and returns how the host launches it (`Spec`). Operands are read through `b.value`, so whatever the
fusion plan inlined into them (elementwise chains, views, weight decoders, masks) is computed in
the template's loads.

    pointwise   any op with an expression (exprs.py): one program per BLOCK output elements
    reduce      sum / mean / amax / amin / argmax over any dims: one program per output element
    rowwise     softmax, log_softmax, rms_norm, layer_norm: one program per row, a loop per pass
    cumsum      one program per row, carrying the sum across chunks
    matmul      linear (+ bias) and batched matmul: BMxBN tiles, f32 accumulation in tl.dot
    sdpa        fused attention (flash-attention style online softmax; causal, bool/float masks, GQA)
    int8_linear LLM.int8(): outlier columns, row scales, then int8 x int8 -> int32 plus the f16 path
    dfloat11_decode  Huffman-coded bf16 weights: one lane per coded block, a loop over its symbols

Block sizes are constexprs the host picks per call (`Spec.constexprs`, host expressions).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

import ir
from ir.errors import CompileError

from .builder import KernelBuilder
from .exprs import EMITTERS, broadcast_coords, compute_type, literal, storage_type

BLOCK = 1024  # pointwise elements per program
RBLOCK = 1024  # reduction chunk


@dataclass
class Spec:
    grid: str  # host expression of the grid tuple (dims in host names, which are the kernel's too)
    numel: str  # host expression: skip the launch when it is 0
    constexprs: dict[str, str] = field(default_factory=dict)  # name -> host expression
    extra: dict[str, str] = field(default_factory=dict)  # the template's int params -> host expression


Template = Callable[[KernelBuilder, ir.Node], Spec]
TEMPLATES: dict[str, Template] = {}


def _registrar(table: dict[str, Any]) -> Callable[..., Callable[[Any], Any]]:
    def register(*ops: str) -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            for o in ops:
                table[o] = fn
            return fn
        return deco
    return register


template = _registrar(TEMPLATES)  # @template("sum", ...): a one-kernel template for these ops


def _pow2(n: int, lo: int = 16, hi: int = RBLOCK) -> int:
    p = lo
    while p < n and p < hi:
        p *= 2
    return p


def _block_for(b: KernelBuilder, dims: tuple) -> str:
    """A reduction chunk: the row's size rounded up to a power of two when static, else RBLOCK."""
    if all(isinstance(d, int) for d in dims):
        n = 1
        for d in dims:
            n *= d
        return str(_pow2(n))
    return str(RBLOCK)


def pointwise(b: KernelBuilder, n: ir.Node) -> Spec:
    out = b.out()
    b.constexpr_param("BLOCK")
    numel = b.size(n.type.shape)
    b.line("offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)")
    b.line(f"m = offs < {numel}")
    coords = b.unravel("offs", n.type.shape, "c")
    v = EMITTERS[n.op](b, n, coords, "m")
    b.line(f"tl.store({out} + offs, tl.cast({v}, {storage_type(n.type.dtype)}), mask=m)")
    return Spec(grid=f"(triton.cdiv({numel}, {BLOCK}),)", numel=numel, constexprs={"BLOCK": str(BLOCK)})


# -- reductions -------------------------------------------------------------------------------------
def _split(shape: tuple, red: list[int]) -> tuple[tuple, tuple]:
    return tuple(d for i, d in enumerate(shape) if i not in red), tuple(shape[i] for i in red)


def _row_coords(b: KernelBuilder, shape: tuple, red: list[int], r: str) -> tuple[list[str], Callable[[], list[str]]]:
    """Scalar coordinates of this program's row (kept dims from program_id), and a function giving the
    full coordinates of the chunk `r` (a block of flat indices over the reduced dims)."""
    kept, rshape = _split(shape, red)
    b.line("row = tl.program_id(0)")
    kc = b.unravel("row", kept, "k")

    def full() -> list[str]:
        rc = b.unravel(r, rshape, "r")
        it_k, it_r = iter(kc), iter(rc)
        return [next(it_r) if i in red else next(it_k) for i in range(len(shape))]
    return kc, full


def _red_dims(n: ir.Node, rank: int) -> list[int]:
    if n.op == "argmax":
        return [n.attrs["dim"] % max(rank, 1)]
    if n.op in ("softmax", "log_softmax", "cumsum"):
        return [n.attrs["dim"] % max(rank, 1)]
    if n.op in ("rms_norm", "layer_norm"):
        return list(range(rank - n.attrs["axes"], rank))
    dims = n.attrs["dims"] or range(rank)  # [] reduces over every dim
    return sorted({d % max(rank, 1) for d in dims}) if rank else []


def _rows(b: KernelBuilder, n: ir.Node) -> tuple:
    """A row kernel's prologue: (x's type, kept dims, reduced dims, the output param, the chunk
    constexpr, the row length, coords(): the chunk's coordinates), one program per row."""
    x = b.type_of(n.operands[0])
    red = _red_dims(n, x.rank)
    kept, rshape = _split(x.shape, red)
    out = b.out()
    blk = b.constexpr_param("BLOCK")
    R = b.size(rshape)
    _, coords = _row_coords(b, x.shape, red, "r")
    return x, kept, rshape, out, blk, R, coords


@template("sum", "mean", "amax", "amin", "argmax")
def reduce(b: KernelBuilder, n: ir.Node) -> Spec:
    x, kept, rshape, out, blk, R, coords = _rows(b, n)
    ct = "tl.float32" if x.dtype.is_float else "tl.int64"
    if n.op in ("sum", "mean"):
        b.line(f"acc = tl.zeros([{blk}], {ct})")
    elif n.op in ("amax", "argmax"):
        b.line(f"acc = tl.full([{blk}], {_lowest(x.dtype)}, {ct})")
        b.line(f"idx = tl.zeros([{blk}], tl.int64)")
    else:
        b.line(f"acc = tl.full([{blk}], {_highest(x.dtype)}, {ct})")
    b.open(f"for r0 in range(0, {R}, {blk}):")
    b.line(f"r = r0 + tl.arange(0, {blk})")
    b.line(f"rm = r < {R}")
    v = b.t(f"tl.cast({b.value(n.operands[0], coords(), 'rm')}, {ct})")
    if n.op in ("sum", "mean"):
        b.line(f"acc += tl.where(rm, {v}, 0)")
    else:
        better = f"({v} > acc)" if n.op in ("amax", "argmax") else f"({v} < acc)"
        if x.dtype.is_float:  # NaN wins, the first one for argmax
            better = f"({better} | (({v} != {v}) & (acc == acc)))"
        b.line(f"upd = rm & {better}")
        if n.op == "argmax":
            b.line("idx = tl.where(upd, r, idx)")
        b.line(f"acc = tl.where(upd, {v}, acc)")
    b.close()
    if n.op == "sum":
        res = "tl.sum(acc, 0)"
    elif n.op == "mean":
        res = f"tl.sum(acc, 0) / {R}"
    else:
        hasnan = "tl.sum((acc != acc).to(tl.int32), 0) > 0" if x.dtype.is_float else None
        best = b.t("tl.max(acc, 0)" if n.op in ("amax", "argmax") else "tl.min(acc, 0)")
        if hasnan:
            b.line(f"nan = {hasnan}")
        if n.op == "argmax":
            hit = f"tl.where(nan, acc != acc, acc == {best})" if hasnan else f"(acc == {best})"
            res = f"tl.min(tl.where({hit}, idx, {2**62}), 0)"
        else:
            res = f"tl.where(nan, float('nan'), {best})" if hasnan else best
    b.line(f"tl.store({out} + row, ({res}).to({storage_type(n.type.dtype)}))")
    rows = b.size(kept)
    return Spec(grid=f"({rows},)", numel=rows, constexprs={"BLOCK": _block_for(b, rshape)})


def _lowest(dt) -> str:
    return "float('-inf')" if dt.is_float else str(-(2**62)) if dt.kind != "bool" else "0"


def _highest(dt) -> str:
    return "float('inf')" if dt.is_float else str(2**62) if dt.kind != "bool" else "1"


@template("softmax", "log_softmax", "rms_norm", "layer_norm")
def rowwise(b: KernelBuilder, n: ir.Node) -> Spec:
    x, kept, rshape, out, blk, R, coords = _rows(b, n)

    def chunk_loop() -> tuple[list[str], str]:
        b.open(f"for r0 in range(0, {R}, {blk}):")
        b.line(f"r = r0 + tl.arange(0, {blk})")
        b.line(f"rm = r < {R}")
        c = coords()
        return c, b.value(n.operands[0], c, "rm")

    def affine(v: str, c: list[str]) -> str:  # norms' weight / bias over the last `axes` dims
        for o in n.operands[1:]:
            t = b.type_of(o)
            w = b.value(o, c[len(c) - t.rank:], "rm")
            v = b.t(f"{v} * {w}" if o == n.operands[1] else f"{v} + {w}")
        return v

    def total(name: str, term: Callable[[str], str]) -> str:  # a pass summing term(x) over the row
        b.line(f"{name} = tl.zeros([{blk}], tl.float32)")
        _, v = chunk_loop()
        b.line(f"{name} += tl.where(rm, {term(v)}, 0.0)")
        b.close()
        return f"tl.sum({name}, 0)"

    def store(c: list[str], v: str) -> None:
        b.line(f"tl.store({b.addr(out, x.shape, c, 'rm')}, tl.cast({v}, {storage_type(n.type.dtype)}), mask=rm)")
        b.close()

    if n.op in ("softmax", "log_softmax"):
        b.line(f"mx = tl.full([{blk}], float('-inf'), tl.float32)")
        c, v = chunk_loop()
        b.line(f"mx = tl.where(rm & (({v} > mx) | ({v} != {v})), {v}, mx)")
        b.close()
        b.line("nan = tl.sum((mx != mx).to(tl.int32), 0) > 0")
        b.line("m = tl.where(nan, float('nan'), tl.max(mx, 0))")
        b.line(f"s = {total('sm', lambda v: f'tl.exp({v} - m)')}")
        c, v = chunk_loop()
        store(c, b.t(f"tl.exp({v} - m) / s" if n.op == "softmax" else f"{v} - m - tl.log(s)"))
    elif n.op == "rms_norm":
        b.line(f"inv = 1.0 / tl.sqrt({total('sq', lambda v: f'{v} * {v}')} / {R} + {float(n.attrs['eps'])!r})")
        c, v = chunk_loop()
        store(c, affine(b.t(f"{v} * inv"), c))
    else:  # layer_norm: two passes for the statistics, as the reference (no cancellation)
        b.line(f"mu = {total('sx', lambda v: v)} / {R}")
        b.line(f"rstd = 1.0 / tl.sqrt({total('sq', lambda v: f'({v} - mu) * ({v} - mu)')} / {R} + {float(n.attrs['eps'])!r})")
        c, v = chunk_loop()
        store(c, affine(b.t(f"({v} - mu) * rstd"), c))
    rows = b.size(kept)
    return Spec(grid=f"({rows},)", numel=b.size(x.shape), constexprs={"BLOCK": _block_for(b, rshape)})


@template("cumsum")
def cumsum(b: KernelBuilder, n: ir.Node) -> Spec:
    x, kept, rshape, out, blk, R, coords = _rows(b, n)
    ct = compute_type(n.type.dtype)
    b.line(f"carry = tl.full([], 0, {ct})")
    b.open(f"for r0 in range(0, {R}, {blk}):")
    b.line(f"r = r0 + tl.arange(0, {blk})")
    b.line(f"rm = r < {R}")
    c = coords()
    v = b.t(f"tl.where(rm, tl.cast({b.value(n.operands[0], c, 'rm')}, {ct}), 0)")
    b.line(f"tl.store({b.addr(out, x.shape, c, 'rm')}, (tl.cumsum({v}, 0) + carry).to({storage_type(n.type.dtype)}), mask=rm)")
    b.line(f"carry += tl.sum({v}, 0)")
    b.close()
    rows = b.size(kept)
    return Spec(grid=f"({rows},)", numel=b.size(x.shape), constexprs={"BLOCK": _block_for(b, rshape)})


# -- matmul -----------------------------------------------------------------------------------------
# Tile sizes, read by the generated host code as `_T.<name>`: the GPU's (checked for spills by aot.py), and
# larger ones for Triton's interpreter, whose cost is per program and per op rather than per element.
# Up to 16 rows (decode, small batches) a matmul is a GEMV: narrow N tiles give enough programs to
# fill the GPU and long K tiles stream the weight rows; more rows take square tiles.
GPU_TILES = SimpleNamespace(bm_small=16, bn_small=32, bk_small=64, warps_small=8, bm=32, bn=64, bk=32, warps=8,
                            attn_bn=32, attn_warps=8, df11_lanes=128)
INTERPRETER_TILES = SimpleNamespace(bm_small=16, bn_small=1024, bk_small=512, warps_small=4, bm=128, bn=512, bk=256,
                                    warps=8, attn_bn=128, attn_warps=4, df11_lanes=4096)


def _tile_m(M: str) -> str:
    """BLOCK_M for M rows: the smallest tile tl.dot takes (16) for decode-sized M, else the large one."""
    return f"(_T.bm_small if {M} <= 16 else _T.bm)"


def _mm_tiles(M: str) -> dict[str, str]:
    """The matmul constexprs and launch options for M rows, as host expressions."""
    pick = lambda small, big: f"(_T.{small} if {M} <= 16 else _T.{big})"  # noqa: E731
    return {"BM": _tile_m(M), "BN": pick("bn_small", "bn"), "BK": pick("bk_small", "bk"),
            "num_warps": pick("warps_small", "warps")}


@template("linear", "matmul")
def matmul(b: KernelBuilder, n: ir.Node) -> Spec:
    a_t, w_t = b.type_of(n.operands[0]), b.type_of(n.operands[1])
    if n.op == "matmul" and (a_t.rank < 2 or w_t.rank < 2):
        raise NotImplementedError(f"%{n.name}: matmul of a 1-D operand on target='cuda'; reshape it to 2-D first")
    out = b.out()
    BM, BN, BK = (b.constexpr_param(c) for c in ("BM", "BN", "BK"))
    if n.op == "linear":
        lead, K, N = a_t.shape[:-1], a_t.shape[-1], w_t.shape[0]
        batch: tuple = ()
    else:
        batch, lead, K, N = n.type.shape[:-2], a_t.shape[-2:-1], a_t.shape[-1], w_t.shape[-1]
    M, Ks, Ns = b.size(lead), b.dim(K), b.dim(N)
    b.line(f"rm = tl.program_id(0) * {BM} + tl.arange(0, {BM})")
    b.line(f"rn = tl.program_id(1) * {BN} + tl.arange(0, {BN})")
    b.line(f"mm = rm < {M}")
    b.line(f"nm = rn < {Ns}")
    bc: list[str] = []
    if batch:
        b.line("pb = tl.program_id(2)")
        bc = b.unravel("pb", batch, "b")
    lc = [f"{c}[:, None]" if c != "0" else "0" for c in b.unravel("rm", lead, "m")]
    b.line(f"acc = tl.zeros([{BM}, {BN}], tl.float32)")
    b.open(f"for k0 in range(0, {Ks}, {BK}):")
    b.line(f"rk = k0 + tl.arange(0, {BK})")
    b.line(f"km = rk < {Ks}")
    am, wm = "mm[:, None] & km[None, :]", "km[:, None] & nm[None, :]"
    if n.op == "linear":
        a = b.value(n.operands[0], lc + ["rk[None, :]"], am)
        w = b.value(n.operands[1], ["rn[None, :]", "rk[:, None]"], wm)
    else:
        a = b.value(n.operands[0], broadcast_coords(bc, batch, a_t.shape[:-2]) + lc + ["rk[None, :]"], am)
        w = b.value(n.operands[1], broadcast_coords(bc, batch, w_t.shape[:-2]) + ["rk[:, None]", "rn[None, :]"], wm)
    # inlined producers may be nonzero off the edge (masked loads read 0); f16/bf16 loads are widened already
    if not b.loaded(n.operands[0]):
        a = b.t(f"tl.where({am}, {a}, 0.0)")
    if not b.loaded(n.operands[1]):
        w = b.t(f"tl.where({wm}, {w}, 0.0)")
    if not a_t.dtype.is_float or not w_t.dtype.is_float:
        a, w = b.t(f"tl.cast({a}, tl.float32)"), b.t(f"tl.cast({w}, tl.float32)")
    b.line(f'acc += tl.dot({a}, {w}, input_precision="ieee")')
    b.close()
    if len(n.operands) == 3:
        bias = b.value(n.operands[2], ["rn[None, :]"], "nm[None, :]")
        b.line(f"acc += {bias}")
    res, dt = "acc", n.type.dtype
    if b.epilogue is not None:  # an elementwise chain on the accumulator tile (fusion.Plan.epilogue)
        b.provided[n.ref] = "acc"
        coords = (bc if batch else []) + lc + ["rn[None, :]"]
        res, dt = EMITTERS[b.epilogue.op](b, b.epilogue, coords, "mm[:, None] & nm[None, :]"), b.epilogue.type.dtype
    base = f"pb * {M} * {Ns} + " if batch else ""
    b.line(f"tl.store({out} + {base}rm[:, None] * {Ns} + rn[None, :], tl.cast({res}, {storage_type(dt)}), "
           "mask=mm[:, None] & nm[None, :])")
    t = _mm_tiles(M)
    grid = f"(triton.cdiv({M}, {t['BM']}), triton.cdiv({Ns}, {t['BN']}){', ' + b.size(batch) if batch else ''})"
    return Spec(grid=grid, numel=b.size(n.type.shape), constexprs=t)


# -- attention --------------------------------------------------------------------------------------
@template("sdpa")
def sdpa(b: KernelBuilder, n: ir.Node) -> Spec:
    q_t, k_t, v_t = (b.type_of(o) for o in n.operands[:3])
    B, H, L, D = q_t.shape
    Hk, S, Dv = k_t.shape[1], k_t.shape[2], v_t.shape[3]
    if not (isinstance(D, int) and isinstance(Dv, int)):
        raise NotImplementedError(f"%{n.name}: sdpa with a symbolic head dim on target='cuda'")
    out = b.out()
    BM, BN = b.constexpr_param("BM"), b.constexpr_param("BN")
    BD, BDV = _pow2(D, 16, 1 << 16), _pow2(Dv, 16, 1 << 16)
    Hs, Ls, Ss, Hks = b.dim(H), b.dim(L), b.dim(S), b.dim(Hk)
    b.line(f"rm = tl.program_id(0) * {BM} + tl.arange(0, {BM})")
    b.line("bh = tl.program_id(1)")
    b.line(f"z = bh // {Hs}")
    b.line(f"h = bh % {Hs}")
    b.line(f"hk = h // ({Hs} // {Hks})")  # grouped-query: each kv head serves H / Hk query heads
    b.line(f"mm = rm < {Ls}")
    b.line(f"rd = tl.arange(0, {BD})")
    b.line(f"dm = rd < {D}")
    b.line(f"rv = tl.arange(0, {BDV})")
    b.line(f"vm = rv < {Dv}")
    qm = "mm[:, None] & dm[None, :]"
    q = b.value(n.operands[0], ["z", "h", "rm[:, None]", "rd[None, :]"], qm)
    q = b.t(f"tl.where({qm}, {q}, 0.0).to(tl.float32)")
    b.line(f"m_i = tl.full([{BM}], float('-inf'), tl.float32)")
    b.line(f"l_i = tl.zeros([{BM}], tl.float32)")
    b.line(f"acc = tl.zeros([{BM}, {BDV}], tl.float32)")
    b.open(f"for j0 in range(0, {Ss}, {BN}):")
    b.line(f"rn = j0 + tl.arange(0, {BN})")
    b.line(f"nm = rn < {Ss}")
    km = "dm[:, None] & nm[None, :]"
    k = b.value(n.operands[1], ["z", "hk", "rn[None, :]", "rd[:, None]"], km)
    k = b.t(f"tl.where({km}, {k}, 0.0).to(tl.float32)")
    s = b.t(f'tl.dot({q}, {k}, input_precision="ieee") * {float(n.attrs["scale"])!r}')
    b.line("keep = mm[:, None] & nm[None, :]")
    if n.attrs["causal"]:
        b.line("keep = keep & (rn[None, :] <= rm[:, None])")
    if len(n.operands) == 4:
        m_t = b.type_of(n.operands[3])
        mc = broadcast_coords(["z", "h", "rm[:, None]", "rn[None, :]"], (B, H, L, S), m_t.shape)
        mv = b.value(n.operands[3], mc, "keep")
        if m_t.dtype.kind == "bool":
            b.line(f"keep = keep & ({mv} != 0)")
        else:
            s = b.t(f"{s} + {mv}")
    s = b.t(f"tl.where(keep, {s}, float('-inf'))")
    b.line(f"m_new = tl.maximum(m_i, tl.max({s}, 1))")
    b.line("m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)")  # a fully masked row stays 0, not NaN
    p = b.t(f"tl.exp({s} - m_safe[:, None])")
    b.line("alpha = tl.exp(m_i - m_safe)")
    b.line(f"l_i = l_i * alpha + tl.sum({p}, 1)")
    vmask = "nm[:, None] & vm[None, :]"
    v = b.value(n.operands[2], ["z", "hk", "rn[:, None]", "rv[None, :]"], vmask)
    v = b.t(f"tl.where({vmask}, {v}, 0.0).to(tl.float32)")
    b.line(f'acc = acc * alpha[:, None] + tl.dot({p}, {v}, input_precision="ieee")')
    b.line("m_i = m_new")
    b.close()
    b.line("o = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)")
    b.line(f"tl.store({out} + (bh * {Ls} + rm[:, None]) * {Dv} + rv[None, :], o.to({storage_type(n.type.dtype)}), "
           "mask=mm[:, None] & vm[None, :])")
    BMv = _tile_m(Ls)
    return Spec(grid=f"(triton.cdiv({Ls}, {BMv}), {b.size((B, H))})", numel=b.size(n.type.shape),
                constexprs={"BM": BMv, "BN": "_T.attn_bn", "num_warps": "_T.attn_warps"})


# -- templates that launch several kernels: f(codegen, node, dst) -> host lines ----------------------------
Multi = Callable[[Any, ir.Node, str], list[str]]
MULTI: dict[str, Multi] = {}


multi = _registrar(MULTI)  # @multi("int8_linear"): a template that launches several kernels


def _flat(b: KernelBuilder, shape: tuple) -> tuple[list[str], str]:
    """A pointwise kernel's prologue over `shape`: coordinates of this program's elements, and numel."""
    b.constexpr_param("BLOCK")
    numel = b.size(shape)
    b.line("offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)")
    b.line(f"m = offs < {numel}")
    return b.unravel("offs", shape, "c"), numel


def _flat_spec(numel: str) -> Spec:
    return Spec(grid=f"(triton.cdiv({numel}, {BLOCK}),)", numel=numel, constexprs={"BLOCK": str(BLOCK)})


@multi("index_copy")
def index_copy(cg: Any, n: ir.Node, dst: str) -> list[str]:
    """A copy of x (unless x is donated: `inplace`, and a value this module owns), then a scatter of src."""
    x, idx, src = n.operands
    x_t, s_t = cg.types[x], cg.types[src]
    ax = n.attrs["axis"] % x_t.rank
    if n.attrs["inplace"] and not x.startswith("@"):  # never write into a weight
        lines = [f"{dst} = {cg.code[x]}  # donated: written in place"]
    else:
        b = cg.builder()
        out = b.out()
        coords, numel = _flat(b, x_t.shape)
        b.line(f"tl.store({out} + offs, tl.cast({b.value(x, coords, 'm')}, {storage_type(x_t.dtype)}), mask=m)")
        lines = [cg.alloc(dst, n.type)] + cg.call(b, _flat_spec(numel), [dst])
    b = cg.builder()
    out = b.out()
    coords, numel = _flat(b, s_t.shape)
    i = b.value(idx, [coords[ax]], "m")
    i = b.t(f"tl.where({i} < 0, {i} + {b.dim(x_t.shape[ax])}, {i})")
    to = list(coords)
    to[ax] = i
    b.line(f"tl.store({b.addr(out, x_t.shape, to, 'm')}, tl.cast({b.value(src, coords, 'm')}, {storage_type(x_t.dtype)}), mask=m)")
    return lines + cg.call(b, _flat_spec(numel), [dst])


@multi("add_sparse")
def add_sparse(cg: Any, n: ir.Node, dst: str) -> list[str]:
    """W = w, then W.flat[idx[k]] += val[k]: a copy of w (its decoder inlined, e.g. SqueezeLLM's
    codebook) and a scatter of the corrections; idx is strictly increasing, so no two lanes collide."""
    w, idx, val = n.operands
    t, nnz = n.type, cg.types[idx].shape[0]
    b = cg.builder()
    out = b.out()
    coords, numel = _flat(b, t.shape)
    b.line(f"tl.store({out} + offs, tl.cast({b.value(w, coords, 'm')}, {storage_type(t.dtype)}), mask=m)")
    lines = [cg.alloc(dst, t)] + cg.call(b, _flat_spec(numel), [dst])
    b = cg.builder()
    out = b.out()
    (k,), count = _flat(b, (nnz,))
    i = b.t(f"tl.cast({b.value(idx, [k], 'm')}, tl.int64)")
    old = b.t(f"tl.load({out} + {i}, mask=m, other=0)")
    b.line(f"tl.store({out} + {i}, tl.cast({old}.to(tl.float32) + {b.value(val, [k], 'm')}, {storage_type(t.dtype)}), mask=m)")
    return lines + cg.call(b, _flat_spec(count), [dst])


@template("sparse_linear")
def sparse_linear(b: KernelBuilder, n: ir.Node) -> Spec:
    """y[t, o] = sum over entries idx[k] = o * cols + i of val[k] * x[t, i]. One program per token and
    BO outputs scans the entries in chunks and keeps those of its rows: no atomics, a fixed order."""
    x, idx, val = n.operands
    x_t, nnz = b.type_of(x), b.type_of(idx).shape[0]
    rows, cols = n.attrs["rows"], n.attrs["cols"]
    lead = x_t.shape[:-1]
    out = b.out()
    BO, BK = b.constexpr_param("BO"), b.constexpr_param("BK")
    T = b.size(lead)
    b.line("t = tl.program_id(0)")
    b.line(f"ro = tl.program_id(1) * {BO} + tl.arange(0, {BO})")
    b.line(f"om = ro < {rows}")
    tc = b.unravel("t", lead, "m")
    b.line(f"acc = tl.zeros([{BO}], tl.float32)")
    b.open(f"for k0 in range(0, {nnz}, {BK}):")
    b.line(f"rk = k0 + tl.arange(0, {BK})")
    b.line(f"km = rk < {nnz}")
    e = b.t(f"tl.cast({b.value(idx, ['rk'], 'km')}, tl.int64)")
    col = b.t(f"{e} % {cols}")
    xv = b.value(x, tc + [col], "km")
    v = b.t(f"tl.where(km, {b.value(val, ['rk'], 'km')} * {xv}, 0.0)")
    b.line(f"hit = ({e} // {cols})[None, :] == ro[:, None]")
    b.line(f"acc += tl.sum(tl.where(hit, {v}[None, :], 0.0), 1)")
    b.close()
    b.line(f"tl.store({out} + t * {rows} + ro, acc, mask=om)")
    return Spec(grid=f"({T}, triton.cdiv({rows}, 64))", numel=b.size(n.type.shape), constexprs={"BO": "64", "BK": "64"})


def _rint(b: KernelBuilder, v: str) -> str:
    """Round half to even (np.rint), exactly: floor, then up when the fraction is > 1/2 or = 1/2 at odd."""
    fl = b.t(f"tl.floor({v})")
    fr = b.t(f"{v} - {fl}")
    odd = b.t(f"tl.abs({fl} - 2.0 * tl.floor({fl} * 0.5)) == 1.0")
    return b.t(f"tl.where(({fr} > 0.5) | (({fr} == 0.5) & {odd}), {fl} + 1.0, {fl})")


@multi("int8_linear")
def int8_linear(cg: Any, n: ir.Node, dst: str) -> list[str]:
    """LLM.int8() (ir/ops/quant/int8.py) in three kernels: the outlier columns O (max over all tokens),
    each token's absmax scale over the other columns, then the tiled matmul: int8 codes x int8 weights
    into int32 (exact), scaled by both scales in f64, plus the f16 outlier product accumulated in f32.
    Every step is the op's own arithmetic, so the output is the reference's bit for bit but for the order
    of the outlier sum (tests/backends/triton/test_int8_kernel.py): a code rounded the other way would
    move a product by a whole int8 step."""
    x, wq, ws = n.operands[:3]
    x_t, w_t = cg.types[x], cg.types[wq]
    lead, K, N = x_t.shape[:-1], w_t.shape[1], w_t.shape[0]
    thr = float(n.attrs["threshold"])
    outliers = 0.0 < thr < float("inf")
    cols, scales = f"{dst}_cols", f"{dst}_sx"
    lines = [f"{cols} = torch.zeros(({K},), dtype=torch.int8, device=_dev)"]
    xc = lambda b, rows, ks: b.value(x, [f"{c}" for c in rows] + [ks], "msk")  # noqa: E731
    if outliers:  # O[j] = max_t |X[t, j]| >= threshold
        b = cg.builder()
        out = b.out()
        b.constexpr_param("BLOCK")
        T, Ks = b.size(lead), b.dim(K)
        b.line("rk = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)")
        b.line(f"km = rk < {Ks}")
        b.line("mx = tl.zeros([BLOCK], tl.float32)")
        b.open(f"for t in range(0, {T}):")
        b.line("msk = km")
        rows = b.unravel("t", lead, "m")
        b.line(f"mx = tl.maximum(mx, tl.where(km, tl.abs({xc(b, rows, 'rk')}), 0.0))")
        b.close()
        b.line(f"tl.store({out} + rk, (mx >= {thr!r}).to(tl.int8), mask=km)")
        lines += cg.call(b, Spec(grid=f"(triton.cdiv({Ks}, 256),)", numel=f"{T} * {Ks}", constexprs={"BLOCK": "256"}), [cols])
    b = cg.builder()  # sx[t] = max over the other columns of |X[t, j]| / 127
    out = b.out()
    o_ptr = b.ptr(cols)
    blk = b.constexpr_param("BLOCK")
    Ks, T = b.dim(K), b.size(lead)
    b.line("row = tl.program_id(0)")
    rows = b.unravel("row", lead, "m")
    b.line(f"mx = tl.zeros([{blk}], tl.float32)")
    b.open(f"for k0 in range(0, {Ks}, {blk}):")
    b.line(f"rk = k0 + tl.arange(0, {blk})")
    b.line(f"msk = rk < {Ks}")
    b.line(f"o = tl.load({o_ptr} + rk, mask=msk, other=1)")
    b.line(f"mx = tl.maximum(mx, tl.where(msk & (o == 0), tl.abs({xc(b, rows, 'rk')}), 0.0))")
    b.close()
    b.line(f"tl.store({out} + row, tl.max(mx, 0) / 127.0)")
    lines += [f"{scales} = torch.empty(({T},), dtype=torch.float32, device=_dev)"]
    cg.code[cols] = cols
    lines += cg.call(b, Spec(grid=f"({T},)", numel=T, constexprs={"BLOCK": _block_for(b, (K,))}), [scales])
    b = cg.builder()  # the matmul
    out = b.out()
    o_ptr, s_ptr = b.ptr(cols), b.ptr(scales)
    cg.code[scales] = scales
    BM, BN, BK = (b.constexpr_param(c) for c in ("BM", "BN", "BK"))
    M, Ks, Ns = b.size(lead), b.dim(K), b.dim(N)
    b.line(f"rm = tl.program_id(0) * {BM} + tl.arange(0, {BM})")
    b.line(f"rn = tl.program_id(1) * {BN} + tl.arange(0, {BN})")
    b.line(f"mm = rm < {M}")
    b.line(f"nm = rn < {Ns}")
    lc = [f"{c}[:, None]" if c != "0" else "0" for c in b.unravel("rm", lead, "m")]
    b.line(f"sx = tl.load({s_ptr} + rm, mask=mm, other=0)")
    b.line("div = tl.where(sx > 0, sx, 1.0)")
    b.line(f"acc = tl.zeros([{BM}, {BN}], tl.int32)")
    b.line(f"acco = tl.zeros([{BM}, {BN}], tl.float32)")
    ws_v = b.value(ws, ["rn[None, :]"], "nm[None, :]")
    b.open(f"for k0 in range(0, {Ks}, {BK}):")
    b.line(f"rk = k0 + tl.arange(0, {BK})")
    b.line(f"km = rk < {Ks}")
    b.line(f"o = tl.load({o_ptr} + rk, mask=km, other=0) != 0")
    b.line("msk = mm[:, None] & km[None, :]")
    a = b.t(f"tl.where(msk, {b.value(x, lc + ['rk[None, :]'], 'msk')}, 0.0).to(tl.float32)")
    wmask = "km[:, None] & nm[None, :]"
    w = b.t(f"tl.where({wmask}, {b.value(wq, ['rn[None, :]', 'rk[:, None]'], wmask)}, 0)")
    q = _rint(b, f"tl.where(o[None, :], 0.0, {a}) / div[:, None]")
    b.line(f"acc += tl.dot(tl.minimum(tl.maximum({q}, -127.0), 127.0).to(tl.int8), tl.cast({w}, tl.int8), out_dtype=tl.int32)")
    xo = b.t(f"tl.where(o[None, :], {a}, 0.0).to(tl.float16).to(tl.float32)")
    # the op's order, (wq * wscale) / 127, so that the f16 rounding of each weight is the reference's
    wd = b.t(f"(tl.cast({w}, tl.float32) * tl.cast({ws_v}, tl.float32) / 127.0).to(tl.float16).to(tl.float32)")
    b.line(f'acco += tl.dot({xo}, {wd}, input_precision="ieee")')
    b.close()
    # scaled in f64 as the op says: |acc| reaches 127^2 * K > 2^24, past what f32 holds exactly
    sc = b.t(f"acc.to(tl.float64) * sx[:, None].to(tl.float64) * tl.cast({ws_v}, tl.float64) / 127.0")
    y = b.t(f"{sc}.to(tl.float32) + acco")
    if len(n.operands) == 4:
        y = b.t(f"{y} + {b.value(n.operands[3], ['rn[None, :]'], 'nm[None, :]')}")
    b.line(f"tl.store({out} + rm[:, None] * {Ns} + rn[None, :], tl.cast({y}, {storage_type(n.type.dtype)}), "
           "mask=mm[:, None] & nm[None, :])")
    t = _mm_tiles(M)
    spec = Spec(grid=f"(triton.cdiv({M}, {t['BM']}), triton.cdiv({Ns}, {t['BN']}))", numel=b.size(n.type.shape),
                constexprs=t)
    lines += [cg.alloc(dst, n.type)] + cg.call(b, spec, [dst])
    return lines + [f"del {cols}, {scales}"]


@multi("dfloat11_decode")
def dfloat11_decode(cg: Any, n: ir.Node, dst: str) -> list[str]:
    """DFloat11 (ir/ops/quant/dfloat11.py): each lane decodes one coded block of `block` weights, symbol by
    symbol from its bit offset: a 32-bit window at the cursor, one lookup in the 2^k table for codes of up to
    k bits, the canonical rule (limits, first, before, syms) for longer ones; each exponent is joined with its
    sign|mantissa byte into the bf16 bits. The tables come from the code lengths at build time (host buffers
    bound like weights), and the stream is checked once there with the reference's own decoder: a corrupt
    stream is a CompileError, not garbage weights on the GPU."""
    from ir.ops.quant.dfloat11 import decode, tables

    if not all(o.startswith("@") for o in n.operands):
        raise NotImplementedError("dfloat11_decode decodes weights: its operands must be parameters")
    stream, offsets, lengths, sm = (np.asarray(cg.g.weights[o[1:]]) for o in n.operands)
    block = int(n.attrs["block"])
    try:
        decode(stream, offsets, lengths, sm, block)
        t = tables(lengths) if sm.size else None
    except ValueError as e:
        raise CompileError(f"%{n.name} = dfloat11_decode: {e}") from None
    size, nblocks = int(sm.size), len(offsets)
    lines = [f"{dst} = torch.empty({tuple(sm.shape)}, dtype=torch.int16, device=_dev)"]  # the bf16 bits
    if t is None:
        return lines + [f"{dst} = {dst}.view(torch.bfloat16)"]
    host = {"lut": t.lut.astype(np.int32), "limits": t.limits, "syms": t.syms.astype(np.int32),
            "first": t.first, "before": t.before}
    for k, v in host.items():
        cg.derived[f"{dst}_{k}"] = v
        cg.code[f"{dst}_{k}"] = f"{dst}_{k}"
    b = cg.builder()
    out = b.out()
    p_stream, p_off, p_sm = b.ptr(n.operands[0]), b.ptr(n.operands[1]), b.ptr(n.operands[3])
    p = {k: b.ptr(f"{dst}_{k}") for k in host}
    for c in ("LANES", "B", "K", "TOP"):
        b.constexpr_param(c)
    nblk, nsize, nbytes = b.int_param("nblk"), b.int_param("nsize"), b.int_param("nbytes")  # one kernel text for all
    b.line("lane = tl.program_id(0) * LANES + tl.arange(0, LANES)")
    b.line(f"live = lane < {nblk}")
    b.line(f"cur = tl.load({p_off} + lane, mask=live, other=0).to(tl.int64)")
    b.open("for j in range(0, B):")
    b.line("idx = lane.to(tl.int64) * B + j")
    b.line(f"ok = live & (idx < {nsize})")
    b.line("byte = cur >> 3")
    b.line("win = tl.zeros([LANES], tl.int64)")
    b.open("for i in tl.static_range(4):")  # 7 + 24 bits at most: four bytes from the cursor's
    b.line(f"win = (win << 8) | tl.load({p_stream} + byte + i, mask=ok & (byte + i < {nbytes}), other=0).to(tl.int64)")
    b.close()
    b.line("win = (win << (cur & 7)) & 0xFFFFFFFF")
    b.line(f"e = tl.load({p['lut']} + (win >> (32 - K)), mask=ok, other=0).to(tl.int64)")
    b.line("n = e >> 8")
    b.line("sym = e & 255")
    b.line("v = win >> (32 - TOP)")  # a longer code: its length, the first whose limit is above v
    b.line("ln = tl.full([LANES], TOP, tl.int64)")
    b.open("for L in tl.static_range(TOP, K, -1):")
    b.line(f"ln = tl.where(v < tl.load({p['limits']} + (L - 1)), L, ln)")
    b.close()
    b.line("long = ok & (n == 0)")
    b.line(f"at = tl.load({p['before']} + ln, mask=long, other=0) + (v >> (TOP - ln)) - "
           f"tl.load({p['first']} + ln, mask=long, other=0)")
    b.line(f"sym = tl.where(long, tl.load({p['syms']} + at, mask=long, other=0).to(tl.int64), sym)")
    b.line("n = tl.where(long, ln, n)")
    b.line(f"s = tl.load({p_sm} + idx, mask=ok, other=0).to(tl.int32)")
    b.line("bits = ((s & 128) << 8) | (sym.to(tl.int32) << 7) | (s & 127)")
    b.line(f"tl.store({out} + idx, bits.to(tl.int16), mask=ok)")
    b.line("cur += n")
    b.close()
    spec = Spec(grid=f"(triton.cdiv({nblocks}, _T.df11_lanes),)", numel=str(size),
                constexprs={"LANES": "_T.df11_lanes", "B": str(block), "K": str(t.k), "TOP": str(t.top)},
                extra={"nblk": str(nblocks), "nsize": str(size), "nbytes": str(len(stream))})
    return lines + cg.call(b, spec, [dst]) + [f"{dst} = {dst}.view(torch.bfloat16)"]


def template_for(n: ir.Node) -> Template:
    if n.op in TEMPLATES:
        return TEMPLATES[n.op]
    if n.op in EMITTERS:
        return pointwise
    raise CompileError(
        f"%{n.name} = {n.op}: target='cuda' has no Triton kernel for {n.op!r} yet "
        f"(backends/triton: add an expression in exprs.py or a template in kernels.py); "
        "use target='cpu' or target='reference' for this graph")


from . import moe as _moe  # noqa: E402,F401  (argtopk and moe register their templates)

__all__ = ["MULTI", "Spec", "TEMPLATES", "literal", "multi", "template", "template_for"]
