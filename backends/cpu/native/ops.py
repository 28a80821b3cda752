"""C lowerings of the ops a decoder's step graph uses: elementwise math, casts, reductions over the
last axes, views and copies, constants, gathers and the cache write, linear, rms_norm and sdpa.

Each computes what the op's `reference` (ir/ops) computes: NumPy's broadcasting, its float->int
casts (out of range or NaN: the minimum integer, as x86), its NaN rules (maximum/amax keep a NaN,
maximum(a, b) gives b where they are equal), integer arithmetic wrapping; indices wrap from the end
as NumPy's and an index out of range stops the step with an error. Float sums run in order (NumPy's
are pairwise), transcendental functions are libm's: results agree to rounding, not bit for bit.
"""
from __future__ import annotations

import math

import sympy

import ir
from ir.shapes import normalize_axis

from . import team
from .layout import Layout, contiguous_strides, ctype, numel, sym_shape
from .lowering import CLowering, Ctx, register_c_op

FLOATS = ("float", "double")


# -- printing helpers ---------------------------------------------------------------------------------
def par(ctx: Ctx, e: sympy.Expr) -> str:
    """A dim expression as a C factor (parenthesised unless it is one name or number)."""
    s = ctx.c(e)
    return s if s.replace("_", "").isalnum() else f"({s})"


def offset(ctx: Ctx, strides: tuple[sympy.Expr, ...], coords: list[str | None]) -> str:
    """sum(coord * stride) as C, dropping zero strides and unused coordinates."""
    terms = []
    for s, c in zip(strides, coords):
        if c is None or c == "0" or s == 0:
            continue
        terms.append(c if s == 1 else f"{c} * {par(ctx, s)}")
    return " + ".join(terms) or "0"


def rows_loop(ctx: Ctx, shape: tuple[sympy.Expr, ...], inner: str, flat_y: bool = True) -> str:
    """Loop over `shape`: rows (every dim but the last) shared by the team, the last dim inside.
    Coordinates are i0, i1, ... and j (the last); `inner` is the statement (`yj` = the row-major index)."""
    if not shape:
        return f"SHARE(1);\nfor (int64_t r = lo; r < hi; r++) {{\n    const int64_t j = 0, yj = 0;\n    {inner};\n}}"
    rows, cols = numel(shape[:-1]), shape[-1]
    lines = [f"SHARE({ctx.c(rows)});", "for (int64_t r = lo; r < hi; r++) {"]
    lead = [d for d in range(len(shape) - 1) if shape[d] != 1]
    if lead:
        lines.append("    int64_t q = r;")
    for d in reversed(range(len(shape) - 1)):
        if shape[d] == 1:
            continue
        if d == lead[0]:
            lines.append(f"    const int64_t i{d} = q;")
        else:
            lines.append(f"    const int64_t i{d} = q % {par(ctx, shape[d])}; q /= {par(ctx, shape[d])};")
    lines.append(f"    for (int64_t j = 0; j < {ctx.c(cols)}; j++) {{")
    if flat_y:
        lines.append(f"        const int64_t yj = r * {par(ctx, cols)} + j;")
    lines += [f"        {inner};", "    }", "}"]
    return "\n".join(lines)


def coords(shape: tuple[sympy.Expr, ...]) -> list[str | None]:
    return [None if d == 1 else f"i{k}" for k, d in enumerate(shape[:-1])] + (["j"] if shape else [])


def literal(v: bool | int | float, t: str) -> str:
    if t in FLOATS:
        v = float(v)
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "-INFINITY"
        return f"({t}){v.hex()}"
    v = int(v)
    return f"INT64_C({v})" if abs(v) >= 2 ** 31 else str(v)


# -- elementwise --------------------------------------------------------------------------------------
def unary_expr(op: str, t: str, x: str) -> str | None:
    if t in FLOATS:
        f = "f" if t == "float" else ""
        return {"neg": f"-{x}", "abs": f"fabs{f}({x})", "exp": f"exp{f}({x})", "log": f"log{f}({x})",
                "sqrt": f"sqrt{f}({x})", "rsqrt": f"1 / sqrt{f}({x})", "reciprocal": f"1 / {x}",
                "sin": f"sin{f}({x})", "cos": f"cos{f}({x})", "tanh": f"tanh{f}({x})", "erf": f"erf{f}({x})",
                "sigmoid": f"1 / (1 + exp{f}(-{x}))", "silu": f"{x} * (1 / (1 + exp{f}(-{x})))",
                "relu": f"({x} <= 0 ? 0 : {x})"}.get(op)
    if op == "logical_not":
        return f"!{x}"
    wrap = f"({t})(0 - (uint64_t){x})"
    return {"neg": wrap, "abs": f"({x} < 0 ? {wrap} : {x})", "relu": f"({x} > 0 ? {x} : 0)"}.get(op)


def binary_expr(op: str, t: str, a: str, b: str) -> str | None:
    cmp = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
    if op in cmp:
        return f"{a} {cmp[op]} {b}"
    if op == "maximum":
        return f"({a} > {b} || {a} != {a} ? {a} : {b})"
    if op == "minimum":
        return f"({a} < {b} || {a} != {a} ? {a} : {b})"
    if op in ("logical_and", "logical_or"):
        return f"{a} {'&&' if op == 'logical_and' else '||'} {b}"
    if t in FLOATS:
        f = "f" if t == "float" else ""
        return {"add": f"{a} + {b}", "sub": f"{a} - {b}", "mul": f"{a} * {b}", "div": f"{a} / {b}",
                "pow": f"pow{f}({a}, {b})"}.get(op)
    if t == "uint8_t" and op in ("add", "mul"):  # bool: or, and (NumPy's)
        return f"{a} {'|' if op == 'add' else '&'} {b}"
    sym = {"add": "+", "sub": "-", "mul": "*"}.get(op)
    return f"({t})((uint64_t){a} {sym} (uint64_t){b})" if sym else None  # two's complement wrap, as NumPy


INT_LIMITS = {"int64_t": ("INT64_MIN", 2.0 ** 63), "int32_t": ("INT32_MIN", 2.0 ** 31)}


def cast_expr(src: ir.DType, dst: ir.DType, x: str) -> str | None:
    s, d = ctype(src), ctype(dst)
    if dst.name == "bool":
        return f"{x} != 0"
    if s in FLOATS and d not in FLOATS:
        if d not in INT_LIMITS:
            return None  # NumPy's float -> small int goes through int32 on x86: not spelled out here
        low, lim = INT_LIMITS[d]
        return f"({x} >= -{lim!r} && {x} < {lim!r} ? ({d}){x} : {low})"
    return f"({d}){x}"


def elementwise(ctx: Ctx, expr_of) -> CLowering | None:
    n = ctx.node
    ts = [ctype(t) for t in ctx.types]
    if None in ts or ctype(n.type) is None:
        return None
    shape = ctx.shape
    lays = [ctx.layout(j) for j in range(len(n.operands))]
    if all(lay.contiguous and lay.shape == shape for lay in lays):  # no broadcasting, no strides: one flat loop
        e = expr_of(*[f"x{j}[i]" for j in range(len(lays))])
        if e is None:
            return None
        body = f"SHARE({ctx.c(numel(shape))});\nfor (int64_t i = lo; i < hi; i++) y[i] = {e};"
        return CLowering(body)
    cs = coords(shape)
    e = expr_of(*[f"x{j}[{offset(ctx, lay.broadcast_to(shape), cs)}]" for j, lay in enumerate(lays)])
    if e is None:
        return None
    return CLowering(rows_loop(ctx, shape, f"y[yj] = {e}"))


UNARY = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "erf", "sigmoid", "silu",
         "relu", "logical_not")
BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
          "logical_or")


@register_c_op(*UNARY)
def _unary(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    return elementwise(ctx, lambda x: unary_expr(node.op, ctx.ctype(0), x))


@register_c_op(*BINARY)
def _binary(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if node.op == "pow" and ctx.ctype(0) not in FLOATS:
        return None  # integer powers: NumPy's rules (negative exponents raise) are not spelled out here
    return elementwise(ctx, lambda a, b: binary_expr(node.op, ctx.ctype(0), a, b))


@register_c_op("where")
def _where(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    return elementwise(ctx, lambda c, a, b: f"{c} ? {a} : {b}")


@register_c_op("cast")
def _cast(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    return elementwise(ctx, lambda x: cast_expr(ctx.types[0].dtype, node.type.dtype, x))


# -- reductions over the last axes --------------------------------------------------------------------
@register_c_op("sum", "mean", "amax", "amin")
def _reduce(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    t, tin = ctx.ctype(), ctx.types[0]
    if t is None or t == "uint8_t" and tin.dtype.name == "bool" or tin.rank == 0:
        return None
    axes = sorted({normalize_axis(d, tin.rank) for d in node.attrs["dims"]}) or list(range(tin.rank))
    if axes != list(range(tin.rank - len(axes), tin.rank)):
        return None  # only trailing axes: one contiguous run per output
    x = ctx.contiguous(0)
    K = numel(x.shape[-len(axes):])
    rows = numel(x.shape[:-len(axes)])
    acc = t if t in FLOATS else "uint64_t"
    if node.op in ("sum", "mean"):
        init, step, fin = "0", "a += xr[k];", f"({t})a" + (f" / ({t}){par(ctx, K)}" if node.op == "mean" else "")
    else:
        cmp = ">" if node.op == "amax" else "<"
        acc = t
        init = "xr[0]"
        step = f"if (xr[k] {cmp} a || xr[k] != xr[k]) {{ a = xr[k]; if (a != a) break; }}"
        fin = "a"
    body = (f"SHARE({ctx.c(rows)});\nfor (int64_t r = lo; r < hi; r++) {{\n"
            f"    const {t} *xr = x0 + r * {par(ctx, K)};\n    {acc} a = {init};\n"
            f"    for (int64_t k = 0; k < {ctx.c(K)}; k++) {step}\n    y[r] = {fin};\n}}")
    return CLowering(body, work=numel(x.shape))


# -- views and copies ---------------------------------------------------------------------------------
def copy_to_contiguous(ctx: Ctx, lay: Layout) -> str:
    return rows_loop(ctx, lay.shape, f"y[yj] = x0[{offset(ctx, lay.strides, coords(lay.shape))}]")


@register_c_op("reshape")
def _reshape(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    lay, shape = ctx.layout(0), ctx.shape
    if lay.contiguous:
        return CLowering(view=Layout(lay.root, shape, contiguous_strides(shape), lay.offset))
    return CLowering(copy_to_contiguous(ctx, lay))  # row-major order of the operand = the reshape's


@register_c_op("permute")
def _permute(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    lay, p = ctx.layout(0), node.attrs["perm"]
    return CLowering(view=Layout(lay.root, tuple(lay.shape[i] for i in p), tuple(lay.strides[i] for i in p), lay.offset))


@register_c_op("expand")
def _expand(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    lay, shape = ctx.layout(0), ctx.shape
    return CLowering(view=Layout(lay.root, shape, lay.broadcast_to(shape), lay.offset))


@register_c_op("slice")
def _slice(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    lay = ctx.layout(0)
    ax = normalize_axis(node.attrs["dim"], len(lay.shape))
    start = ir.shapes.expr(node.attrs["start"])
    strides = tuple(s * node.attrs["step"] if i == ax else s for i, s in enumerate(lay.strides))
    return CLowering(view=Layout(lay.root, ctx.shape, strides, sympy.expand(lay.offset + start * lay.strides[ax])))


@register_c_op("cat")
def _cat(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if ctx.ctype() is None:
        return None
    shape = ctx.shape
    ax = normalize_axis(node.attrs["dim"], len(shape))
    ys = contiguous_strides(shape)
    parts, start = [], sympy.Integer(0)
    for j, t in enumerate(ctx.types):
        lay = ctx.layout(j)
        cs = coords(lay.shape)
        dst = offset(ctx, ys, cs)
        at = "" if start == 0 else f"{par(ctx, start * ys[ax])} + "
        src = offset(ctx, lay.strides, cs)
        parts.append(f"{{  /* operand {j} */\n" + _indent(rows_loop(ctx, lay.shape, f"y[{at}{dst}] = x{j}[{src}]",
                                                                   flat_y=False)) + "\n}")
        start = sympy.expand(start + lay.shape[ax])
    return CLowering("\n".join(parts))


def _indent(s: str) -> str:
    return "\n".join("    " + line if line else line for line in s.splitlines())


# -- constants ---------------------------------------------------------------------------------------
@register_c_op("full")
def _full(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    t = ctx.ctype()
    if t is None:
        return None
    v = literal(node.attrs["value"] if t != "uint8_t" or node.type.dtype.name != "bool" else bool(node.attrs["value"]), t)
    return CLowering(f"SHARE({ctx.c(ctx.numel())});\nfor (int64_t i = lo; i < hi; i++) y[i] = {v};")


@register_c_op("arange")
def _arange(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    t = ctx.ctype()
    if t is None or t == "uint8_t":
        return None
    start = par(ctx, ir.shapes.expr(node.attrs["start"]))
    return CLowering(f"SHARE({ctx.c(ctx.numel())});\nfor (int64_t i = lo; i < hi; i++) y[i] = ({t})({start} + i);")


# -- gathers and the cache write -----------------------------------------------------------------------
@register_c_op("embedding")
def _embedding(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if ctx.ctype() is None or ctx.ctype(1) is None:
        return None
    w, ids = ctx.contiguous(0), ctx.contiguous(1)
    V, D = w.shape
    body = (f"SHARE({ctx.c(numel(ids.shape))});\nfor (int64_t r = lo; r < hi; r++) {{\n"
            f"    const int64_t t = wrap((int64_t)x1[r], {ctx.c(V)});\n"
            f"    if (t < 0) {{ *err = ERR_INDEX; continue; }}\n"
            f"    memcpy(y + r * {par(ctx, D)}, x0 + t * {par(ctx, D)}, sizeof(*y) * {par(ctx, D)});\n}}")
    return CLowering(body)


@register_c_op("index")
def _index(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if ctx.ctype() is None or any(ctype(t) is None for t in ctx.types):
        return None
    x = ctx.contiguous(0)
    k = len(node.operands) - 1
    bshape = ctx.shape[:len(ctx.shape) - (len(x.shape) - k)]
    R = numel(x.shape[k:])
    cs = coords(bshape)
    src = []
    for m in range(k):
        i = offset(ctx, ctx.layout(m + 1).broadcast_to(bshape), cs)
        src.append(f"const int64_t t{m} = wrap((int64_t)x{m + 1}[{i}], {ctx.c(x.shape[m])});")
    bad = " || ".join(f"t{m} < 0" for m in range(k)) or "0"
    at = " + ".join(f"t{m} * {par(ctx, x.strides[m])}" for m in range(k)) or "0"
    inner = (" ".join(src) + f"\n        if ({bad}) {{ *err = ERR_INDEX; continue; }}\n"
             f"        memcpy(y + yj * {par(ctx, R)}, x0 + {at}, sizeof(*y) * {par(ctx, R)})")
    return CLowering(rows_loop(ctx, bshape, inner), work=ctx.numel())


@register_c_op("index_copy")
def _index_copy(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if ctx.ctype() is None or ctx.ctype(1) is None:
        return None
    x, idx, src = ctx.layout(0), ctx.layout(1), ctx.layout(2)
    ax = normalize_axis(node.attrs["axis"], len(x.shape))
    cs = coords(src.shape)
    dst_strides = x.strides if node.attrs["inplace"] else contiguous_strides(x.shape)
    dcs = list(cs)
    dcs[ax] = "t"
    inner = (f"const int64_t t = wrap((int64_t)x1[{offset(ctx, idx.strides, [cs[ax] or '0'])}], {ctx.c(x.shape[ax])});\n"
             f"        if (t < 0) {{ *err = ERR_INDEX; continue; }}\n"
             f"        y[{offset(ctx, dst_strides, dcs)}] = x2[{offset(ctx, src.strides, cs)}]")
    write = rows_loop(ctx, src.shape, inner, flat_y=False)
    # one thread writes, in index order: a repeated index keeps the last write, as NumPy's
    if node.attrs["inplace"]:  # x is donated (passes/donate_state.py): write into its buffer
        return CLowering(write, view=x, work=sympy.Integer(0))
    copy = copy_to_contiguous(ctx, x)
    return CLowering("{\n" + _indent(copy) + "\n}\n{\n" + _indent(write) + "\n}", work=sympy.Integer(0))


# -- linear algebra ----------------------------------------------------------------------------------
@register_c_op("linear")
def _linear(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if node.type.dtype.name != "f32":
        return None
    x, w = ctx.contiguous(0), ctx.contiguous(1)
    if len(node.operands) == 3:
        ctx.contiguous(2)
    N, D, OUT = numel(x.shape[:-1]), x.shape[-1], w.shape[0]
    bias = "x2" if len(node.operands) == 3 else "NULL"
    return CLowering(f"gemv_f32(par, x0, {ctx.c(N)}, {ctx.c(D)}, x1, {ctx.c(OUT)}, {bias}, y);", team=(team.GEMV,),
                     work=sympy.expand(N * D * OUT))


@register_c_op("rms_norm")
def _rms_norm(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if node.type.dtype.name != "f32":
        return None
    x = ctx.contiguous(0)
    if len(node.operands) == 2:
        ctx.contiguous(1)
    k = node.attrs["axes"]
    D = numel(x.shape[len(x.shape) - k:])
    eps = literal(float(__import__("numpy").float32(node.attrs["eps"])), "float")
    w = "x1" if len(node.operands) == 2 else "NULL"
    return CLowering(f"rms_norm_f32(par, x0, {ctx.c(numel(x.shape[:len(x.shape) - k]))}, {ctx.c(D)}, {w}, {eps}, y);",
                     team=(team.RMS_NORM,))


@register_c_op("sdpa")
def _sdpa(node: ir.Node, g: ir.Graph, ctx: Ctx) -> CLowering | None:
    if node.type.dtype.name != "f32":
        return None
    q = ctx.contiguous(0)
    k, v = (ctx.layout(j) if ctx.layout(j).strides[3] == 1 or ctx.layout(j).shape[3] == 1 else ctx.contiguous(j)
            for j in (1, 2))
    B, H, L, E = q.shape
    KH, S, EV = k.shape[1], k.shape[2], v.shape[3]
    kind, mask, ms = 0, "NULL", [sympy.Integer(0)] * 4
    if len(node.operands) == 4:
        m = ctx.layout(3)
        kind, mask = (1 if ctx.types[3].dtype.name == "bool" else 2), "x3"
        ms = list(m.broadcast_to((B, H, L, S)))
    c = ctx.c
    body = (f"const int64_t ks[3] = {{{c(k.strides[0])}, {c(k.strides[1])}, {c(k.strides[2])}}};\n"
            f"const int64_t vs[3] = {{{c(v.strides[0])}, {c(v.strides[1])}, {c(v.strides[2])}}};\n"
            f"const int64_t ms[4] = {{{', '.join(c(s) for s in ms)}}};\n"
            f"const int64_t dims[7] = {{{', '.join(c(d) for d in (B, H, KH, L, S, E, EV))}}};\n"
            f"sdpa_f32(par, err, x0, x1, ks, x2, vs, {mask}, {kind}, ms, dims, "
            f"{literal(float(__import__('numpy').float32(node.attrs['scale'])), 'float')}, "
            f"{int(bool(node.attrs['causal']))}, y);")
    return CLowering(body, team=(team.SDPA,), work=sympy.expand(B * H * L * S * (E + EV)))


__all__ = ["elementwise", "rows_loop", "offset", "coords", "literal", "sym_shape"]
