"""Every op's NumPy reference agrees with PyTorch, and its type rule with both.

`TORCH` maps each op to a function of torch tensors and the op's (normalised) attrs that states
the op's meaning in torch terms; `CASES` maps each op to a strategy of (numpy inputs, attrs).
A registered op missing from either table fails `test_every_op_has_a_torch_counterpart`.

Inputs cover zero-size dims, broadcasting, NaN/Inf where meaningful, and f32 plus f16/bf16/int/bool
where the op allows. Results are compared exactly for shape, index, integer, comparison and
correctly rounded IEEE ops; with rtol 1e-5/atol 1e-6 for other f32 math; per-ulp tolerances for
16-bit floats; NaN positions must always agree.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ir
from ir.dtypes import DTYPES, DType, from_numpy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow in casts, mean of nothing

F32, F16, BF16, F64 = (DTYPES[n] for n in ("f32", "f16", "bf16", "f64"))
I64, I32, I8, U8, BOOL = (DTYPES[n] for n in ("i64", "i32", "i8", "u8", "bool"))
FLOATS = [F32, F32, F16, BF16]  # f32 twice: it is the dtype that matters most
NUMS = FLOATS + [I64, I32]
ALL = NUMS + [BOOL, U8]

TD = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16, F64: torch.float64, I64: torch.int64,
      I32: torch.int32, DTYPES["i16"]: torch.int16, I8: torch.int8, U8: torch.uint8, BOOL: torch.bool}


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == BF16.np:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()


# -- the torch meaning of every op ---------------------------------------------------------------
def _unary(fn: Callable) -> Callable:
    return lambda ts, a: fn(ts[0])


def _binary(fn: Callable) -> Callable:
    return lambda ts, a: fn(ts[0], ts[1])


def _slice(ts, a):
    x = ts[0]
    ax = a["dim"] % x.ndim
    return x[(slice(None),) * ax + (slice(a["start"], a["end"], a["step"]),)]


def _sdpa(ts, a):
    q, k, v = ts[:3]
    mask = ts[3] if len(ts) == 4 else None
    causal = a["causal"]
    if mask is not None:  # the IR broadcasts a mask of any rank; some torch kernels want 4-D
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if causal and mask is not None:  # torch takes one or the other: fold the causal mask in
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        mask = mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, -math.inf)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=a["scale"],
                                          enable_gqa=True)


def _dims(a):
    return a["dims"] if a["dims"] else None


def _sparsify(x, scale, a):
    """sparsify's rule spelled out pairwise: entry i is kept when fewer than `keep` entries rank above it
    (a higher score, NaN counting as +inf, or an equal one at a lower index); keep = -1: score not <= threshold."""
    s = x.float().abs() * (scale.float() if scale is not None else 1.0)
    if a["keep"] < 0:
        kept = ~(s <= torch.tensor(a["threshold"], dtype=torch.float32))
    else:
        s = torch.where(s.isnan(), math.inf, s)
        i = torch.arange(s.shape[-1])
        above = (s[..., None, :] > s[..., :, None]) | ((s[..., None, :] == s[..., :, None]) & (i[None, :] < i[:, None]))
        kept = above.sum(-1) < a["keep"]
    return torch.where(kept, x, torch.zeros((), dtype=x.dtype))


def _sparse_input_linear(ts, a):
    x, scale, wt = ts[:3]
    return _in_f32(F.linear, [_sparsify(x, scale, a), wt.T, *ts[3:]])


_ACT = {"silu": F.silu, "relu": torch.relu, "gelu": F.gelu, "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}


def _moe(ts, a):
    """Hugging Face's eager expert loop (MixtralExperts.forward): per expert, the (token, slot) pairs that chose
    it, act(gate) * up, down, times the routing weight, index_add_ into the output; in f32."""
    x, idx, ex = ts[0], ts[1].long(), ts[3:]
    E, H, K = len(ex) // 2, x.shape[-1], idx.shape[-1]
    xs, ii, ws = x.reshape(-1, H).float(), idx.reshape(-1, K), ts[2].reshape(-1, K).float()
    out = torch.zeros_like(xs)
    hit = F.one_hot(ii, num_classes=E).permute(2, 1, 0)  # [E, K, T]
    for e in range(E):
        slot, tok = torch.where(hit[e])
        h = F.linear(xs[tok], ex[e].float())
        if a["gated"]:
            gate, up = h.chunk(2, dim=-1)
            h = _ACT[a["act"]](gate) * up
        else:
            h = _ACT[a["act"]](h)
        out.index_add_(0, tok, F.linear(h, ex[E + e].float()) * ws[tok, slot, None])
    return out.reshape(x.shape).to(x.dtype)


def _in_f32(f, ts, *args, **kw):
    if ts[0].dtype not in (torch.float16, torch.bfloat16):
        return f(ts[0], *args, *ts[1:], **kw)
    return f(ts[0].float(), *args, *[t.float() for t in ts[1:]], **kw).to(ts[0].dtype)


TORCH: dict[str, Callable[[list[torch.Tensor], dict[str, Any]], torch.Tensor]] = {
    "neg": _unary(torch.neg), "abs": _unary(torch.abs), "exp": _unary(torch.exp), "log": _unary(torch.log),
    "sqrt": _unary(torch.sqrt), "rsqrt": _unary(torch.rsqrt), "reciprocal": _unary(torch.reciprocal),
    "sin": _unary(torch.sin), "cos": _unary(torch.cos), "tanh": _unary(torch.tanh), "erf": _unary(torch.erf),
    "sigmoid": _unary(torch.sigmoid), "silu": _unary(F.silu), "relu": _unary(torch.relu),
    "logical_not": _unary(torch.logical_not),
    # +inf -> +inf by decision (the op's doc); torch's f32 kernel gives NaN there, its f64 kernel +inf
    "gelu": lambda ts, a: torch.where(torch.isposinf(ts[0]), ts[0], F.gelu(ts[0], approximate=a["approximate"])),
    "add": _binary(torch.add), "sub": _binary(torch.sub), "mul": _binary(torch.mul), "div": _binary(torch.div),
    "pow": _binary(torch.pow), "maximum": _binary(torch.maximum), "minimum": _binary(torch.minimum),
    "eq": _binary(torch.eq), "ne": _binary(torch.ne), "lt": _binary(torch.lt), "le": _binary(torch.le),
    "gt": _binary(torch.gt), "ge": _binary(torch.ge),
    "logical_and": _binary(torch.logical_and), "logical_or": _binary(torch.logical_or),
    "where": lambda ts, a: torch.where(*ts),
    "cast": lambda ts, a: ts[0].to(TD[a["dtype"]]),
    "full": lambda ts, a: torch.full(a["shape"], a["value"], dtype=TD[a["dtype"]]),
    "arange": lambda ts, a: torch.arange(a["start"], a["end"], dtype=TD[a["dtype"]]),
    "linear": lambda ts, a: F.linear(*ts),
    "matmul": _binary(torch.matmul),
    # norms of 16-bit floats compute in f32 (torch's CPU f16 layer_norm does not: 1-element rows come out nonzero)
    "layer_norm": lambda ts, a: _in_f32(F.layer_norm, ts, ts[0].shape[ts[0].ndim - a["axes"]:], eps=a["eps"]),
    "rms_norm": lambda ts, a: _in_f32(F.rms_norm, ts, ts[0].shape[ts[0].ndim - a["axes"]:], eps=a["eps"]),
    "sdpa": _sdpa,
    # the IR's sum keeps the dtype (the frontend casts first); torch says so with dtype=
    "sum": lambda ts, a: torch.sum(ts[0], dim=_dims(a), keepdim=a["keepdim"], dtype=ts[0].dtype),
    "mean": lambda ts, a: torch.mean(ts[0], dim=_dims(a), keepdim=a["keepdim"]),
    "amax": lambda ts, a: torch.amax(ts[0], dim=a["dims"], keepdim=a["keepdim"]),
    "amin": lambda ts, a: torch.amin(ts[0], dim=a["dims"], keepdim=a["keepdim"]),
    "argmax": lambda ts, a: torch.argmax(ts[0], dim=a["dim"], keepdim=a["keepdim"]),
    "cumsum": lambda ts, a: torch.cumsum(ts[0], dim=a["dim"]),
    "softmax": lambda ts, a: torch.softmax(ts[0], dim=a["dim"]),
    "log_softmax": lambda ts, a: torch.log_softmax(ts[0], dim=a["dim"]),
    "reshape": lambda ts, a: ts[0].reshape(a["shape"]),
    "permute": lambda ts, a: ts[0].permute(a["perm"]),
    "expand": lambda ts, a: ts[0].expand(a["shape"]),
    "slice": _slice,
    "cat": lambda ts, a: torch.cat(ts, dim=a["dim"]),
    "gather": lambda ts, a: torch.gather(ts[0], a["dim"], ts[1].long()),
    "take": lambda ts, a: torch.index_select(ts[0], a["axis"], ts[1].long()),
    "index_copy": lambda ts, a: torch.index_copy(ts[0], a["axis"], ts[1].long(), ts[2]),
    "index": lambda ts, a: ts[0][tuple(t.long() for t in ts[1:])],
    "mask_logits": lambda ts, a: torch.where(
        ((ts[1].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten(-2)[..., : ts[0].shape[-1]].bool(),
        ts[0], torch.tensor(-math.inf, dtype=ts[0].dtype)),
    "embedding": lambda ts, a: F.embedding(ts[1].long(), ts[0]),
    "sparsify": lambda ts, a: _sparsify(ts[0], ts[1] if len(ts) == 2 else None, a),
    "sparse_input_linear": _sparse_input_linear,
    "argtopk": lambda ts, a: torch.topk(ts[0], a["k"], a["dim"], a["largest"], a["sorted"]).indices,
    "moe": _moe,
}

# Correctly rounded in IEEE arithmetic (or no arithmetic at all): bit-exact in every dtype. (Not sqrt:
# torch's scalar sqrt path is 1 ulp off the correctly rounded result numpy gives.)
EXACT = {"neg", "abs", "relu", "add", "sub", "mul", "div", "maximum", "minimum", "where", "cast",
         "full", "arange", "amax", "amin", "argmax", "reshape", "permute", "expand", "slice", "cat", "gather",
         "take", "index_copy", "index", "mask_logits", "embedding", "sparsify", "logical_not", "logical_and", "logical_or", "eq", "ne", "lt", "le", "gt", "ge",
         "argtopk"}
TOL = {F32: (1e-5, 1e-6), F64: (1e-12, 1e-12), F16: (2e-3, 1e-3), BF16: (1.6e-2, 1e-2)}  # ~2 ulp for 16-bit


# -- inputs ----------------------------------------------------------------------------------------
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0]
ANY = st.floats(width=32)  # everything: nan, +-inf, subnormals, +-3.4e38
MODERATE = st.one_of(st.floats(-30, 30, width=32), st.sampled_from(SPECIAL))
FINITE = st.floats(-8, 8, width=32)
NICE = st.integers(-64, 64).map(lambda i: i / 8)  # sums and products stay exact in any order
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def arr(draw, shape, dt: DType, elems=MODERATE, lo: int = -20, hi: int = 20) -> np.ndarray:
    if dt == BOOL:
        return draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))
    if dt.is_float:
        return draw(hnp.arrays(np.float32, shape, elements=elems)).astype(dt.np)
    info = np.iinfo(dt.np)
    return draw(hnp.arrays(dt.np, shape, elements=st.integers(max(lo, info.min), min(hi, info.max))))


def c_unary(dts, elems=MODERATE, attrs=st.just({})):
    @st.composite
    def s(draw):
        dt = draw(st.sampled_from(dts))
        return [arr(draw, draw(SHAPES), dt, elems)], draw(attrs)
    return s()


def c_nary(n: int, dts, elems=(MODERATE, MODERATE), cond: bool = False):
    """n operands of one dtype and mutually broadcastable shapes (the first a bool condition if cond)."""
    @st.composite
    def s(draw):
        dt = draw(st.sampled_from(dts))
        shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=n, min_dims=0, max_dims=4, min_side=0, max_side=3))
        out = []
        for i, sh in enumerate(shapes.input_shapes):
            if cond and i == 0:
                out.append(arr(draw, sh, BOOL))
            else:
                out.append(arr(draw, sh, dt, elems[min(i - cond, len(elems) - 1)], lo=-20, hi=20))
        return out, {}
    return s()


@st.composite
def c_pow(draw):
    dt = draw(st.sampled_from(NUMS))
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=3))
    a, b = shapes.input_shapes
    if dt.is_float:
        return [arr(draw, a, dt, st.one_of(st.floats(-10, 10, width=32), st.sampled_from(SPECIAL))),
                arr(draw, b, dt, st.one_of(st.floats(-4, 4, width=32), st.sampled_from(SPECIAL)))], {}
    return [arr(draw, a, dt, lo=-5, hi=5), arr(draw, b, dt, lo=0, hi=5)], {}  # ints: no negative powers


CAST_RANGE = {I64: (-1000, 1000), I32: (-1000, 1000), I8: (-128, 127), U8: (0, 255)}


@st.composite
def c_cast(draw):
    src = draw(st.sampled_from(ALL + [I8, F64]))
    dst = draw(st.sampled_from(ALL + [I8, F64]))
    shape = draw(SHAPES)
    if src.is_float and dst in CAST_RANGE:  # float -> int is only defined inside the target's range
        lo, hi = CAST_RANGE[dst]
        x = arr(draw, shape, F32, st.floats(lo, hi, width=32)).astype(src.np)
        x = np.asarray(np.clip(x.astype(np.float32), lo, hi)).astype(src.np)  # 16-bit rounding must not leave it
    elif src.is_float:
        x = arr(draw, shape, F32, ANY).astype(src.np)
    else:
        x = arr(draw, shape, src, lo=-10**6, hi=10**6)
    return [x], {"dtype": dst}


@st.composite
def c_full(draw):
    dt = draw(st.sampled_from(ALL + [I8, F64]))
    if dt == BOOL:
        v: Any = draw(st.booleans())
    elif dt.is_float:
        big = float(ml_dtypes.finfo(dt.np).max)
        v = draw(st.one_of(st.floats(-big, big), st.sampled_from(SPECIAL), st.integers(-100, 100)))
    else:
        info = np.iinfo(dt.np)
        v = draw(st.integers(int(info.min), int(info.max)))
    return [], {"value": v, "dtype": dt, "shape": draw(st.lists(st.integers(0, 3), max_size=3))}


@st.composite
def c_arange(draw):
    start = draw(st.integers(-5, 5))
    return [], {"start": start, "end": draw(st.integers(start, start + 6)), "dtype": draw(st.sampled_from([I64, I32, F32]))}


@st.composite
def c_linear(draw):
    dt = draw(st.sampled_from(FLOATS))
    k, n = draw(st.integers(0, 40)), draw(st.integers(0, 4))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    el = NICE if dt == F32 else st.one_of(NICE, FINITE)  # 16-bit: only f32 accumulation matches torch
    ins = [arr(draw, lead + (k,), dt, el), arr(draw, (n, k), dt, el)]
    if draw(st.booleans()):
        ins.append(arr(draw, (n,), dt, el))
    return ins, {}


@st.composite
def c_sparse_input_linear(draw, linear: bool = True):
    """Ties (values on a 1/8 grid), zeros, NaN/inf in x and scale for f32, every keep from 0 to past D;
    linear=False: sparsify's operands (the scale optional)."""
    dt = draw(st.sampled_from(FLOATS))
    k, n = draw(st.integers(0, 12)), draw(st.integers(0, 4))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    el = st.one_of(NICE, st.sampled_from(SPECIAL)) if dt == F32 else NICE
    ins = [arr(draw, lead + (k,), dt, el)]
    if linear or draw(st.booleans()):
        ins.append(arr(draw, (k,), draw(st.sampled_from(FLOATS)), el))
    if linear:
        ins.append(arr(draw, (k, n), dt, NICE))
        if draw(st.booleans()):
            ins.append(arr(draw, (n,), dt, NICE))
    return ins, {"keep": draw(st.integers(-1, k + 1)), "threshold": draw(st.sampled_from([0.0, 0.3, 1.0, -1.0]))}


@st.composite
def c_matmul(draw):
    dt = draw(st.sampled_from(FLOATS + [I64]))
    m, k, n = (draw(st.integers(0, 3)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, min_side=0, max_side=3))
    ba, bb = batch.input_shapes
    a = (k,) if draw(st.integers(0, 3)) == 0 else ba + (m, k)
    b = (k,) if draw(st.integers(0, 3)) == 0 else bb + (k, n)
    return [arr(draw, a, dt, NICE, lo=-5, hi=5), arr(draw, b, dt, NICE, lo=-5, hi=5)], {}


def c_norm(n_affine: int):
    @st.composite
    def s(draw):
        dt = draw(st.sampled_from(FLOATS))
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
        axes = draw(st.integers(1, min(2, len(shape))))
        shape = shape[:-axes] + tuple(max(d, 1) for d in shape[-axes:])  # torch: nothing to normalise over is an error
        ins = [arr(draw, shape, dt, st.one_of(st.floats(-10, 10, width=32), st.sampled_from([math.nan, math.inf])))]
        for _ in range(draw(st.integers(0, n_affine))):
            ins.append(arr(draw, shape[-axes:], dt, FINITE))
        attrs = {"eps": draw(st.sampled_from([1e-5, 1e-6, 1e-3, 0.25])), "axes": axes}
        return ins, attrs
    return s()


@st.composite
def c_sdpa(draw):
    dt = draw(st.sampled_from(FLOATS))
    b, kv, rep = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    L, S, E, Ev = draw(st.integers(0, 4)), draw(st.integers(0, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vals = st.floats(-2, 2, width=32)
    ins = [arr(draw, (b, kv * rep, L, E), dt, vals), arr(draw, (b, kv, S, E), dt, vals), arr(draw, (b, kv, S, Ev), dt, vals)]
    mask = draw(st.sampled_from(["none", "bool", "float"]))
    full = (b, kv * rep, L, S)
    shape = tuple(draw(st.sampled_from([1, d])) for d in full)[draw(st.integers(0, 4)):]
    if mask == "bool":
        ins.append(arr(draw, shape, BOOL))  # rows with no True are all masked: torch gives 0 there
    elif mask == "float":
        ins.append(arr(draw, shape, dt, st.one_of(st.floats(-3, 3, width=32), st.just(-math.inf))))
    return ins, {"scale": draw(st.sampled_from([1.0, 0.5, 1 / math.sqrt(E), 2.0])), "causal": draw(st.booleans())}


def c_reduce(dts, elems=None, nonempty: bool = False):
    """f32 sums of NICE values are exact in any order; 16-bit floats also get MODERATE values, whose
    sums differ visibly unless accumulated in f32 as torch does."""
    @st.composite
    def s(draw):
        dt = draw(st.sampled_from(dts))
        elems_ = elems if elems is not None else (NICE if dt == F32 else st.one_of(NICE, MODERATE))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=8))
        if nonempty:  # amax/amin of nothing is an error in torch, numpy and (statically) the type rule
            shape = tuple(max(d, 1) for d in shape)
        axes = draw(st.lists(st.integers(0, max(len(shape) - 1, 0)), unique=True, max_size=len(shape))) if shape else []
        dims = [a - len(shape) if draw(st.booleans()) else a for a in axes]
        return [arr(draw, shape, dt, elems_)], {"dims": dims, "keepdim": draw(st.booleans())}
    return s()


def c_along(dts, elems=MODERATE, extra: Callable | None = None, min_dims: int = 0, nonempty: bool = False):
    """One operand and a `dim` attr (negative half the time)."""
    @st.composite
    def s(draw):
        dt = draw(st.sampled_from(dts))
        shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=0, max_side=4))
        r = max(len(shape), 1)
        d = draw(st.integers(-r, r - 1))
        if nonempty and shape:
            shape = tuple(max(n, 1) if i == d % r else n for i, n in enumerate(shape))
        attrs = {"dim": d, **(extra(draw) if extra else {})}
        return [arr(draw, shape, dt, elems)], attrs
    return s()


TIES = st.sampled_from([0.0, 1.0, 2.0, 2.0, math.nan, -math.inf, math.inf])
ROWS = st.one_of(st.floats(-30, 30, width=32), st.just(-math.inf), st.just(-math.inf), st.just(math.nan))


@st.composite
def c_softmax_rows(draw):
    """Softmax over rows where some entries, or whole rows, are -inf (the masked-attention case)."""
    dt = draw(st.sampled_from(FLOATS))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    x = arr(draw, shape, dt, ROWS)
    if x.size and draw(st.booleans()):
        idx = [slice(None)] * len(shape)
        idx[d] = slice(None)
        other = [i for i in range(len(shape)) if i != d % len(shape)]
        if other:
            idx[other[0]] = 0
            x[tuple(idx)] = -np.inf  # one whole row
    return [x], {"dim": d}


@st.composite
def c_reshape(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(SHAPES)
    x = arr(draw, shape, dt, ANY)
    n = x.size
    if n == 0:
        target = draw(st.lists(st.integers(0, 3), max_size=3).filter(lambda s: 0 in s)) or [0]
    else:
        target, rest = [], n
        for p in draw(st.permutations([q for q in _factors(n)])):
            if draw(st.booleans()):
                target.append(p)
                rest //= p
        target += [rest] + [1] * draw(st.integers(0, 2))
        target = draw(st.permutations(target))
    return [x], {"shape": list(target)}


def _factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def c_permute(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(SHAPES)
    return [arr(draw, shape, dt, ANY)], {"perm": draw(st.permutations(range(len(shape))))}


@st.composite
def c_expand(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    target = [draw(st.integers(0, 3)) if d == 1 else d for d in shape]
    target = draw(st.lists(st.integers(0, 3), max_size=2)) + target
    return [arr(draw, shape, dt, ANY)], {"shape": target}


@st.composite
def c_slice(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[d]
    start = draw(st.integers(0, size))
    end = draw(st.integers(start, size))
    return [arr(draw, shape, dt, ANY)], {"dim": d, "start": start, "end": end, "step": draw(st.integers(1, 4))}


@st.composite
def c_cat(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=3))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    ins = []
    for _ in range(draw(st.integers(1, 3))):
        s = list(shape)
        s[d] = draw(st.integers(0, 3))
        ins.append(arr(draw, tuple(s), dt, ANY))
    return ins, {"dim": d}


@st.composite
def c_gather(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    ax = d % len(shape)
    ishape = tuple(draw(st.integers(0, 4 if n else 0)) if i == ax else draw(st.integers(0, n))
                   for i, n in enumerate(shape))
    idx = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), ishape,
                          elements=st.integers(0, max(shape[ax] - 1, 0))))
    return [arr(draw, shape, dt, ANY), idx], {"dim": d}


@st.composite
def c_take(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    ax = draw(st.integers(-len(shape), len(shape) - 1))
    n = draw(st.integers(0, 5)) if shape[ax] else 0  # repeats and omissions as well as permutations
    idx = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), (n,), elements=st.integers(0, max(shape[ax] - 1, 0))))
    return [arr(draw, shape, dt, ANY), idx], {"axis": ax}


@st.composite
def c_index_copy(draw):
    """Distinct indices: torch leaves the order of repeated writes undefined."""
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    ax = draw(st.integers(-len(shape), len(shape) - 1))
    idx = np.array(draw(st.permutations(range(shape[ax])))[: draw(st.integers(0, shape[ax]))], dtype=np.int64)
    src = list(shape)
    src[ax] = idx.size
    return [arr(draw, shape, dt, ANY), idx, arr(draw, tuple(src), dt, ANY)], {"axis": ax}


@st.composite
def c_mask_logits(draw):
    dt = draw(st.sampled_from(FLOATS))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    v = draw(st.integers(0, 70))
    words = hnp.arrays(np.int32, lead + (-(-v // 32),), elements=st.integers(-(2**31), 2**31 - 1))
    return [arr(draw, lead + (v,), dt, ANY), draw(words)], {}


@st.composite
def c_index(draw):
    dt = draw(st.sampled_from(ALL))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    k = draw(st.integers(0, len(shape)))
    ishapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=max(k, 1), min_dims=0, max_dims=2, min_side=0, max_side=3))
    idx = [draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), ishapes.input_shapes[i],
                           elements=st.integers(-shape[i], shape[i] - 1))) for i in range(k)]
    return [arr(draw, shape, dt, ANY)] + idx, {}


@st.composite
def c_embedding(draw):
    dt = draw(st.sampled_from(FLOATS + [I64]))
    v, dim = draw(st.integers(1, 6)), draw(st.integers(0, 4))
    ids = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), draw(SHAPES), elements=st.integers(0, v - 1)))
    return [arr(draw, (v, dim), dt, ANY), ids], {}


@st.composite
def c_argtopk(draw):
    """Ties everywhere (a few distinct values, NaN, +-inf); rows up to 140 long, so that torch's partial_sort
    (k * 64 <= n), nth_element and introsort (> 16 entries to sort) paths all run."""
    dt = draw(st.sampled_from(FLOATS + [I64, I32]))
    if draw(st.booleans()):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    else:
        shape = (draw(st.integers(1, 2)), draw(st.integers(17, 140)))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    k = draw(st.one_of(st.integers(0, min(shape[d], 3)), st.integers(0, shape[d])))
    x = arr(draw, shape, dt, draw(st.sampled_from([TIES, MODERATE])), lo=-3, hi=3)
    return [x], {"k": k, "dim": d, "largest": draw(st.booleans()), "sorted": draw(st.booleans())}


EIGHTHS = st.integers(-8, 8).map(lambda i: i / 8)


@st.composite
def c_moe(draw):
    """E experts, k slots (repeats allowed), any number of tokens; f16 computed in f32 on both sides."""
    dt = draw(st.sampled_from([F32, F32, F16]))
    E, K, H, inner = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    gated, act = draw(st.booleans()), draw(st.sampled_from(["silu", "relu", "gelu", "gelu_tanh"]))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    idx = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), lead + (K,), elements=st.integers(0, E - 1)))
    ins = [arr(draw, lead + (H,), dt, EIGHTHS), idx, arr(draw, lead + (K,), dt, EIGHTHS)]
    ins += [arr(draw, ((2 if gated else 1) * inner, H), dt, EIGHTHS) for _ in range(E)]
    ins += [arr(draw, (H, inner), dt, EIGHTHS) for _ in range(E)]
    return ins, {"act": act, "gated": gated}


_UNARY_MATH = c_unary(FLOATS)
CASES: dict[str, st.SearchStrategy] = {
    **{n: _UNARY_MATH for n in ["exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf",
                                "sigmoid", "silu"]},
    "neg": c_unary(NUMS, ANY), "abs": c_unary(NUMS, ANY), "relu": c_unary(NUMS, ANY),
    "logical_not": c_unary([BOOL]),
    "gelu": c_unary(FLOATS, attrs=st.sampled_from([{}, {"approximate": "none"}, {"approximate": "tanh"}])),
    **{n: c_nary(2, NUMS + [BOOL], (ANY, ANY)) for n in ["add", "mul", "maximum", "minimum"]},
    "sub": c_nary(2, NUMS, (ANY, ANY)),
    "div": c_nary(2, FLOATS, (ANY, MODERATE)),
    "pow": c_pow(),
    **{n: c_nary(2, ALL, (ANY, TIES)) for n in ["eq", "ne", "lt", "le", "gt", "ge"]},
    "logical_and": c_nary(2, [BOOL]), "logical_or": c_nary(2, [BOOL]),
    "where": c_nary(3, ALL, (ANY, ANY), cond=True),
    "cast": c_cast(), "full": c_full(), "arange": c_arange(),
    "linear": c_linear(), "matmul": c_matmul(), "sparse_input_linear": c_sparse_input_linear(),
    "sparsify": c_sparse_input_linear(linear=False),
    "layer_norm": c_norm(2), "rms_norm": c_norm(1), "sdpa": c_sdpa(),
    "sum": c_reduce(NUMS + [BOOL]), "mean": c_reduce(FLOATS),
    "amax": c_reduce(ALL, ANY, nonempty=True), "amin": c_reduce(ALL, ANY, nonempty=True),
    "argmax": c_along(NUMS, TIES, lambda d: {"keepdim": d(st.booleans())}, min_dims=1, nonempty=True),
    "cumsum": c_along(NUMS + [BOOL, U8], st.one_of(NICE, MODERATE)),
    "softmax": st.one_of(c_along(FLOATS), c_softmax_rows()),
    "log_softmax": st.one_of(c_along(FLOATS), c_softmax_rows()),
    "reshape": c_reshape(), "permute": c_permute(), "expand": c_expand(), "slice": c_slice(), "cat": c_cat(),
    "gather": c_gather(), "take": c_take(), "index_copy": c_index_copy(), "index": c_index(), "mask_logits": c_mask_logits(), "embedding": c_embedding(),
    "argtopk": c_argtopk(), "moe": c_moe(),
}


# -- the checks ------------------------------------------------------------------------------------
def quant_op(name: str) -> bool:
    """Quantized-weight ops are checked against their own formulas in tests/ir/test_quant_*.py."""
    return type(ir.OPS[name]).__module__.startswith("ir.ops.quant")


def test_every_op_has_a_torch_counterpart() -> None:
    core = {n for n in ir.OPS if not quant_op(n)}
    missing = sorted(core - set(TORCH))
    assert not missing, f"add a torch counterpart to TORCH for: {missing}"
    missing = sorted(core - set(CASES))
    assert not missing, f"add an input strategy to CASES for: {missing}"


def assert_same(name: str, ref: np.ndarray, got: np.ndarray, dt: DType) -> None:
    if dt.is_float:
        ref, got = ref.astype(np.float64), got.astype(np.float64)
    nan_r, nan_g = np.isnan(ref), np.isnan(got)
    assert (nan_r == nan_g).all(), f"{name}: NaN positions differ\nref:\n{ref}\ntorch:\n{got}"
    if name in EXACT or not dt.is_float:
        np.testing.assert_array_equal(ref, got, err_msg=name)
    else:
        rtol, atol = TOL[dt]
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


def check(name: str, arrays: list[np.ndarray], raw: dict[str, Any]) -> None:
    op = ir.OPS[name]
    attrs = op.normalize_attrs(raw)
    types = [ir.TensorType(from_numpy(a.dtype), a.shape) for a in arrays]
    t = op.infer(types, attrs)
    with np.errstate(all="ignore"):
        ref = np.asarray(op.reference([a.copy() for a in arrays], attrs))
    assert ref.shape == t.shape and ref.dtype == t.dtype.np, f"{name}: reference gives {ref.dtype}{list(ref.shape)}, infer {t}"
    got = TORCH[name]([to_torch(a) for a in arrays], attrs)
    assert tuple(got.shape) == t.shape and got.dtype == TD[t.dtype], f"{name}: torch gives {got.dtype}{list(got.shape)}, infer {t}"
    assert_same(name, ref, to_numpy(got), t.dtype)


@pytest.mark.parametrize("name", sorted(n for n in ir.OPS if not quant_op(n)))
def test_reference_matches_torch(name: str) -> None:
    if name not in CASES or name not in TORCH:
        pytest.fail(f"op {name} has no torch counterpart or input strategy; add it to TORCH and CASES")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(CASES[name])
    def run(case: tuple[list[np.ndarray], dict[str, Any]]) -> None:
        check(name, *case)
        checked.append(name)

    checked: list[str] = []
    run()
    assert checked, f"no drawn case of {name} was compared with torch"


def _generic(op: ir.OpDef) -> bool:
    """Takes tensors of one shape and needs no attrs but axes (so dims 0 make sense)."""
    return any(not o.endswith("?") for o in op.operands) and not any(
        a.required for a in op.attrs.values() if a.kind not in ("int", "ints"))


@pytest.mark.parametrize("name", sorted(n for n, op in ir.OPS.items() if _generic(op) and not quant_op(n)))
def test_reference_runs_wherever_the_type_rule_accepts(name: str) -> None:
    """Every dtype the type rule accepts, the reference computes, with the declared result type."""
    op = ir.OPS[name]
    req = [o for o in op.operands if not o.endswith("?")]
    attrs = op.normalize_attrs({k: ([0] if a.kind == "ints" else 0) for k, a in op.attrs.items() if a.required})
    for dt in DTYPES.values():
        if dt.packed:
            continue
        x = np.array([[1, 0, 1], [0, 1, 0]]).astype(dt.np)  # valid as an index along either axis
        ins = [x] * len(req)
        try:
            t = op.infer([ir.TensorType(dt, x.shape)] * len(req), attrs)
        except ValueError:
            continue
        with np.errstate(all="ignore"):
            ref = np.asarray(op.reference(ins, attrs))
        assert ref.shape == t.shape and ref.dtype == t.dtype.np, f"{name}({dt}): reference {ref.dtype}{list(ref.shape)}, infer {t}"


# -- the cases the brief names, pinned down -----------------------------------------------------------
def test_gelu_at_the_infinities_is_the_formula_in_ieee_arithmetic() -> None:
    """Found by a random run (issue 26): torch's f32 gelu(+inf) is NaN; ours is +inf, as its f64."""
    for approximate in ("none", "tanh"):
        for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
            y = ir.OPS["gelu"].reference([np.array([np.inf, -np.inf, 0.0], dt)], {"approximate": approximate})
            assert y[0] == np.inf and np.isnan(y[1]) and y[2] == 0, (approximate, dt, y)
        x64 = torch.tensor([math.inf], dtype=torch.float64)
        assert F.gelu(x64, approximate=approximate).item() == math.inf


def test_sdpa_grouped_query_masks_and_causal() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    k = rng.standard_normal((2, 2, 7, 4)).astype(np.float32)
    v = rng.standard_normal((2, 2, 7, 3)).astype(np.float32)
    bmask = rng.random((1, 1, 5, 7)) < 0.7
    bmask[..., 0] = True
    fmask = np.where(rng.random((2, 6, 5, 7)) < 0.3, -np.inf, rng.standard_normal((2, 6, 5, 7))).astype(np.float32)
    fmask[..., 0] = 0.0
    for extra in ([], [bmask], [fmask]):
        for causal in (False, True):
            check("sdpa", [q, k, v] + extra, {"scale": 0.5, "causal": causal})
    # each group of 3 query heads reads one kv head (repeat_interleave, not tile)
    out = ir.OPS["sdpa"].reference([q, k, v], {"scale": 0.5, "causal": False})
    one = ir.OPS["sdpa"].reference([q[:, 3:6], k[:, 1:2], v[:, 1:2]], {"scale": 0.5, "causal": False})
    np.testing.assert_allclose(out[:, 3:6], one, rtol=1e-6)


def test_sdpa_fully_masked_rows_are_zero_like_torch() -> None:
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.ones((1, 1, 3, 3), bool)
    mask[..., 1, :] = False
    check("sdpa", [q, k, v, mask], {"scale": 0.5, "causal": False})
    out = ir.OPS["sdpa"].reference([q, k, v, mask], {"scale": 0.5, "causal": False})
    assert (out[:, :, 1] == 0).all() and np.isfinite(out).all()
    fmask = np.where(mask, 0, -np.inf).astype(np.float32)
    check("sdpa", [q, k, v, fmask], {"scale": 0.5, "causal": True})


def test_norms_and_indexing_and_scans() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    check("layer_norm", [x, w, b], {"eps": 1e-5})
    check("layer_norm", [x], {"eps": 1e-5, "axes": 2})
    check("rms_norm", [x, w], {"eps": 1e-6})
    check("rms_norm", [x.astype(np.float16), w.astype(np.float16)], {"eps": 1e-6})
    check("gather", [x, rng.integers(0, 8, (3, 2, 5))], {"dim": -1})
    check("index", [x, np.array([[0, 2], [1, 1]]), np.array([3, -1])], {})
    check("embedding", [w.reshape(4, 2), np.array([[3, 0, 1]])], {})
    check("cumsum", [rng.random((3, 5)) < 0.5], {"dim": 1})
    check("cumsum", [rng.standard_normal((4, 40)).astype(np.float16)], {"dim": -1})
    check("slice", [x], {"dim": 2, "start": 1, "end": 8, "step": 3})
    rows = np.array([[0.0, -np.inf, 1.0], [-np.inf] * 3, [np.inf, 0, 0]], np.float32)
    check("softmax", [rows], {"dim": -1})
    check("log_softmax", [rows], {"dim": 1})
    sm = ir.OPS["softmax"].reference([rows], {"dim": -1})
    assert sm[0, 1] == 0 and np.isnan(sm[1]).all()


def test_type_rule_rejects_what_neither_torch_nor_the_reference_can_do() -> None:
    """Where the reference would crash, the type rule says no first (and torch agrees)."""
    f = np.zeros((0, 3), np.float32)
    cases = [("amax", [f], {"dims": [0]}), ("amin", [f], {"dims": []}), ("argmax", [f], {"dim": 0}),
             ("neg", [np.array([True])], {}), ("sub", [np.array([True])] * 2, {}),
             ("div", [np.array([4, 2])] * 2, {})]
    for name, arrays, raw in cases:
        op = ir.OPS[name]
        attrs = op.normalize_attrs(raw)
        with pytest.raises(ValueError):
            op.infer([ir.TensorType(from_numpy(a.dtype), a.shape) for a in arrays], attrs)
        if name != "div":  # torch true-divides ints to floats; the IR wants an explicit cast first
            with pytest.raises((RuntimeError, IndexError)):
                TORCH[name]([to_torch(a) for a in arrays], attrs)
    # reducing an empty axis is fine for sum and mean, and so is amax over the other axis
    check("sum", [f], {"dims": [0]})
    check("mean", [f], {"dims": [0]})
    check("amax", [f], {"dims": [1]})


def test_argtopk_ties_come_in_torchs_order() -> None:
    """torch's CPU topk leaves ties in libstdc++'s nth_element/partial_sort/sort order, not index order."""
    x = np.array([1, 2, 2, 1, 2, 0, 2], np.float32)
    got = ir.OPS["argtopk"].reference([x], {"k": 3, "dim": -1, "largest": True, "sorted": True})
    assert got.tolist() == [1, 6, 4] == torch.topk(torch.from_numpy(x), 3).indices.tolist()
    rng = np.random.default_rng(3)
    for n, k in [(7, 3), (40, 20), (130, 2), (200, 150)]:
        row = rng.integers(0, 3, (3, n)).astype(np.float32)
        row[0, rng.integers(0, n, 3)] = np.nan
        for largest in (True, False):
            for srt in (True, False):
                check("argtopk", [row], {"k": k, "dim": -1, "largest": largest, "sorted": srt})


def test_moe_routes_each_token_to_its_experts() -> None:
    """Two experts: token 0 to expert 1 alone (weight 1), token 1 to both with weights 0.25 and 0.75."""
    rng = np.random.default_rng(4)
    w_in = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(2)]
    w_out = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2)]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    idx, w = np.array([[1, 0], [0, 1]]), np.array([[1.0, 0.0], [0.25, 0.75]], np.float32)
    y = ir.OPS["moe"].reference([x, idx, w, *w_in, *w_out], {"act": "silu", "gated": True})

    def ffn(e: int, v: np.ndarray) -> np.ndarray:
        g, u = np.split(w_in[e] @ v, 2)
        return w_out[e] @ (g / (1 + np.exp(-g)) * u)
    np.testing.assert_allclose(y[0], ffn(1, x[0]), rtol=1e-5)
    np.testing.assert_allclose(y[1], 0.25 * ffn(0, x[1]) + 0.75 * ffn(1, x[1]), rtol=1e-5)
    check("moe", [x, idx, w, *w_in, *w_out], {"act": "silu", "gated": True})
