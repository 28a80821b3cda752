"""KV-cache quantization, KIVI style: keys per channel, values per token (the baseline of `xquant`).

    %kv_0: f32[1, 3, C, 64]                        %kv_k0: u8[1, 3, C, 32]        key codes, 4 bits packed
    %kv_1: f32[1, 3, C, 64]                 ->     %kv_k0_p: f32[1, 3, C, 2]      key group parameters, spread
    %k = index_copy(%kv_0, %pos, %new_k)           %kv_k0_r: f32[1, 3, 64, 64]    the open key group
    %v = index_copy(%kv_1, %pos, %new_v)           %kv_v0: u8[1, 3, C, 32]        value codes
                                                   %kv_v0_p: f32[1, 3, C, 2]      value scales and minima

A KV-cache step graph (frontends/kv_cache.py) takes each layer's keys and values as state inputs
`%kv_<2i>`, `%kv_<2i+1>` [B, H, C, D] and returns them with the new positions written by `index_copy`;
attention reads the first L slots. This pass stores them quantized instead (KIVI, Liu et al. 2024):

* values per token: each new row of D values is quantized in groups of `vgroup` channels;
* keys per channel: a channel's scale and minimum are shared by the `group` tokens of a token group
  (key outliers sit in fixed channels, so per-token scales would waste the grid on them). A group's
  statistics need all its tokens, so the open group (the one the next token joins) is also kept
  exactly in a fixed [B, H, group, D] state, `_r`, and attention reads those keys from it, as KIVI does
  with its full-precision residual. Each step re-quantizes the open group from it (the step's new keys
  may also close groups: a prefill fills many); when a group closes, its codes are final. A closed
  group's 2 x D parameters are spread over its `group` slots (2D / group per slot), so every state
  but `_r` has the capacity C on axis 2 and grows like the float cache;
* `sink=k` keeps the first k positions' keys and values exact (a fixed [B, H, k, D] state each): the
  attention sinks every later token reads (the same option as xquant's, for a like-for-like comparison);
* `bits=16` is the f16 reference: keys and values stored as f16, no grid.

The quantizer (`quantize_rows`, `dequantize_rows` below, and their graph forms) is asymmetric
round-to-nearest on a min-max grid (Eq. 2 of KIVI), with f32 scale and minimum (the CPU backend's
native code has no f16: f16 parameters would run in Python, op by op):

    s = (max - min) / (2^b - 1),  q = floor(clamp((x - min) / s + 1/2, 0, 2^b - 1)),  x^ = q s + min

so |x - x^| <= s/2 (and x^ = x for a constant group, which stores s = 0). Codes are packed into bytes
in bit planes of width 8, 4, 2 or 1 (3 bits = a 2-bit and a 1-bit plane), low bits first, so a b-bit
code costs b bits of memory, not a byte: `bytes_per_token` reads those real sizes from the state
types. Everything is built from core ops (min/max reductions, casts, index_copy, index), so every
backend runs it unchanged.

The state is no longer `[B, H, C, D]` arrays of the model's dtype: the runtime allocates each state
input from its declared type (`state_arrays`) and grows those sized by the capacity (`grow_states`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import ir
from ir.shapes import Dim, add, mul, sub

from .base import Pass, register_pass

F32, F16, U8, I64, I32, BOOL = (ir.DTYPES[n] for n in ("f32", "f16", "u8", "i64", "i32", "bool"))


# -- the quantizer's NumPy definition ---------------------------------------------------------------
def planes(bits: int) -> list[tuple[int, int]]:
    """(width, shift) of the bit planes a `bits`-bit code is stored in, low bits first: 3 -> [(2, 0), (1, 2)]."""
    out, shift = [], 0
    for w in (8, 4, 2, 1):
        if bits - shift >= w:
            out.append((w, shift))
            shift += w
    return out


def packed_bytes(n: int, bits: int) -> int:
    """Bytes of one row of `n` packed `bits`-bit codes (rows are padded to 8 codes)."""
    return -(-n // 8) * bits


def groups_of(n: int, group: int) -> tuple[int, int]:
    """(number of groups, group width) of a row of n: a group wider than the row is the row."""
    gs = min(group, n)
    return -(-n // gs), gs


def grid(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes as f32, scale) of x on the grid of [lo, hi] (f32, broadcast against x); the minimum is lo."""
    f32 = np.float32
    s = (hi - lo) * f32(1 / (2**bits - 1))
    safe = np.where(s > 0, s, f32(1))
    t = np.minimum(np.maximum((x - lo) / safe + f32(0.5), f32(0)), f32(2**bits - 1))
    return t.astype(np.int32).astype(f32), s


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """f32 codes [..., n8] (n8 a multiple of 8) -> u8 [..., n8 * bits / 8], plane after plane."""
    out = []
    for w, sh in planes(bits):
        k = 8 // w
        a = np.floor(codes * np.float32(2.0**-sh))
        d = a - np.floor(a * np.float32(2.0**-w)) * np.float32(2**w) if (w, sh) != (bits, 0) else codes
        pows = (np.float32(2**w) ** np.arange(k)).astype(np.float32)
        out.append((d.reshape(*d.shape[:-1], -1, k) * pows).sum(-1).astype(np.uint8))
    return np.concatenate(out, -1)


def unpack(data: np.ndarray, bits: int) -> np.ndarray:
    """u8 [..., n8 * bits / 8] -> f32 codes [..., n8]."""
    nb = data.shape[-1] // bits  # bytes of a 1-bit plane = n8 / 8
    codes, at = None, 0
    for w, sh in planes(bits):
        k = 8 // w
        b = data[..., at:at + nb * w].astype(np.float32)[..., None]
        at += nb * w
        t = np.floor(b * (np.float32(2.0**-w) ** np.arange(k + 1)).astype(np.float32))
        d = (t[..., :k] - t[..., 1:] * np.float32(2**w)).reshape(*b.shape[:-2], -1)
        d = d * np.float32(2**sh)
        codes = d if codes is None else codes + d
    return codes


def quantize_rows(x: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """f32 [..., n] -> (codes u8 [..., packed_bytes(n, bits)], params f32 [..., 2 * groups]: the
    scales, then the minima). Groups of `group` along the last axis; a short last group is padded
    with copies of the row's last value (its range unchanged)."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    ng, gs = groups_of(n, group)
    xp = np.concatenate([x, np.repeat(x[..., -1:], ng * gs - n, -1)], -1).reshape(*x.shape[:-1], ng, gs)
    lo = xp.min(-1, keepdims=True)
    codes, s = grid(xp, lo, xp.max(-1, keepdims=True), bits)
    codes = codes.reshape(*x.shape[:-1], ng * gs)[..., :n]
    codes = np.concatenate([codes, np.zeros(x.shape[:-1] + (-n % 8,), np.float32)], -1)
    return pack(codes, bits), np.concatenate([s[..., 0], lo[..., 0]], -1)


def dequantize_rows(data: np.ndarray, params: np.ndarray, n: int, bits: int, group: int) -> np.ndarray:
    """The inverse of quantize_rows: f32 [..., n] = code * scale + minimum."""
    ng, gs = groups_of(n, group)
    s = np.repeat(params[..., :ng], gs, -1)[..., :n]
    m = np.repeat(params[..., ng:], gs, -1)[..., :n]
    return unpack(data, bits)[..., :n] * s + m


# -- building the same computation as graph nodes ---------------------------------------------------
class Emit:
    """Appends typed nodes (each type inferred by its op) to `nodes`, for a pass that builds subgraphs;
    `flush()` hands them over for insertion. Scalar constants and parameters are made on demand."""

    def __init__(self, g: ir.Graph, prefix: str):
        self.g, self.prefix, self.nodes = g, prefix, []
        self.types = g.types()
        self.taken = {n.name for n in g.nodes} | {n for n, _ in g.inputs}

    def __call__(self, op: str, *xs: str, name: str = "t", **attrs: Any) -> str:
        d = ir.OPS[op]
        attrs = d.normalize_attrs(attrs)
        try:
            t = d.infer([self.types[x] for x in xs], attrs)
        except ValueError as e:
            raise ir.PassError(f"{self.prefix}: building {op}({', '.join(xs)}): {e}") from None
        base = f"{self.prefix}.{name}"
        nm, i = base, 1
        while nm in self.taken:
            nm, i = f"{base}_{i}", i + 1
        self.taken.add(nm)
        node = ir.Node(nm, op, tuple(xs), attrs, t, None)
        self.nodes.append(node)
        self.types[node.ref] = t
        return node.ref

    def flush(self) -> list[ir.Node]:
        out, self.nodes = self.nodes, []
        return out

    def type(self, ref: str) -> ir.TensorType:
        return self.types[ref]

    def shape(self, ref: str) -> tuple[Dim, ...]:
        return self.types[ref].shape

    def const(self, value: float | int | bool, dtype: ir.DType = F32) -> str:
        return self("full", name="c", value=value, dtype=dtype, shape=[])

    def param(self, name: str, a: np.ndarray) -> str:
        """A parameter holding `a` (its dtype's IR type): `name`, or the existing one of that name if it
        holds the same data, else `name_1`, ..."""
        dt = next(d for d in ir.DTYPES.values() if not d.packed and d.np == a.dtype)
        nm, i = name, 1
        while nm in self.g.params:
            if self.g.params[nm] == ir.TensorType(dt, a.shape) and np.array_equal(self.g.weights.get(nm), a):
                return "@" + nm
            nm, i = f"{name}_{i}", i + 1
        self.g.params[nm] = ir.TensorType(dt, a.shape)
        self.g.weights[nm] = np.ascontiguousarray(a)
        self.types["@" + nm] = self.g.params[nm]
        return "@" + nm

    # small helpers over the op set
    def floor(self, x: str) -> str:
        """floor of a non-negative f32 (casting truncates toward zero)."""
        return self("cast", self("cast", x, dtype=I32), dtype=F32)

    def scale(self, x: str, c: float) -> str:
        return self("mul", x, self.const(c))

    def slice(self, x: str, dim: int, start: Dim, end: Dim) -> str:
        return self("slice", x, dim=dim, start=start, end=end)

    def reshape(self, x: str, shape: Sequence[Dim]) -> str:
        return self("reshape", x, shape=list(shape))

    def rows(self, x: str, index: str) -> str:
        """The rows of x [B, H, N, W] at the 1-D integer `index` along axis 2 (an `index` op: whole rows)."""
        B, H, _, _ = self.shape(x)
        n = self.shape(index)[0]
        ib = self.reshape(self("arange", end=B), [B, 1, 1])
        ih = self.reshape(self("arange", end=H), [1, H, 1])
        return self("index", x, ib, ih, self.reshape(index, [1, 1, n]))


def emit_grid(e: Emit, x: str, lo: str, hi: str, bits: int) -> tuple[str, str]:
    """Graph form of `grid`: (codes f32, scale f32)."""
    qmax = 2**bits - 1
    s = e.scale(e("sub", hi, lo), 1 / qmax)
    safe = e("where", e("gt", s, e.const(0.0)), s, e.const(1.0))
    t = e("add", e("div", e("sub", x, lo), safe), e.const(0.5))
    t = e("minimum", e("maximum", t, e.const(0.0)), e.const(float(qmax)))
    return e.floor(t), s


def emit_pack(e: Emit, codes: str, bits: int) -> str:
    """Graph form of `pack`."""
    *lead, n8 = e.shape(codes)
    out = []
    for w, sh in planes(bits):
        k = 8 // w
        if (w, sh) == (bits, 0):
            d = codes
        else:
            a = e.floor(e.scale(codes, 2.0**-sh)) if sh else codes
            d = e("sub", a, e.scale(e.floor(e.scale(a, 2.0**-w)), float(2**w)))
        if k > 1:
            d = e("sum", e("mul", e.reshape(d, [*lead, n8 // k, k]), e.param(f"kvquant.pow{w}", 2.0 ** (w * np.arange(k, dtype=np.float32)))),
                  dims=[-1], keepdim=False)
        out.append(e("cast", e("cast", d, dtype=I32), dtype=U8, name="bytes"))  # via i32: native code casts that
    return out[0] if len(out) == 1 else e("cat", *out, dim=-1)


def emit_unpack(e: Emit, data: str, bits: int) -> str:
    """Graph form of `unpack`: u8 [..., nb] -> f32 codes [..., n8]."""
    *lead, total = e.shape(data)
    nb = total // bits
    codes, at = None, 0
    for w, sh in planes(bits):
        k = 8 // w
        b = e("cast", e.slice(data, -1, at, at + nb * w) if len(planes(bits)) > 1 else data, dtype=F32)
        at += nb * w
        if k > 1:
            inv = e.param(f"kvquant.inv{w}", (np.float32(2.0**-w) ** np.arange(k + 1)).astype(np.float32))
            t = e.floor(e("mul", e.reshape(b, [*lead, nb * w, 1]), inv))
            d = e("sub", e.slice(t, -1, 0, k), e.scale(e.slice(t, -1, 1, k + 1), float(2**w)))
            b = e.reshape(d, [*lead, nb * 8])
        d = e.scale(b, float(2**sh)) if sh else b
        codes = d if codes is None else e("add", codes, d)
    assert codes is not None
    return codes


def emit_quantize_rows(e: Emit, x: str, bits: int, group: int) -> tuple[str, str]:
    """Graph form of `quantize_rows`: (codes u8 [..., nb], params f16 [..., 2 * ngroups])."""
    *lead, n = e.shape(x)
    assert isinstance(n, int)
    ng, gs = groups_of(n, group)
    xp = x
    if ng * gs > n:
        last = e("expand", e.slice(x, -1, n - 1, n), shape=[*lead, ng * gs - n])
        xp = e("cat", x, last, dim=-1)
    xg = e.reshape(xp, [*lead, ng, gs])
    lo, hi = (e(op, xg, dims=[-1], keepdim=True) for op in ("amin", "amax"))
    codes, sc = emit_grid(e, xg, lo, hi, bits)
    codes = e.reshape(codes, [*lead, ng * gs])
    if ng * gs > n:
        codes = e.slice(codes, -1, 0, n)
    if n % 8:
        codes = e("cat", codes, e("full", value=0.0, dtype=F32, shape=[*lead, -n % 8]), dim=-1)
    params = e("cat", e.reshape(sc, [*lead, ng]), e.reshape(lo, [*lead, ng]), dim=-1, name="params")
    return emit_pack(e, codes, bits), params


def emit_dequantize_rows(e: Emit, data: str, params: str, n: int, bits: int, group: int) -> str:
    """Graph form of `dequantize_rows`: f32 [..., n]."""
    *lead, _ = e.shape(data)
    ng, gs = groups_of(n, group)

    def per_column(p: str) -> str:
        p = e("expand", e.reshape(p, [*lead, ng, 1]), shape=[*lead, ng, gs])
        p = e.reshape(p, [*lead, ng * gs])
        return e.slice(p, -1, 0, n) if ng * gs > n else p

    codes = emit_unpack(e, data, bits)
    if e.shape(codes)[-1] != n:
        codes = e.slice(codes, -1, 0, n)
    s, m = per_column(e.slice(params, -1, 0, ng)), per_column(e.slice(params, -1, ng, 2 * ng))
    return e("add", e("mul", codes, s), m, name="dq")


# -- the cache of a step graph -----------------------------------------------------------------------
@dataclass
class CacheLayer:
    """One layer's cache in a KV-cache step graph: the index_copy writing keys and values, and the
    slice nodes reading the first L slots back (their uses get the new keys and values)."""

    k: ir.Node
    v: ir.Node
    k_reads: list[ir.Node]
    v_reads: list[ir.Node]

    @property
    def index(self) -> str:
        return self.k.operands[1]

    @property
    def length(self) -> Dim:
        return self.k_reads[0].attrs["end"]


def is_cache_input(name: str) -> bool:
    return name.startswith("kv_") and name[3:].isdigit()


def cache_layers(g: ir.Graph) -> list[CacheLayer]:
    """The layers of a KV-cache step graph (inputs %kv_0 ... %kv_{2N-1}), or [] for any other graph."""
    names = [n for n, _ in g.inputs if is_cache_input(n)]
    if not names:
        return []
    if names != [f"kv_{i}" for i in range(len(names))] or len(names) % 2:
        raise ir.UnsupportedOpError(f"the cache inputs of @{g.name} are not %kv_0 ... %kv_2N-1 in order: {names[:6]}")
    users = g.users()

    def write(name: str) -> tuple[ir.Node, list[ir.Node]]:
        us = users.get("%" + name, [])
        if len(us) != 1 or us[0].op != "index_copy" or us[0].operands[0] != "%" + name or us[0].attrs["axis"] != 2:
            raise ir.UnsupportedOpError(f"%{name} is not written by one index_copy along axis 2; "
                                        "cache quantization needs the step graph of frontends/kv_cache.py")
        w = us[0]
        reads = users.get(w.ref, [])
        if not reads or any(r.op != "slice" or r.attrs["dim"] != 2 or r.attrs["start"] != 0 or r.attrs["step"] != 1
                            or r.attrs["end"] != reads[0].attrs["end"] for r in reads):
            raise ir.UnsupportedOpError(f"%{w.name} (the cache written into %{name}) is read other than by "
                                        "slices of its first L positions; cache quantization cannot rewrite it")
        return w, reads

    out = []
    for i in range(0, len(names), 2):
        (k, kr), (v, vr) = write(names[i]), write(names[i + 1])
        if k.operands[1] != v.operands[1]:
            raise ir.UnsupportedOpError(f"%{k.name} and %{v.name} write different positions")
        out.append(CacheLayer(k, v, kr, vr))
    return out


def rewrite_cache(g: ir.Graph, layers: list[CacheLayer], states: list[tuple[str, ir.TensorType, str]],
                  before: dict[str, list[ir.Node]], reads: dict[str, str]) -> ir.Graph:
    """`g` with its cache inputs replaced by `states` (name, type, the ref of its new value; in the
    order of inputs and outputs), `before[n]` inserted before node n, and the uses of each cache read
    (slice) `r` pointed at `reads[r]`. Dead code (the float cache writes) is removed."""
    from .cse import Cse
    from .dce import Dce

    nodes = []
    for n in g.nodes:
        nodes.extend(before.pop(n.name, []))
        nodes.append(n)
    assert not before, f"insertion points not found: {list(before)}"
    g.nodes = nodes
    for old, new in reads.items():
        g.replace_uses(old, new)
    old_writes = {w.ref for layer in layers for w in (layer.k, layer.v)}
    first = next(i for i, (n, _) in enumerate(g.inputs) if is_cache_input(n))
    rest = [(n, t) for n, t in g.inputs[first:] if not is_cache_input(n)]
    g.inputs = g.inputs[:first] + [(n, t) for n, t, _ in states] + rest
    g.outputs = [r for _, _, r in states] + [o for o in g.outputs if o not in old_writes]
    return ir.verify(Dce().run(Cse().run(g)))  # cse: the layers' shared index arithmetic once


def capacity(layers: list[CacheLayer]) -> Dim:
    return layers[0].k.type.shape[2]


def bytes_per_token(g: ir.Graph) -> tuple[float, int]:
    """(bytes per cached token, fixed bytes) of a step graph's state inputs at batch 1: each state's
    real size (packed codes are u8 arrays), per slot of the capacity axis, and those without one."""
    per, fixed = 0.0, 0
    cap = None
    for name, t in g.inputs:
        if not name.startswith("kv_"):
            continue
        cap = cap if cap is not None else t.shape[2]
        rest = [d for i, d in enumerate(t.shape) if i not in (0, 2) or (i == 2 and d != cap)]
        n = math.prod(int(d) for d in rest) * t.dtype.bits // 8
        if t.shape[2] == cap:
            per += n
        else:
            fixed += n
    return per, fixed


def state_arrays(g: ir.Graph, batch: int, capacity: int) -> list[np.ndarray]:
    """Zero state arrays for a step graph's state inputs (`kv_*`): batch on axis 0, `capacity` slots on
    axis 2 where the first state has its capacity symbol; other dims as declared."""
    ins = [(n, t) for n, t in g.inputs if n.startswith("kv_")]
    cap = ins[0][1].shape[2]
    return [np.zeros([batch if i == 0 else capacity if d == cap and i == 2 else int(d) for i, d in enumerate(t.shape)],
                     t.dtype.np) for _, t in ins]


def grow_states(g: ir.Graph, arrays: list[np.ndarray], block: int) -> list[np.ndarray]:
    """The state arrays with `block` more zero slots on axis 2, for those sized by the capacity."""
    ins = [t for n, t in g.inputs if n.startswith("kv_")]
    cap = ins[0].shape[2]
    return [np.concatenate([a, np.zeros(a.shape[:2] + (block,) + a.shape[3:], a.dtype)], 2) if t.shape[2] == cap else a
            for a, t in zip(arrays, ins)]


def emit_sink(e: Emit, name: str, new: str, index: str, k: int, read: str) -> tuple[tuple[str, ir.TensorType, str], str]:
    """Keep the first `k` positions' rows exact (an f32 state [B, h, k, n]: the attention sinks, whose
    keys every later token reads): `new` [B, h, s, n] are this step's rows at positions `index` [s], `read`
    [B, h, L, n] the decoded rows of slots 0 .. L - 1. Returns the state and `read` with those rows exact."""
    B, h, s, n = e.shape(new)
    L = e.shape(read)[2]
    t = ir.TensorType(F32, (B, h, k, n))
    e.types["%" + name] = t
    j = e("arange", end=k)
    first, last = e.slice(index, 0, 0, 1), e.slice(index, 0, sub(s, 1), s)
    hit = e.reshape(e("logical_and", e("ge", j, first), e("le", j, last)), [1, 1, k, 1])
    pick = e("minimum", e("maximum", e("sub", j, first), e.const(0, I64)), e("sub", last, first))
    kept = e("where", hit, e.rows(new, pick), "%" + name, name="sink")
    tl = e("arange", end=L)
    exact = e.rows(kept, e("minimum", tl, e.const(k - 1, I64)))
    return (name, t, kept), e("where", e.reshape(e("lt", tl, e.const(k, I64)), [1, 1, L, 1]), exact, read, name="sunk")


def emit_window(e: Emit, name: str, new: str, index: str, w: int, read: str) -> tuple[tuple[str, ir.TensorType, str], str]:
    """Keep the last `w` positions' rows exact, like KIVI's full-precision residual: a ring (an f32 state
    [B, h, w, n]) whose slot j holds the latest position p = j (mod w) below L. Arguments as `emit_sink`;
    slots 0 .. L - 1 at or after L - w read from the ring."""
    B, h, s, n = e.shape(new)
    L = e.shape(read)[2]
    t = ir.TensorType(F32, (B, h, w, n))
    e.types["%" + name] = t

    def mod(x: str) -> str:  # x mod w for -w < x < 2^24 - w, in f32 (exact there)
        y = e("cast", e("add", x, e.const(w, I64)), dtype=F32)
        return e("cast", e("sub", y, e.scale(e.floor(e.scale(y, 1.0 / w)), float(w))), dtype=I64)

    j = e("arange", end=w)
    first, last = e.slice(index, 0, 0, 1), e.slice(index, 0, sub(s, 1), s)
    p = e("sub", last, mod(e("sub", last, j)))  # the position slot j holds after this step
    hit = e.reshape(e("ge", p, first), [1, 1, w, 1])
    pick = e("minimum", e("maximum", e("sub", p, first), e.const(0, I64)), e("sub", last, first))
    kept = e("where", hit, e.rows(new, pick), "%" + name, name="window")
    tl = e("arange", end=L)
    exact = e.rows(kept, mod(tl))
    recent = e("ge", tl, e("sub", last, e.const(w - 1, I64)))
    return (name, t, kept), e("where", e.reshape(recent, [1, 1, L, 1]), exact, read, name="recent")


# -- the pass -----------------------------------------------------------------------------------------
def emit_kivi_keys(e: Emit, layer: CacheLayer, past: str, bits: int, group: int,
                   names: tuple[str, str, str]) -> tuple[list[tuple[str, ir.TensorType, str]], str]:
    """Per-channel keys over token groups with the open group exact (see the module doc): the three
    states (codes, spread parameters, open group) and the keys of the first L slots, f32 [B, H, L, D]."""
    new = layer.k.operands[2]
    B, H, s, D = e.shape(new)
    C, L, G = capacity([layer]), layer.length, group
    nb = packed_bytes(D, bits)
    chunk = 2 * D // G
    codes_in = (names[0], ir.TensorType(U8, (B, H, C, nb)))
    par_in = (names[1], ir.TensorType(F32, (B, H, C, chunk)))
    res_in = (names[2], ir.TensorType(F32, (B, H, G, D)))
    for n, t in (codes_in, par_in, res_in):
        e.types["%" + n] = t
    i64 = I64

    def div_floor(x: str) -> str:  # x // G for 0 <= x < 2^24 (exact in f32, G a power of two)
        return e("cast", e.floor(e.scale(e("cast", x, dtype=F32), 1.0 / G)), dtype=i64)

    idx = layer.index  # [s] positions past .. past + s - 1
    last = e.slice(idx, 0, sub(s, 1), s)  # [1]: L - 1
    start = e("mul", div_floor(past), e.const(G, i64))  # the open group's first position
    r0 = e("sub", past, start)  # [] its tokens already cached
    nvalid = e("sub", e("add", last, e.const(1, i64)), start)  # [1] rows of Z that are real
    # Z: the open group then the new keys, on G * (1 + s) rows (a multiple of G whatever s is)
    zrows = mul(G, add(s, 1))
    z = e("cat", "%" + res_in[0], e("full", value=0.0, dtype=F32, shape=[B, H, mul(G, s), D]), dim=2)
    z = e("index_copy", z, e("add", e("arange", end=s), r0), new, axis=2, name="open")
    valid = e.reshape(e("lt", e("arange", end=zrows), nvalid), [1, 1, add(s, 1), 1, G])
    zg = e.reshape(z, [B, H, add(s, 1), G, D])
    zt = e("permute", zg, perm=[0, 1, 2, 4, 3])  # each channel's group on the last axis
    lo, hi = (e.reshape(e(op, e("where", valid, zt, e.const(inf)), dims=[-1], keepdim=True), [B, H, add(s, 1), 1, D])
              for op, inf in (("amin", math.inf), ("amax", -math.inf)))
    some = e("le", lo, hi)  # a group with no real row: its statistics are 0
    lo, hi = e("where", some, lo, e.const(0.0)), e("where", some, hi, e.const(0.0))
    codes, sc = emit_grid(e, zg, lo, hi, bits)
    data = emit_pack(e, e.reshape(codes, [B, H, zrows, D]), bits)
    par = e.reshape(e("cat", sc, lo, dim=-1), [B, H, add(s, 1), G, chunk])  # row j holds chunk j % G
    par = e.reshape(par, [B, H, zrows, chunk])
    # write rows 0 .. G + s - 1 of Z at positions start + j; rows past the real ones repeat the last real
    # row, and positions past the capacity go to its last slot, so every write there carries one value
    j = e("arange", end=add(s, G))
    row = e("minimum", j, e("sub", nvalid, e.const(1, i64)))
    cap_last = e.slice(e("arange", end=C), 0, sub(C, 1), C)
    pos = e("minimum", e("add", j, start), cap_last)
    codes_out = e("index_copy", "%" + codes_in[0], pos, e.rows(data, row), axis=2, name="kcodes")
    par_out = e("index_copy", "%" + par_in[0], pos, e.rows(par, row), axis=2, name="kparams")
    # the new open group: Z's rows from (L // G) * G - start on
    nstart = e("mul", div_floor(e("add", last, e.const(1, i64))), e.const(G, i64))
    res_out = e.rows(z, e("add", e("arange", end=G), e("sub", nstart, start)))
    # keys of slots 0 .. L - 1: closed groups from the codes, the open group from its exact rows
    t = e("arange", end=L)
    q = e.reshape(e("mul", div_floor(t), e.const(G, i64)), [L, 1])
    slot = e("minimum", e("add", q, e.reshape(e("arange", end=G), [1, G])), e.slice(t, 0, sub(L, 1), L))
    p = e.reshape(e.rows(par_out, e.reshape(slot, [mul(L, G)])), [B, H, L, 2 * D])
    scale, mn = (e.slice(p, -1, a, a + D) for a in (0, D))
    kq = e("add", e("mul", emit_unpack(e, e.slice(codes_out, 2, 0, L), bits), scale), mn)
    opened = e("ge", t, nstart)
    r = e.rows(res_out, e("minimum", e("maximum", e("sub", t, nstart), e.const(0, i64)), e.const(G - 1, i64)))
    keys = e("where", e.reshape(opened, [1, 1, L, 1]), r, kq, name="keys")
    return [(*codes_in, codes_out), (*par_in, par_out), (*res_in, res_out)], keys


def emit_token_rows(e: Emit, layer: CacheLayer, new: str, bits: int, group: int,
                    names: tuple[str, str]) -> tuple[list[tuple[str, ir.TensorType, str]], str]:
    """Rows [B, H, s, D] quantized per token into a codes and a params state [B, H, C, .]; the first L
    rows read back, f32 [B, H, L, D]."""
    B, H, s, D = e.shape(new)
    C, L = capacity([layer]), layer.length
    data, par = emit_quantize_rows(e, new, bits, group)
    outs = []
    for name, ref in zip(names, (data, par)):
        t = ir.TensorType(e.type(ref).dtype, (B, H, C, e.shape(ref)[-1]))
        e.types["%" + name] = t
        outs.append((name, t, e("index_copy", "%" + name, layer.index, ref, axis=2, name="write")))
    back = [e.slice(r, 2, 0, L) for _, _, r in outs]
    return outs, emit_dequantize_rows(e, back[0], back[1], D, bits, group)


@register_pass
@dataclass(frozen=True)
class KvQuant(Pass):
    """Quantize a KV-cache step graph's keys per channel and values per token to `bits` bits (KIVI).

    Keys: groups of `group` tokens per channel, the open group kept exact; values: groups of `vgroup`
    channels per token; `sink` first tokens exact; `bits=16`: an f16 cache. |x - x^| <= s/2 (see the
    module doc). A graph without a KV cache is returned unchanged.
    """

    name = "kvquant"
    bits: int = 4
    group: int = 64
    vgroup: int = 64
    sink: int = 0

    def run(self, g: ir.Graph) -> ir.Graph:
        if not 1 <= self.bits <= 8 and self.bits != 16:
            raise ir.PassError(f"kvquant: bits must be 1..8, or 16 for an f16 cache, got {self.bits}")
        if self.group < 1 or self.group & (self.group - 1) or self.vgroup < 1 or self.sink < 0:
            raise ir.PassError(f"kvquant: group must be a power of two, vgroup >= 1 and sink >= 0, got {self.group}, "
                               f"{self.vgroup}, {self.sink}")
        layers = cache_layers(g)
        if not layers:
            return g
        g = g.copy()
        layers = cache_layers(g)
        D = layers[0].k.type.shape[3]
        if self.bits != 16 and (not isinstance(D, int) or (2 * D) % self.group or D % 8):
            raise ir.PassError(f"kvquant: the key group ({self.group} tokens) must divide 2 x head dim ({D}), "
                                 "and the head dim must be a multiple of 8")
        past = "%past_len"
        if past not in g.types() or g.types()[past].shape != ():
            raise ir.UnsupportedOpError("kvquant needs the step graph's %past_len input")
        states, before, reads = [], {}, {}
        for i, layer in enumerate(layers):
            e = Emit(g, f"kvq{i}")
            if self.bits == 16:  # the f16 reference: keys and values stored as f16, no grid
                for w, rds in ((layer.k, layer.k_reads), (layer.v, layer.v_reads)):
                    name = w.operands[0][1:].replace("kv_", "kv_h")
                    t = w.type.with_dtype(F16)
                    e.types["%" + name] = t
                    out = e("index_copy", "%" + name, w.operands[1], e("cast", w.operands[2], dtype=F16), axis=2, name="write")
                    states.append((name, t, out))
                    back = e("cast", e.slice(out, 2, 0, layer.length), dtype=F32, name="read")
                    reads.update({r.ref: back for r in rds})
                before[max((layer.k, layer.v), key=g.nodes.index).name] = e.flush()
                continue
            ks, keys = emit_kivi_keys(e, layer, past, self.bits, self.group, (f"kv_k{i}", f"kv_k{i}_p", f"kv_k{i}_r"))
            vs, values = emit_token_rows(e, layer, layer.v.operands[2], self.bits, self.vgroup, (f"kv_v{i}", f"kv_v{i}_p"))
            if self.sink:
                sk, keys = emit_sink(e, f"kv_k{i}_s", layer.k.operands[2], layer.index, self.sink, keys)
                sv, values = emit_sink(e, f"kv_v{i}_s", layer.v.operands[2], layer.index, self.sink, values)
                vs += [sk, sv]
            states += ks + vs
            before[max((layer.k, layer.v), key=g.nodes.index).name] = e.flush()
            reads.update({r.ref: keys for r in layer.k_reads})
            reads.update({r.ref: values for r in layer.v_reads})
        return rewrite_cache(g, layers, states, before, reads)
