"""Mixture-of-experts templates: `argtopk` (the router's choice) and `moe` (a grouped GEMV over the
selected experts). Registered into kernels.py's tables on import.

    argtopk  one program per row: k rounds of "the best remaining entry" (NaN first for the largest,
             last for the smallest, the lower index on ties)
    moe      two kernels: per (token, slot) and block of I, the expert's gate and up rows dotted with x
             (act(gate) * up into a scratch [T, k, I]); then per token and block of H, each slot's down
             projection in slot order, weighted and summed. The expert is a runtime value: each program
             branches to the code of its expert (E branches per kernel), so it reads only that expert's
             weights, through `value()`: a quantized expert's decoder runs inside the loop, as in `linear`.
"""
from __future__ import annotations

import math
from typing import Any

import ir

from .exprs import storage_type
from .kernels import Spec, _pow2, _row_coords, multi, template

MAX_ROW = 4096  # argtopk rows live in one block (a symbolic row: the next power of two of its length)


@template("argtopk")
def argtopk(b: Any, n: ir.Node) -> Spec:
    """Equal to the reference (torch's CPU order) whenever a row's values are distinct; on ties this
    kernel takes the lower index first, where torch's nth_element may not."""
    x_t = b.type_of(n.operands[0])
    ax = n.attrs["dim"] % x_t.rank
    k, N = n.attrs["k"], x_t.shape[ax]
    if isinstance(N, int) and N > MAX_ROW:
        raise NotImplementedError(f"argtopk over a row of {N} entries (at most {MAX_ROW})")
    if not n.attrs["sorted"] and k > 1 and not (isinstance(N, int) and k * 64 <= N):  # else the order is sorted
        raise NotImplementedError("argtopk with sorted=False: torch's order is std::nth_element's")
    out = b.out()
    blk = b.constexpr_param("BLOCK")
    kept = tuple(d for i, d in enumerate(x_t.shape) if i != ax)
    _, coords = _row_coords(b, x_t.shape, [ax], "r")
    b.line(f"r = tl.arange(0, {blk})")
    b.line(f"rm = r < {b.dim(N)}")
    c = coords()
    fl = x_t.dtype.is_float
    v = b.t(f"tl.cast({b.value(n.operands[0], c, 'rm')}, {'tl.float32' if fl else 'tl.int64'})")
    b.line("alive = rm")
    b.open(f"for j in range(0, {k}):")
    if fl:
        b.line(f"nan = alive & ({v} != {v})")
        b.line(f"num = alive & ({v} == {v})")
        b.line("has_nan = tl.sum(nan.to(tl.int32), 0) > 0")
        b.line("has_num = tl.sum(num.to(tl.int32), 0) > 0")
    else:
        b.line("num = alive")
    lo, hi = ("float('-inf')", "float('inf')") if fl else (str(-(2**62)), str(2**62))
    if n.attrs["largest"]:
        b.line(f"best = tl.max(tl.where(num, {v}, {lo}), 0)")
        pool = "tl.where(has_nan, nan, num & ({v} == best))" if fl else "num & ({v} == best)"
    else:
        b.line(f"best = tl.min(tl.where(num, {v}, {hi}), 0)")
        pool = "tl.where(has_num, num & ({v} == best), nan)" if fl else "num & ({v} == best)"
    b.line(f"pick = tl.min(tl.where({pool.format(v=v)}, r, {2**30}), 0)")
    oc = [cc if i != ax else "j" for i, cc in enumerate(c)]
    oc = [("0" if cc in ("0",) else cc) for cc in oc]
    b.line(f"tl.store({b.addr(out, n.type.shape, oc, 'r == 0')}, tl.cast(pick + tl.where(r == 0, 0, 0), tl.int64), mask=r == 0)")
    b.line("alive = alive & (r != pick)")
    b.close()
    rows = b.size(kept)
    block = str(_pow2(N, 16, MAX_ROW)) if isinstance(N, int) else f"max(16, triton.next_power_of_2({b.dim(N)}))"
    return Spec(grid=f"({rows},)", numel=b.size(n.type.shape), constexprs={"BLOCK": block})


def _act(b: Any, v: str, act: str) -> str:
    if act == "silu":
        return b.t(f"{v} * tl.sigmoid({v})")
    if act == "relu":
        return b.t(f"tl.where({v} < 0.0, 0.0, {v})")
    if act == "gelu_tanh":
        u = b.t(f"{math.sqrt(2.0 / math.pi)!r} * ({v} + 0.044715 * {v} * {v} * {v})")
        return b.t(f"0.5 * {v} * (2.0 - 2.0 / (tl.exp(2.0 * {u}) + 1.0))")
    return b.t(f"0.5 * {v} * (1.0 + tl.math.erf({v} * {1 / math.sqrt(2.0)!r}))")


def _scalar(b: Any, ref: str, lead: list[str], j: str) -> str:
    """The scalar value of a [..., k] operand at (token, slot): read as a 1-element block, then summed."""
    b.line("one = tl.full([1], 1, tl.int1)")
    v = b.value(ref, [f"({c} + tl.zeros([1], tl.int32))" if c != "0" else "0" for c in lead] + [f"({j} + tl.zeros([1], tl.int32))"], "one")
    return b.t(f"tl.sum({v}, 0)")


@multi("moe")
def moe(cg: Any, n: ir.Node, dst: str) -> list[str]:
    x, idx, w, ex = n.operands[0], n.operands[1], n.operands[2], n.operands[3:]
    x_t, i_t = cg.types[x], cg.types[idx]
    E = len(ex) // 2
    lead, H, K = x_t.shape[:-1], x_t.shape[-1], i_t.shape[-1]
    inner = cg.types[ex[E]].shape[1]
    gated, act = n.attrs["gated"], n.attrs["act"]
    if not all(isinstance(d, int) for d in (H, K, inner)):
        raise NotImplementedError("moe with symbolic hidden, k or expert sizes")
    hid = f"{dst}_h"
    # kernel 1: act(gate) * up for one (token, slot) and a block of the expert's inner dim
    b = cg.builder()
    out = b.out()
    BI, BK = b.constexpr_param("BI"), b.constexpr_param("BK")
    T = b.size(lead)
    b.line("p = tl.program_id(0)")
    b.line(f"ri = tl.program_id(1) * {BI} + tl.arange(0, {BI})")
    b.line(f"im = ri < {inner}")
    b.line(f"t = p // {K}")
    b.line(f"j = p % {K}")
    lc = b.unravel("t", lead, "m")
    e = _scalar(b, idx, lc, "j")
    b.line(f"g = tl.zeros([{BI}], tl.float32)")
    b.line(f"u = tl.zeros([{BI}], tl.float32)")
    for k in range(E):
        b.open(f"if {e} == {k}:")
        b.open(f"for k0 in range(0, {H}, {BK}):")
        b.line(f"rk = k0 + tl.arange(0, {BK})")
        b.line(f"km = rk < {H}")
        xv = b.value(x, lc + ["rk[None, :]"], "km[None, :]")
        wm = "im[:, None] & km[None, :]"
        wg = b.value(ex[k], ["ri[:, None]", "rk[None, :]"], wm)
        b.line(f"g += tl.sum(tl.where({wm}, {wg} * {xv}, 0.0), 1)")
        if gated:
            wu = b.value(ex[k], [f"(ri + {inner})[:, None]", "rk[None, :]"], wm)
            b.line(f"u += tl.sum(tl.where({wm}, {wu} * {xv}, 0.0), 1)")
        b.close()
        b.close()
    h = _act(b, "g", act)
    if gated:
        h = b.t(f"{h} * u")
    b.line(f"tl.store({out} + p * {inner} + ri, {h}, mask=im)")
    lines = [f"{hid} = torch.empty(({T} * {K} * {inner},), dtype=torch.float32, device=_dev)"]
    lines += cg.call(b, Spec(grid=f"({T} * {K}, triton.cdiv({inner}, 64))", numel=f"{T} * {K}",
                             constexprs={"BI": "64", "BK": str(min(_pow2(H), 256))}), [hid])
    cg.code[hid] = hid
    # kernel 2: y[t] = sum over slots, in order, of weight * (w_out[e] h)
    b = cg.builder()
    out = b.out()
    hp = b.ptr(hid)
    BO, BI = b.constexpr_param("BO"), b.constexpr_param("BI")
    b.line("t = tl.program_id(0)")
    b.line(f"ro = tl.program_id(1) * {BO} + tl.arange(0, {BO})")
    b.line(f"om = ro < {H}")
    lc = b.unravel("t", lead, "m")
    b.line(f"y = tl.zeros([{BO}], tl.float32)")
    for j in range(K):
        e = _scalar(b, idx, lc, str(j))
        wj = _scalar(b, w, lc, str(j))
        b.line(f"acc = tl.zeros([{BO}], tl.float32)")
        for k in range(E):
            b.open(f"if {e} == {k}:")
            b.open(f"for i0 in range(0, {inner}, {BI}):")
            b.line(f"ri = i0 + tl.arange(0, {BI})")
            b.line(f"im = ri < {inner}")
            b.line(f"hv = tl.load({hp} + (t * {K} + {j}) * {inner} + ri, mask=im, other=0.0)")
            wm = "om[:, None] & im[None, :]"
            wo = b.value(ex[E + k], ["ro[:, None]", "ri[None, :]"], wm)
            b.line(f"acc += tl.sum(tl.where({wm}, {wo} * hv[None, :], 0.0), 1)")
            b.close()
            b.close()
        b.line(f"y += acc * {wj}")
    b.line(f"tl.store({out} + t * {H} + ro, tl.cast(y, {storage_type(n.type.dtype)}), mask=om)")
    lines += [cg.alloc(dst, n.type)]
    lines += cg.call(b, Spec(grid=f"({T}, triton.cdiv({H}, 64))", numel=T,
                             constexprs={"BO": "64", "BI": str(min(_pow2(inner), 256))}), [dst])
    return lines + [f"del {hid}"]
