"""target="cpu"'s native step (backends/cpu/native): one C library per graph against the reference runtime.

Per op family (hypothesis: ragged shapes, broadcasting, views, zeros, NaN and inf, empty dims), the tiny
Llama and Qwen3 KV-cache step graphs (prefill, then decode steps), greedy generate, the C text, and a
node without a C lowering (run in Python through the callback, reported)."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ir
from backends.cpu import cc, native

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler with OpenMP")

F32 = ir.DTYPES["f32"]
I64 = ir.DTYPES["i64"]
BOOL = ir.DTYPES["bool"]


def check(g: ir.Graph, inputs: list[np.ndarray], tol: float = 1e-5) -> native.NativeExecutable:
    exe = native.build(g)
    want = ir.run(g, [a.copy() for a in inputs])
    got = exe([a.copy() for a in inputs])
    for w, x in zip(want, got):
        assert w.shape == x.shape and w.dtype == x.dtype, (w.shape, x.shape, w.dtype, x.dtype)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(x, w, rtol=tol, atol=tol, equal_nan=True)
        else:
            np.testing.assert_array_equal(x, w)
    return exe


def graph(text: str, **weights: np.ndarray) -> ir.Graph:
    g = ir.parse(text)
    g.weights.update(weights)
    return ir.verify(g)


def floats(shape: tuple[int, ...], special: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32)
    if special and a.size:
        flat = a.reshape(-1)
        flat[rng.integers(0, a.size, 3)] = [np.nan, np.inf, -np.inf][: min(3, a.size)] if a.size >= 3 else np.nan
        flat[rng.integers(0, a.size)] = 0.0
    return a


shapes = st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(0, 9))


@settings(max_examples=12, deadline=None)
@given(shape=shapes, op=st.sampled_from(["add", "sub", "mul", "div", "pow", "maximum", "minimum"]),
       bcast=st.sampled_from(["full", "row", "col", "scalar"]), special=st.booleans(), seed=st.integers(0, 99))
def test_binary_ops_broadcast(shape, op, bcast, special, seed):
    a, b0, c = shape
    bshape = {"full": [a, b0, c], "row": [1, 1, c], "col": [a, b0, 1], "scalar": []}[bcast]
    g = graph(f"graph @g(%x: f32[{a}, {b0}, {c}], %y: f32[{', '.join(map(str, bshape))}]) {{\n"
              f"  %z: f32[{a}, {b0}, {c}] = {op}(%x, %y)\n  return %z\n}}")
    x, y = floats((a, b0, c), special, seed), floats(tuple(bshape), special, seed + 1)
    if op == "pow":
        x = np.abs(x)
    check(g, [x, y], tol=1e-5)


@settings(max_examples=12, deadline=None)
@given(shape=shapes, op=st.sampled_from(["neg", "exp", "rsqrt", "silu", "sin", "cos", "sigmoid", "abs", "tanh"]),
       special=st.booleans(), seed=st.integers(0, 99))
def test_unary_ops(shape, op, special, seed):
    dims = ", ".join(map(str, shape))
    g = graph(f"graph @g(%x: f32[{dims}]) {{\n  %y: f32[{dims}] = {op}(%x)\n  return %y\n}}")
    x = floats(shape, special, seed)
    if op == "rsqrt":
        x = np.abs(x)
    check(g, [x], tol=2e-6)


@settings(max_examples=10, deadline=None)
@given(shape=shapes, op=st.sampled_from(["sum", "mean", "amax"]), keep=st.booleans(), special=st.booleans(),
       seed=st.integers(0, 99))
def test_reductions_last_axis(shape, op, keep, special, seed):
    a, b, c = shape
    if op == "amax" and c == 0:
        c = 1
    out = [a, b, 1] if keep else [a, b]
    g = graph(f"graph @g(%x: f32[{a}, {b}, {c}]) {{\n  %y: f32[{', '.join(map(str, out))}] = {op}(%x) "
              f"{{dims = [-1], keepdim = {'true' if keep else 'false'}}}\n  return %y\n}}")
    check(g, [floats((a, b, c), special, seed)], tol=1e-5)


def test_integer_and_bool_elementwise_and_casts():
    g = graph("graph @g(%a: i64[2, s], %b: i64[s], %m: i64[1, s], %f: f32[s]) {\n"
              "  %c: i64[2, s] = add(%a, %b)\n  %d: i64[2, s] = mul(%c, %a)\n  %e: bool[2, s] = le(%d, %b)\n"
              "  %mb: bool[1, s] = cast(%m) {dtype = bool}\n  %k: bool[2, s] = logical_and(%e, %mb)\n"
              "  %fi: i64[s] = cast(%f) {dtype = i64}\n  %ff: f32[2, s] = cast(%c) {dtype = f32}\n"
              "  %n: i64[2, s] = neg(%a)\n  return %k, %fi, %ff, %n\n}")
    rng = np.random.default_rng(0)
    a = rng.integers(-2 ** 62, 2 ** 62, (2, 7))  # products wrap, as NumPy's
    f = np.array([1.5, -2.7, np.nan, np.inf, -1e30, 0.0, 3e9], np.float32)
    check(g, [a, rng.integers(-5, 5, 7), rng.integers(0, 2, (1, 7)), f])


def test_views_slices_cat_and_copies():
    g = graph("graph @g(%x: f32[2, s, 8]) {\n"
              "  %p: f32[s, 2, 8] = permute(%x) {perm = [1, 0, 2]}\n"
              "  %r: f32[s, 16] = reshape(%p) {shape = [s, 16]}\n"
              "  %a: f32[s, 4] = slice(%r) {dim = 1, start = 2, end = 10, step = 2}\n"
              "  %b: f32[2, s, 3] = slice(%x) {dim = 2, start = 5, end = 8}\n"
              "  %c: f32[2, s, 11] = cat(%x, %b) {dim = 2}\n"
              "  %e: f32[3, 2, s, 11] = expand(%c) {shape = [3, 2, s, 11]}\n"
              "  %t: f32[1, s, 11] = slice(%c) {dim = 0, start = 1, end = 2}\n"
              "  %u: f32[s, 11] = reshape(%t) {shape = [s, 11]}\n"
              "  %v: f32[s, 11] = neg(%u)\n"
              "  return %a, %e, %v, %x\n}")
    for s in (1, 5, 0):
        check(g, [floats((2, s, 8), True, s)])


def test_constants_index_embedding_and_cache_write():
    emb = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    g = graph("graph @g(%ids: i64[1, s], %kv: f32[1, 2, c, 6], %p: i64[], %mask: i64[1, l]) {\n"
              "  param @emb: f32[10, 6]\n"
              "  %e: f32[1, s, 6] = embedding(@emb, %ids)\n"
              "  %ar: i64[s] = arange() {start = 0, end = s, dtype = i64}\n"
              "  %pos: i64[s] = add(%ar, %p)\n"
              "  %x: f32[1, s, 2, 3] = reshape(%e) {shape = [1, s, 2, 3]}\n"
              "  %xt: f32[1, 2, s, 3] = permute(%x) {perm = [0, 2, 1, 3]}\n"
              "  %src: f32[1, 2, s, 6] = cat(%xt, %xt) {dim = 3}\n"
              "  %w: f32[1, 2, c, 6] = index_copy(%kv, %pos, %src) {axis = 2, inplace = true}\n"
              "  %z: i64[1, 1, 1, 1] = full() {value = 0, dtype = i64, shape = [1, 1, 1, 1]}\n"
              "  %al: i64[l] = arange() {start = 0, end = l, dtype = i64}\n"
              "  %al4: i64[1, 1, 1, l] = reshape(%al) {shape = [1, 1, 1, l]}\n"
              "  %mb: bool[1, l] = cast(%mask) {dtype = bool}\n"
              "  %ix: bool[1, 1, 1, l] = index(%mb, %z, %al4)\n"
              "  %one: f32[] = full() {value = 1.5, dtype = f32, shape = []}\n"
              "  %sc: f32[1, s, 6] = mul(%e, %one)\n"
              "  return %w, %ix, %sc\n}", emb=emb)
    rng = np.random.default_rng(2)
    for s, past in ((3, 0), (1, 3), (2, 4)):
        kv = rng.standard_normal((1, 2, 8, 6)).astype(np.float32)
        ids = rng.integers(-10, 10, (1, s))  # negative ids count from the end, as NumPy's
        mask = rng.integers(0, 2, (1, past + s))
        exe = check(g, [ids, kv, np.array(past), mask])
    kv = np.zeros((1, 2, 8, 6), np.float32)
    outs = exe([np.array([[1]]), kv, np.array(2), np.ones((1, 3), np.int64)])
    assert outs[0] is kv  # the donated cache comes back, written in place
    with pytest.raises(ir.RuntimeShapeError, match="%e = embedding: an index is out of range"):  # names the node
        exe([np.array([[11]]), kv, np.array(0), np.ones((1, 1), np.int64)])


@pytest.mark.parametrize("masked", [False, True])
def test_linear_rms_norm_sdpa(masked):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((13, 32)).astype(np.float32)
    bias = rng.standard_normal(13).astype(np.float32)
    nw = rng.standard_normal(32).astype(np.float32)
    mask = "%m" if masked else ""
    g = graph("graph @g(%x: f32[2, s, 32], %k: f32[2, 2, c, 8], %v: f32[2, 2, c, 8], %m: bool[2, 1, s, l]) {\n"
              "  param @w: f32[13, 32]\n  param @b: f32[13]\n  param @nw: f32[32]\n"
              "  %n: f32[2, s, 32] = rms_norm(%x, @nw) {eps = 1e-05}\n"
              "  %y: f32[2, s, 13] = linear(%n, @w, @b)\n"
              "  %q4: f32[2, s, 4, 8] = reshape(%x) {shape = [2, s, 4, 8]}\n"
              "  %qq: f32[2, 4, s, 8] = permute(%q4) {perm = [0, 2, 1, 3]}\n"
              "  %ks: f32[2, 2, l, 8] = slice(%k) {dim = 2, start = 0, end = l}\n"
              "  %vs: f32[2, 2, l, 8] = slice(%v) {dim = 2, start = 0, end = l}\n"
              f"  %o: f32[2, 4, s, 8] = sdpa(%qq, %ks, %vs{', ' + mask if masked else ''}) {{scale = 0.35}}\n"
              "  return %y, %o\n}", w=w, b=bias, nw=nw)
    for s, L in ((1, 5), (4, 9), (7, 7)):
        x = rng.standard_normal((2, s, 32)).astype(np.float32)
        k, v = (rng.standard_normal((2, 2, 12, 8)).astype(np.float32) for _ in range(2))
        m = rng.random((2, 1, s, L)) < 0.7
        m[0, 0, 0] = False  # a row with every key masked gives 0
        check(g, [x, k, v, m], tol=1e-5)


def test_fallback_node_runs_in_python_and_is_reported():
    g = graph("graph @g(%x: f32[3, s]) {\n  %a: f32[3, s] = exp(%x)\n"
              "  %b: f32[3, s] = softmax(%a) {dim = 0}\n  %c: f32[3, s] = add(%b, %x)\n  return %c\n}")
    with pytest.warns(UserWarning, match=r"1 node\(s\) without a C lowering run in Python: %b \(softmax\)"):
        exe = check(g, [floats((3, 5), False, 0)])
    assert exe.fallbacks == [("b", "softmax")] and "cb(0, p)" in exe.source
    from compiler.report import format_fallbacks

    assert "%b (softmax)" in format_fallbacks(exe)


def test_c_text_is_one_function_per_node_and_one_team():
    g = graph("graph @g(%x: f32[2, s]) {\n  %\"a*/ weird\": f32[2, s] = exp(%x)\n  %b: f32[2, s] = mul(%\"a*/ weird\", %x)\n"
              "  return %b\n}")
    src = native.build(g).source
    assert src.count("#pragma omp parallel") == 1 and "static void op0_exp(" in src and "static void op1_mul(" in src
    assert "a*/ weird" not in src and "/* %a_/ weird: f32[2, s] = exp(%x) */" in src  # names only in sanitised comments


def _step_graph(arch: str, quant: str = ""):
    from backends import get_backend
    from compiler.pass_manager import PassManager, lower
    from frontends.hf_models import tiny
    from frontends.kv_cache import cache_shapes, export_with_cache

    m = tiny(arch)
    g = PassManager(f"fold_transposes,constant_fold,cse,dce,{quant + ',' if quant else ''}donate_state").run(
        export_with_cache(m, 1).graph)
    return lower(get_backend("cpu"), g), cache_shapes(m, 1, 16)


def _prefill_and_decode(g: ir.Graph, exe: native.NativeExecutable, shapes: list, tol: float) -> None:
    """A 6-token prefill, then 3 greedy decode steps: every output (cache writes, logits) as the reference's."""
    ids = np.random.default_rng(0).integers(0, 128, (1, 6))
    ref = [np.zeros(s, np.float32) for s in shapes]
    got = [c.copy() for c in ref]
    past = 0
    for _ in range(4):
        s = ids.shape[1]
        head = [ids, np.arange(past, past + s)[None], np.ones((1, past + s), np.int64), np.array(past)]
        want = ir.run(g, head + [c.copy() for c in ref])
        out = exe(head + got)
        for w, x in zip(want, out):
            np.testing.assert_allclose(x, w, rtol=tol, atol=tol)
        ref, got = want[:-1], out[:-1]
        past += s
        ids = np.array([[int(np.argmax(want[-1]))]])


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_step_graphs_prefill_and_decode(arch):
    g, shapes = _step_graph(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every node of the step lowers to C
        exe = native.build(g)
    assert exe.fallbacks == [] and exe.source.count("#pragma omp parallel") == 1
    _prefill_and_decode(g, exe, shapes, 1e-5)


def test_generate_greedy_matches_reference():
    import torch

    import compiler
    from frontends.hf_models import tiny

    model = tiny("llama")
    ids = torch.tensor([[5, 17, 99, 3, 42, 8, 1, 64, 23]])
    cpu = compiler.compile(model, target="cpu")
    out = cpu.generate(ids, max_new_tokens=12)
    ref = compiler.compile(model, target="reference").generate(ids, max_new_tokens=12)
    assert torch.equal(out, ref)
    spec, _ = cpu.generator.step_for(1, False) if hasattr(cpu, "generator") else (None, None)
    if spec is not None:
        assert isinstance(spec.executable, native.NativeExecutable)


def test_compiler_flags_include_openmp():
    assert "-fopenmp" in cc.flags()


# -- lut_linear: lut_kernel.py's team function inside the step ------------------------------------------
LUT_SHAPES = [(2, 70, 37, 37, 64), (3, 130, 150, 16, 16), (4, 63, 201, 8, 8)]  # (P, out, cols, group, tgroup): odd tables


def _lut_graph(shape: tuple, table: str, offs: bool, bias: bool, paired: bool, seed: int) -> ir.Graph:
    from ir.ops.quant.lut import pack_bitplanes, pairs, tiles

    P, out, cols, group, tgroup = shape
    ng = -(-cols // group)
    rng = np.random.default_rng(seed)
    if paired:  # trit-planes: B+ and B- never both set, coefficients +a and -a
        T = rng.integers(-1, 2, (P // 2, out, cols))
        B = np.stack([T == 1, T == -1], axis=1).reshape(P, out, cols).astype(np.uint8)
        a = rng.standard_normal((P // 2, ng, out)).astype(np.float32)
        coef = np.stack([a, -a], axis=1).reshape(P, ng, out)
    else:
        B = (rng.random((P, out, cols)) < 0.5).astype(np.uint8)
        coef = rng.standard_normal((P, ng, out)).astype(np.float32)
    if rng.random() < 0.5:
        coef = coef.astype(np.float16).astype(np.float32)  # exact in f16: held as f16
    w = {"bits": pack_bitplanes(B), "coef": coef, "b": rng.standard_normal(out).astype(np.float32),
         "offs": rng.standard_normal((ng, out)).astype(np.float32) if offs else np.zeros((ng, out), np.float32)}
    return graph(f"graph @g(%x: f32[s, {cols}]) {{\n  param @bits: u8[{P}, {tiles(out)}, {pairs(cols)}, 64]\n"
                 f"  param @coef: f32[{P}, {ng}, {out}]\n  param @offs: f32[{ng}, {out}]\n  param @b: f32[{out}]\n"
                 f"  %y: f32[s, {out}] = lut_linear(%x, @bits, @coef, @offs{', @b' if bias else ''}) "
                 f"{{cols = {cols}, group = {group}, tgroup = {tgroup}, table = \"{table}\"}}\n  return %y\n}}", **w)


@settings(max_examples=12, deadline=None)
@given(shape=st.sampled_from(LUT_SHAPES), table=st.sampled_from(["f32", "i8", "i16"]), offs=st.booleans(),
       bias=st.booleans(), paired=st.booleans(), n=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_lut_linear_is_the_per_op_kernel(shape, table, offs, bias, paired, n, seed):
    """The step runs the same C as the per-op kernel (lut_kernel.py): bit for bit its result, for every table
    kind, zero or real offsets, trit-plane pairs, f16 coefficients; scratch that holds garbage (the odd
    tables' zero partner is written, not assumed)."""
    from backends.cpu.lut_kernel import lut_linear_kernel

    paired = paired and table != "f32" and shape[0] % 2 == 0
    g = _lut_graph(shape, table, offs and not paired, bias, paired, seed)
    x = floats((n, shape[2]), False, seed)
    exe = native.build(g)
    assert exe.fallbacks == [] and "_run(par, x0" in exe.source
    exe([x])
    exe._arena.fill(0xFF)  # NaN bytes in every slot
    got = exe([x])[0]
    node = g.nodes[0]
    want = lut_linear_kernel(node, g)(x, *[g.weights[o[1:]] for o in node.operands[1:]])
    np.testing.assert_array_equal(got, want)
    ref = ir.run(g, [x])[0]
    np.testing.assert_allclose(got, ref, rtol=1e-2 if table == "i8" else 1e-4, atol=1e-2 * max(np.abs(ref).max(initial=0), 1))


def test_ptqtp_step_graph_runs_without_fallbacks():
    """A ptqtp tiny Llama's KV-cache step: every lut_linear lowers to C (no Python callback), one thread team,
    one specialisation per layer shape; prefill and decode steps match the reference runtime within the
    int16 tables' tolerance (~1e-5 per layer, compounded over the layers)."""
    g, shapes = _step_graph("llama", "ptqtp{planes=2,group=64}")
    luts = [n for n in g.nodes if n.op == "lut_linear"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exe = native.build(g)
    assert luts and exe.fallbacks == [] and exe.source.count("#pragma omp parallel") == 1
    specs = re.findall(r"static void (lut_\w+)_run\(int par", exe.source)  # one per layer shape, not per layer
    assert exe.source.count("_run(par, x0") == len(luts) and 0 < len(specs) == len(set(specs)) < len(luts)
    _prefill_and_decode(g, exe, shapes, 1e-4)
