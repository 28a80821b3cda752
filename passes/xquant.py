"""XQuant: cache each layer's quantized input X instead of its keys and values, and rematerialize
K and V from it at every step (Tomar et al. 2025, "XQuant: Breaking the Memory Wall for LLM
Inference with KV Cache Rematerialization").

    %kv_0: f32[1, 3, C, 64]                             %kv_x0: u8[1, 1, C, 288]    X's codes, 4 bits
    %kv_1: f32[1, 3, C, 64]                      ->     %kv_x0_p: f32[1, 1, C, 18]  scales, minima
    %k = index_copy(%kv_0, %pos, rope(X Wk^T))          %w = index_copy(%kv_x0, %pos, codes(X))
    %v = index_copy(%kv_1, %pos, X Wv^T)                K = rope(X^ Wk^T), V = X^ Wv^T over all L slots

On a KV-cache step graph (frontends/kv_cache.py), layer i's keys and values are replaced by one
quantized stream Z_i [B, C, r] per token: its new rows are quantized (per token, groups of `group`
along r, the grid of passes/kvquant.py) and written at the step's positions, then all L rows are
decoded and K, V recomputed from them by a copy of the graph's own K/V computation (the projections,
norms if any, RoPE: every node between X and the cache writes, with the step's length s replaced by
L). RoPE rotates cached token t at position cumsum(attention_mask)[t] - 1, the position that
`generate()` gives it (and Hugging Face's generate), so no positions are cached. The stream is:

* `latent=false`: Z = X R^T, R an orthogonal rotation of the hidden size (`rotate=true`, the
  default; seeded, data-free) or the identity. The rotation spreads X's outlier channels over all
  channels, so a per-token grid fits (QuaRot's observation); R^T is folded into W_k and W_v, so K = (W_k R^T) Z.
* `latent=true`: X's projection on the top `rank` right singular vectors of [W_k; W_v] (default rank:
  all of them, 2 x kv_dim at most; SVD at pass time, data-free): Z = Q B_r X, K; V = [W_k; W_v] B_r^T Q^T Z
  with Q a rotation of the r latent channels. For grouped-query models (SmolLM2: 576 hidden, 2 x 192 kv)
  this caches r <= 384 values per token, not 576.
* `cl=true` (XQuant-CL, cross-layer): layer i caches the delta from the previous layer's
  *reconstructed* stream: D_i = Z_i - Z^_{i-1} is quantized and Z^_i = Z^_{i-1} + deq(D_i) (Z^_{-1} = 0,
  so layer 0 caches Z_0 itself). Because the reference is the reconstruction the decoder also has,
  errors do not accumulate: Z_i - Z^_i is layer i's own quantization error, on a delta that is small
  because X changes little from layer to layer (one rotation R serves all layers).
* `cl=true, latent=true`: the same closed loop in X space, each layer caching only the latent part of
  its delta: D_i = Q B_i (X_i - X^_{i-1}), X^_i = X^_{i-1} + (Q B_i)^T deq(D_i), K; V = [W_k; W_v] X^_i.
  (Q B_i) X^_i = (Q B_i) X_i up to layer i's quantization error, which is all K and V see; the part
  of X^ outside layer i's basis carries over, a predictor for the next layers. r values per token, CL's
  accuracy: two (L x r x hidden) products per layer and step instead of one.
* `sink=k` keeps the first k tokens' rows exact (an f32 state [B, 1, k, width] per layer, fixed size):
  the attention sinks, whose keys every later token reads; `window=w` keeps the last w tokens' rows
  exact (a ring, [B, 1, w, width]), as KIVI keeps its newest keys. For cl, exact rows are also the next
  layer's reference.

Error contract: each cached value is within half a grid step of its group's range (passes/kvquant.py);
with `bits=8` K and V are within 2^-9 of each group's range of the originals (times |W| for the
projections). A graph without a KV cache is returned unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.shapes import Dim, dim, expr, sub

from .base import Pass, register_pass
from .kvquant import (I64, CacheLayer, Emit, cache_layers, capacity, emit_dequantize_rows, emit_quantize_rows, emit_sink,
                      emit_window, rewrite_cache)


def rotation(n: int, seed: int) -> np.ndarray:
    """A random orthogonal n x n matrix (QR of a Gaussian, signs fixed), the same for a seed."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _kv_linears(g: ir.Graph, layer: CacheLayer, prod: dict[str, ir.Node]) -> tuple[ir.Node, ir.Node]:
    """The linear nodes nearest to the key and the value writes: the K and V projections."""
    found = []
    for w in (layer.k, layer.v):
        stack, seen, hit = [w.operands[2]], set(), None
        while stack and hit is None:
            ref = stack.pop(0)
            n = prod.get(ref)
            if n is None or ref in seen:
                continue
            seen.add(ref)
            if n.op == "linear":
                hit = n
            stack.extend(n.operands)
        if hit is None:
            raise ir.UnsupportedOpError(f"xquant: no linear projection feeds %{w.name}")
        found.append(hit)
    if found[0].operands[0] != found[1].operands[0]:
        raise ir.UnsupportedOpError(f"xquant: the key and value projections of %{layer.k.name} read different inputs")
    return found[0], found[1]


class _Cloner:
    """Copies the nodes between X (or the positions) and the cache writes for all L slots: the
    step's length symbol becomes L, X its rematerialized rows, position_ids the cached positions.
    Nodes that depend on the positions only (RoPE's tables) are made once for all layers."""

    def __init__(self, g: ir.Graph, e: Emit, s: str, L: Dim, positions: str):
        self.e, self.sym, self.L = e, expr(s), expr(L)
        self.prod = {n.ref: n for n in g.nodes}
        self.order = {n.ref: i for i, n in enumerate(g.nodes)}
        self.shared: dict[str, str] = {"%position_ids": positions}

    def dim(self, d: Dim) -> Dim:
        return d if isinstance(d, int) else dim(expr(d).subs(self.sym, self.L))

    def has_step(self, t: ir.TensorType) -> bool:
        return any(isinstance(d, str) and self.sym in expr(d).free_symbols for d in t.shape)

    def clone(self, outs: list[str], x: str, new_x: str, linears: dict[str, str]) -> list[str]:
        """`outs` recomputed from `new_x` in place of `x`; each linear node named in `linears` becomes
        the value given there (the projection of the new input)."""
        anc, stack = set(), list(outs)
        while stack:  # the ancestors of outs, not past x, the positions or a replaced linear
            ref = stack.pop()
            if ref in anc or ref not in self.prod:
                continue
            anc.add(ref)
            if ref not in linears:
                stack.extend(o for o in self.prod[ref].operands if o not in (x, "%position_ids"))
        on_x, on_pos, local = set(), set(), {x: new_x}
        for ref in sorted(anc, key=self.order.__getitem__):
            ops = self.prod[ref].operands
            if ref in linears or any(o == x or o in on_x for o in ops):
                on_x.add(ref)
            elif any(o == "%position_ids" or o in on_pos for o in ops):
                on_pos.add(ref)
        for ref in sorted(on_x | on_pos, key=self.order.__getitem__):
            n = self.prod[ref]
            if ref in linears:
                local[ref] = linears[ref]
                continue
            if ref in on_pos and ref in self.shared:
                continue
            for o in n.operands:
                if o not in local and o not in self.shared and self.has_step(self.e.types[o]):
                    raise ir.UnsupportedOpError(f"xquant: %{n.name} reads {o} ({self.e.types[o]}), which has the step's "
                                                "length but comes neither from X nor from the positions")
            attrs = dict(n.attrs)
            for k, spec in ir.OPS[n.op].attrs.items():
                if spec.kind == "dim" and k in attrs:
                    attrs[k] = self.dim(attrs[k])
                elif spec.kind == "dims" and k in attrs:
                    attrs[k] = [self.dim(d) for d in attrs[k]]
            new = self.e(n.op, *(local.get(o, self.shared.get(o, o)) for o in n.operands), name=n.name, **attrs)
            want = n.type.with_shape(self.dim(d) for d in n.type.shape)
            if self.e.types[new] != want:
                raise ir.UnsupportedOpError(f"xquant: recomputing %{n.name} for the cached tokens gives "
                                            f"{self.e.types[new]}, not {want}")
            (self.shared if ref in on_pos else local)[ref] = new
        return [local.get(o, self.shared.get(o, o)) for o in outs]


@register_pass
@dataclass(frozen=True)
class XQuant(Pass):
    """Cache each layer's quantized input X (or its latent projection, or its cross-layer delta) instead
    of K and V, and rematerialize K and V with RoPE inside the step (XQuant, XQuant-CL).

    Options: `bits`, `group` (per-token groups along the cached row), `cl` (cross-layer deltas),
    `latent` with `rank` (0: 2 x kv_dim, lossless), `rotate` (a seeded orthogonal rotation before
    quantizing, folded into the projections), `sink` (first tokens exact), `window` (last tokens exact),
    `seed`. See the module doc.
    """

    name = "xquant"
    bits: int = 4
    group: int = 64
    cl: bool = False
    latent: bool = False
    rank: int = 0
    rotate: bool = True
    sink: int = 0
    window: int = 0
    seed: int = 0

    def run(self, g: ir.Graph) -> ir.Graph:
        if not 1 <= self.bits <= 8:
            raise ir.PassError(f"xquant: bits must be 1..8, got {self.bits}")
        if self.group < 1 or min(self.rank, self.sink, self.window) < 0:
            raise ir.PassError(f"xquant: group must be >= 1, rank, sink and window >= 0, got {self.group}, {self.rank}, "
                               f"{self.sink}, {self.window}")
        if not cache_layers(g):
            return g
        g = g.copy()
        layers = cache_layers(g)
        types = g.types()
        mask = "%attention_mask"
        L = layers[0].length
        s = types[layers[0].index].shape[0]
        if mask not in types or types[mask].shape[1] != L or not isinstance(s, str) or not s.isidentifier():
            raise ir.UnsupportedOpError("xquant needs the step graph's %attention_mask (of the attention length) "
                                        "and a symbolic step length")
        e = Emit(g, "xq")
        B = types[layers[0].k.operands[2]].shape[0]
        C = capacity(layers)
        # cached positions: cumsum(mask) - 1, as generate() and Hugging Face number tokens
        cloner = _Cloner(g, e, s, L, e("sub", e("cumsum", mask, dim=-1, name="positions"), e.const(1, I64)))
        prod = {n.ref: n for n in g.nodes}
        states, before, reads = [], {}, {}
        prev = None  # Z^_{i-1} for cl
        R = None
        for i, layer in enumerate(layers):
            e.prefix = f"xq{i}"
            lk, lv = _kv_linears(g, layer, prod)
            x = lk.operands[0]
            H = types[x].shape[-1]
            if not isinstance(H, int):
                raise ir.UnsupportedOpError(f"xquant: the hidden size of {x} is not static")
            proj, wk, wv = self._projection(g, lk, lv, H, i)
            track = self.cl and self.latent  # cl in X space, each layer caching its latent delta
            if proj is not None:
                if R is None or self.latent:  # one rotation for all layers; a latent basis per layer
                    R = e.param(f"xquant.basis.{i}" if self.latent else "xquant.rotation", proj)
            stream = x if track else e("linear", x, R, name="z") if proj is not None else x
            new = stream if prev is None else e("sub", stream, e.slice(prev, 1, sub(L, s), L), name="delta")
            if track:
                new = e("linear", new, R, name="z")
            r = e.shape(new)[-1]
            data, par = emit_quantize_rows(e, new, self.bits, self.group)
            outs = []
            for name, ref in ((f"kv_x{i}", data), (f"kv_x{i}_p", par)):
                t = ir.TensorType(e.type(ref).dtype, (B, 1, C, e.shape(ref)[-1]))
                e.types["%" + name] = t
                rows = e.reshape(ref, [B, 1, s, e.shape(ref)[-1]])
                outs.append((name, t, e("index_copy", "%" + name, layer.index, rows, axis=2, name="write")))
            back = [e.slice(ref, 2, 0, L) for _, _, ref in outs]
            zh = e.reshape(emit_dequantize_rows(e, back[0], back[1], r, self.bits, self.group), [B, L, r])
            if track:  # back to X: the latent basis has orthonormal rows, so X^ += D^ P
                zh = e("linear", zh, e.param(f"xquant.basis.{i}.t", np.ascontiguousarray(proj.T)), name="xh")
                wk = wv = None
            if prev is not None:
                zh = e("add", prev, zh, name="recon")
            width = e.shape(stream)[-1]
            for emit, k, suffix in ((emit_sink, self.sink, "s"), (emit_window, self.window, "w")):
                if k:
                    st, zh4 = emit(e, f"kv_x{i}_{suffix}", e.reshape(stream, [B, 1, s, width]), layer.index, k,
                                   e.reshape(zh, [B, 1, L, width]))
                    outs.append(st)
                    zh = e.reshape(zh4, [B, L, width])
            prev = zh if self.cl else None
            states += outs
            linears = {}
            for lin, w in ((lk, wk), (lv, wv)):
                wref = lin.operands[1] if w is None else e.param(lin.operands[1][1:] + ".xq", w)
                linears[lin.ref] = e("linear", zh, wref, *lin.operands[2:], name=lin.name)
            keys, values = cloner.clone([layer.k.operands[2], layer.v.operands[2]], x, zh, linears)
            anchor = max((layer.k, layer.v), key=g.nodes.index)
            before[anchor.name] = e.flush()
            reads.update({rd.ref: keys for rd in layer.k_reads})
            reads.update({rd.ref: values for rd in layer.v_reads})
        return rewrite_cache(g, layers, states, before, reads)

    def _projection(self, g: ir.Graph, lk: ir.Node, lv: ir.Node, H: int,
                    i: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(P [r, H] with orthonormal rows, W_k P^T, W_v P^T), or Nones for the plain X stream."""
        if not (self.latent or self.rotate):
            return None, None, None
        ws = []
        for lin in (lk, lv):
            w = lin.operands[1]
            if not w.startswith("@") or w[1:] not in g.weights or g.params[w[1:]].rank != 2:
                raise ir.UnsupportedOpError(f"xquant: rotate/latent need the float weight of %{lin.name} as a parameter "
                                            "(run xquant before weight quantization)")
            ws.append(np.asarray(g.weights[w[1:]], np.float32))
        if self.latent:
            W = np.concatenate(ws).astype(np.float64)
            r = self.rank or min(W.shape)
            if r > min(W.shape):
                raise ir.PassError(f"xquant: rank {r} exceeds the rank of [W_k; W_v] ({min(W.shape)})")
            P = np.linalg.svd(W, full_matrices=False)[2][:r].astype(np.float32)
            if self.rotate:
                P = rotation(r, self.seed + 1 + i) @ P
        else:
            P = rotation(H, self.seed)
        return P, ws[0] @ P.T, ws[1] @ P.T
