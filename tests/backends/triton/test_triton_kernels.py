"""Each kernel template and pointwise expression against the reference runtime, in Triton's interpreter:
every op of tests/ir/all_ops.ir that the backend supports, and hypothesis-generated shapes that don't divide
the tiles (matmul, attention, norms and reductions longer than one chunk), with NaN/inf and empty dims."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ir
from backends.triton import NO_GPU, TritonBackend

from interp import build, check

IR_DIR = Path(__file__).parent.parent.parent / "ir"
ALL_OPS = IR_DIR / "all_ops.ir"
SLOW = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def weights(g: ir.Graph, seed: int = 0) -> ir.Graph:
    """Random weights of each param's type; `*.idx` (sparse corrections) strictly increasing below 20."""
    rng = np.random.default_rng(seed)
    for p, t in g.params.items():
        if p.endswith(".idx"):
            g.weights[p] = np.sort(rng.choice(20, t.shape[0], replace=False)).astype(t.dtype.np)
            continue
        g.weights[p] = (rng.integers(t.dtype.lo, t.dtype.hi + 1, size=t.shape) if t.dtype.packed
                        else rng.standard_normal(t.shape)).astype(t.dtype.np)
    return g


def test_all_ops_graph_matches_the_reference() -> None:
    """Every core op (the file has each at least once), fused as the plan decides, at two lengths."""
    g = weights(ir.parse(ALL_OPS.read_text()))
    exe = build(g)
    rng = np.random.default_rng(1)
    for s0 in (1, 3):
        args = [rng.standard_normal((2, s0, 8)).astype(np.float32), rng.integers(0, 4, (2, s0)),
                rng.random((2, s0, 8)) < 0.5, rng.standard_normal(2 * s0 + 1).astype(np.float32)]
        check(g, args, rtol=1e-4, atol=1e-5, exe=exe)


@pytest.mark.parametrize("name", ["quant_planes", "quant_int8", "quant_codebook"])
def test_quantized_linears_match_the_reference(name: str) -> None:
    g = ir.parse((IR_DIR / f"{name}.ir").read_text())
    weights(g)
    rng = np.random.default_rng(2)
    args = [(rng.standard_normal(tuple(d if isinstance(d, int) else 5 for d in t.shape)) * 4).astype(t.dtype.np)
            for _, t in g.inputs]
    check(g, args, rtol=1e-4, atol=1e-4)


def test_unsupported_ops_are_named() -> None:
    g = weights(ir.parse((IR_DIR / "quant_lut.ir").read_text()))
    with pytest.raises(ir.CompileError, match="no Triton kernel for 'lut_linear'.*target='cpu'"):
        build(g)


# -- matmul ------------------------------------------------------------------------------------------------
@SLOW
@given(m=st.integers(0, 70), k=st.integers(1, 70), n=st.integers(1, 90), bias=st.booleans(), seed=st.integers(0, 99))
def test_linear_with_ragged_shapes(m: int, k: int, n: int, bias: bool, seed: int) -> None:
    b = ", @b" if bias else ""
    g = ir.parse(f"graph @t(%x: f32[2, s, {k}]) {{\n param @w: f32[{n}, {k}]\n param @b: f32[{n}]\n"
                 f" %y: f32[2, s, {n}] = linear(%x, @w{b})\n return %y\n}}")
    if not bias:
        del g.params["b"]
    weights(g, seed)
    x = np.random.default_rng(seed).standard_normal((2, m, k)).astype(np.float32)
    check(g, [x], rtol=1e-4, atol=1e-5)


@SLOW
@given(b=st.integers(1, 3), m=st.integers(1, 40), k=st.integers(1, 40), n=st.integers(1, 40),
       bcast=st.booleans(), seed=st.integers(0, 99))
def test_batched_matmul_broadcasts(b: int, m: int, k: int, n: int, bcast: bool, seed: int) -> None:
    bs = "1" if bcast else str(b)
    g = ir.parse(f"graph @t(%a: f32[{b}, 2, {m}, {k}], %w: f32[{bs}, 1, {k}, {n}]) {{\n"
                 f" %y: f32[{b}, 2, {m}, {n}] = matmul(%a, %w)\n return %y\n}}")
    rng = np.random.default_rng(seed)
    check(g, [rng.standard_normal((b, 2, m, k)).astype(np.float32),
              rng.standard_normal((int(bs), 1, k, n)).astype(np.float32)], rtol=1e-4, atol=1e-5)


# -- attention -----------------------------------------------------------------------------------------------
@SLOW
@given(L=st.integers(1, 40), S=st.integers(1, 70), d=st.sampled_from([8, 16, 24, 64]), kv=st.sampled_from([1, 2]),
       rep=st.sampled_from([1, 3]), causal=st.booleans(), mask=st.sampled_from(["none", "bool", "float"]),
       seed=st.integers(0, 99))
def test_sdpa_causal_masks_and_grouped_heads(L, S, d, kv, rep, causal, mask, seed) -> None:
    H = kv * rep
    m_in = {"none": "", "bool": f", %m: bool[1, 1, {L}, {S}]", "float": f", %m: f32[2, 1, {L}, {S}]"}[mask]
    m_op = "" if mask == "none" else ", %m"
    g = ir.parse(f"graph @t(%q: f32[2, {H}, {L}, {d}], %k: f32[2, {kv}, {S}, {d}], %v: f32[2, {kv}, {S}, {d}]{m_in}) {{\n"
                 f" %o: f32[2, {H}, {L}, {d}] = sdpa(%q, %k, %v{m_op}) {{scale = {d ** -0.5!r}, causal = {str(causal).lower()}}}\n return %o\n}}")
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((2, H, L, d)).astype(np.float32), rng.standard_normal((2, kv, S, d)).astype(np.float32),
            rng.standard_normal((2, kv, S, d)).astype(np.float32)]
    if mask == "bool":
        args.append(rng.random((1, 1, L, S)) < 0.7)  # some rows fully masked: they must come out 0
    elif mask == "float":
        args.append(np.where(rng.random((2, 1, L, S)) < 0.3, -np.inf, rng.standard_normal((2, 1, L, S))).astype(np.float32))
    check(g, args, rtol=1e-4, atol=1e-5)


# -- rows: norms, softmax, reductions, cumsum -------------------------------------------------------------
ROW = st.integers(1, 1300)  # > 1024: the chunk loop runs more than once


@SLOW
@given(n=ROW, rows=st.integers(0, 3), op=st.sampled_from(["softmax", "log_softmax", "rms_norm", "layer_norm"]),
       special=st.booleans(), seed=st.integers(0, 99))
def test_row_kernels(n: int, rows: int, op: str, special: bool, seed: int) -> None:
    attrs = {"softmax": "{dim = -1}", "log_softmax": "{dim = 1}", "rms_norm": "{eps = 1e-06}", "layer_norm": "{eps = 1e-05}"}[op]
    extra = ", @w" if op in ("rms_norm", "layer_norm") else ""
    g = ir.parse(f"graph @t(%x: f32[{rows}, {n}]) {{\n param @w: f32[{n}]\n"
                 f" %y: f32[{rows}, {n}] = {op}(%x{extra}) {attrs}\n return %y\n}}")
    if not extra:
        del g.params["w"]
    weights(g, seed)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    if special and rows:
        x[0, rng.integers(0, n)] = np.inf if op != "layer_norm" else np.nan
    check(g, [x], rtol=1e-4, atol=1e-5)


@SLOW
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=2), n=ROW,
       op=st.sampled_from(["sum", "mean", "amax", "amin", "argmax", "cumsum"]), nan=st.booleans(), seed=st.integers(0, 99))
def test_reductions(shape: list[int], n: int, op: str, nan: bool, seed: int) -> None:
    full = shape + [n]
    ax = seed % len(full)
    assume(full[ax] > 0 or op in ("sum", "mean", "cumsum"))  # no max of nothing
    attrs = (f"{{dim = {ax}}}" if op in ("argmax", "cumsum")
             else f"{{dims = [{ax}], keepdim = {str(seed % 2 == 0).lower()}}}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(full).astype(np.float32)
    if nan and x.size and op != "cumsum":
        x.flat[rng.integers(0, x.size)] = np.nan
    g = one_op(f"%x: f32[{', '.join(map(str, full))}]", f"{op}(%x) {attrs}")
    check(g, [x], rtol=1e-4, atol=1e-4)


def one_op(inputs: str, expr: str) -> ir.Graph:
    """A one-node graph; its result type is the one the op infers (read from the parser's message)."""
    text = "graph @t({}) {{\n  %y: {} = {}\n  return %y\n}}"
    try:
        return ir.parse(text.format(inputs, "f32[]", expr))
    except ir.ParseError as e:
        inferred = re.search(r"the op gives (\S+\[[^\]]*\])", str(e))
        assert inferred, str(e)
        return ir.parse(text.format(inputs, inferred.group(1), expr))


# -- indexing, state writes, empty dims --------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_index_copy_writes_the_rows_and_never_the_callers_array(inplace: bool) -> None:
    g = one_op("%c: f32[1, 2, 8, 4], %i: i64[3], %s: f32[1, 2, 3, 4]",
               f"index_copy(%c, %i, %s) {{axis = 2, inplace = {str(inplace).lower()}}}")
    rng = np.random.default_rng(0)
    check(g, [rng.standard_normal((1, 2, 8, 4)).astype(np.float32), np.array([5, 0, -1]),
              rng.standard_normal((1, 2, 3, 4)).astype(np.float32)])


def test_empty_dims_launch_nothing_and_give_empty_results() -> None:
    g = one_op("%x: f32[0, 5]", "softmax(%x) {dim = -1}")
    check(g, [np.zeros((0, 5), np.float32)])
    g = ir.parse("graph @t(%x: f32[s, 4]) {\n  param @w: f32[3, 4]\n  %y: f32[s, 3] = linear(%x, @w)\n  return %y\n}")
    weights(g)
    check(g, [np.zeros((0, 4), np.float32)])


# -- errors, names, source ---------------------------------------------------------------------------------
def test_without_a_gpu_target_cuda_says_how_to_interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ir.CompileError, match="TRITON_INTERPRET=1"):
        TritonBackend()
    assert "target='cpu'" in NO_GPU


def test_model_names_never_reach_the_generated_code() -> None:
    """Hostile IR names (quotes, newlines, code) appear only in sanitized comments; the code's own names
    are generated ones, Triton's and Python's."""
    from test_codegen import HOSTILE, code_names, hostile_graph

    g = hostile_graph()
    exe = build(g)
    names, strings = code_names(exe.source)
    generated = re.compile(r"(x|v|w|k|n|d|p|t)\d+(_cols|_sx)?")
    own = {"torch", "triton", "tl", "_jit", "_dev", "_T", "forward", "out", "offs", "m", "row", "acc", "r", "rm", "r0", "k0",
           "rn", "rk", "mm", "nm", "km", "BLOCK", "BM", "BN", "BK", "if", "for", "in", "range", "def", "return", "del",
           "import", "float", "constexpr", "dtype", "device", "mask", "other", "input_precision", "num_warps",
           "None", "as", "else"}
    strange = {n for n in names if not generated.fullmatch(n) and n not in own and not hasattr(__import__("triton.language").language, n)}
    assert not strange, strange
    assert all(s in ('"ieee"', "'nan'", "'-inf'", "'inf'", '"nan"', '"-inf"', '"inf"') for s in strings), strings
    for h in HOSTILE:
        assert h not in exe.source.replace("#", "") or h in ("%x", "@w", ")")
    x = np.ones((3, 4), np.float32)
    check(g, [x, np.arange(4, dtype=np.float32)], exe=exe)


def test_fused_chains_are_one_kernel() -> None:
    g = one_op("%a: f32[s, 64], %b: f32[s, 64]", "mul(%a, %b)")
    g = ir.parse("graph @t(%a: f32[s, 64], %b: f32[s, 64]) {\n  %s: f32[s, 64] = silu(%a)\n"
                 "  %y: f32[s, 64] = mul(%s, %b)\n  %z: f32[s, 64] = exp(%y)\n  return %z\n}")
    exe = build(g)
    assert exe.launches == 1 and "tl.sigmoid(" in exe.source and "tl.exp(" in exe.source
    check(g, [np.linspace(-3, 3, 5 * 64, dtype=np.float32).reshape(5, 64), np.ones((5, 64), np.float32)])


def test_matmul_epilogues_keep_the_product_in_registers() -> None:
    """SwiGLU (silu(x @ g) * (x @ u)), a residual add after a projection and a batched matmul's scaling
    run in the matmul kernel's epilogue: no buffer or launch for the products they consume."""
    g = ir.parse("graph @t(%x: f32[s, 40], %h: f32[s, 24], %a: f32[3, 5, 7], %b: f32[3, 7, 9]) {\n"
                 "  param @g: f32[24, 40]\n  param @u: f32[24, 40]\n  param @o: f32[40, 24]\n"
                 "  %gate: f32[s, 24] = linear(%x, @g)\n  %up: f32[s, 24] = linear(%x, @u)\n"
                 "  %act: f32[s, 24] = silu(%gate)\n  %swi: f32[s, 24] = mul(%act, %up)\n"
                 "  %proj: f32[s, 40] = linear(%swi, @o)\n  %res: f32[s, 40] = add(%x, %proj)\n"
                 "  %mm: f32[3, 5, 9] = matmul(%a, %b)\n  %c: f32[] = full() {value = 0.5, dtype = f32, shape = []}\n"
                 "  %half: f32[3, 5, 9] = mul(%mm, %c)\n"
                 "  return %res, %half, %h\n}")
    weights(g)
    exe = build(g)
    assert exe.source.count("#   epilogue of") == 3, exe.source  # swi absorbs gate, res absorbs proj, half absorbs mm
    assert exe.launches == 4  # up, gate+swi, proj+res, mm+half
    rng = np.random.default_rng(3)
    for s in (1, 19):
        # %res reaches +-250 as sums of 24 products of about 100: f32 rounding in another summation order
        # leaves a few 1e-5 absolute on entries that nearly cancel, so atol is set by that scale
        check(g, [rng.standard_normal((s, 40)).astype(np.float32), rng.standard_normal((s, 24)).astype(np.float32),
                  rng.standard_normal((3, 5, 7)).astype(np.float32), rng.standard_normal((3, 7, 9)).astype(np.float32)],
              rtol=1e-4, atol=2e-4, exe=exe)
