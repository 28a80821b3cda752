"""The generated module: whole graphs against the reference runtime, safe names, buffer reuse that never
clobbers, extern kernels, input checks and errors."""
from __future__ import annotations

import io
import re
import tokenize
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from backends import get_backend
from backends.cpu import CpuExecutable, generate, kernels
from backends.cpu.source import DimPrinter, comment_name
from ir.ops import Attr, OpDef
from ir.shapes import TensorType, evaluate
from strategies import graphs, run_inputs

from compare import build, check_against_reference

ALL_OPS = Path(__file__).parent.parent / "ir" / "all_ops.ir"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def all_ops_graph() -> ir.Graph:
    g = ir.parse(ALL_OPS.read_text())
    rng = np.random.default_rng(0)
    for p, t in g.params.items():
        g.weights[p] = (rng.integers(t.dtype.lo, t.dtype.hi + 1, size=t.shape) if t.dtype.packed
                        else rng.standard_normal(t.shape)).astype(t.dtype.np)
    return g


def test_all_ops_graph_matches_the_reference_at_two_lengths() -> None:
    g = all_ops_graph()
    exe = build(g)
    rng = np.random.default_rng(1)
    for s0 in (2, 5):
        args = [rng.standard_normal((2, s0, 8)).astype(np.float32), rng.integers(0, 4, (2, s0)),
                rng.random((2, s0, 8)) < 0.5, rng.standard_normal(2 * s0 + 1).astype(np.float32)]
        check_against_reference(g, args, exe)
    assert exe.stats["pooled_reuses"] > 0 and exe.stats["externs"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_random_graphs_match_the_reference(data: st.DataObject) -> None:
    """Random valid graphs (awkward names, symbolic and derived dims, views, every core op) run the same."""
    g = data.draw(graphs())
    args = data.draw(run_inputs(g))
    check_against_reference(g, args)


# -- names from models never reach code ----------------------------------------------------------------
HOSTILE = ["x\"); __import__('os').system('echo pwned') #", "w'''\nimport os\n'''", "__import__('os')",
           "a\nb = 1", "\\\" + exec('1') + \"", "\u2028evil", "名前", "%x", "@w", ")", "# comment", "\x00nul"]
GENERATED = re.compile(r"(x|v|w|k|n|d)\d+|t\d+_\d+")
ALLOWED_NAMES = {"np", "sp", "bfloat16", "forward", "_reject", "_check", "max", "del", "if", "or", "with", "return",
                 "None", "True", "False", "import", "from", "as", "numpy", "scipy", "special", "ml_dtypes", "def",
                 "else", "and", "all", "copy", "dtype", "out", "axis", "keepdims", "casting", "where", "syms"}


def code_names(src: str) -> tuple[set[str], list[str]]:
    """Names the code itself uses (not attributes, not comments) and its string literals."""
    names, strings, prev = set(), [], None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and not (prev is not None and prev.string == "."):
            names.add(tok.string)
        elif tok.type == tokenize.STRING:
            strings.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return names, strings


def hostile_graph() -> ir.Graph:
    s = "__import__"  # a symbol is any identifier
    g = ir.Graph(HOSTILE[1])
    g.inputs = [(HOSTILE[0], TensorType(ir.dtype("f32"), (s, 4))), (HOSTILE[7], TensorType(ir.dtype("f32"), (4,)))]
    g.params = {HOSTILE[1]: TensorType(ir.dtype("f32"), (3, 4)), HOSTILE[2]: TensorType(ir.dtype("f32"), (3,))}
    g.weights = {HOSTILE[1]: np.arange(12, dtype=np.float32).reshape(3, 4) / 10,
                 HOSTILE[2]: np.ones(3, np.float32)}
    x, y = "%" + HOSTILE[0], "%" + HOSTILE[7]
    add = lambda name, op, ops, attrs, t: g.nodes.append(ir.Node(name, op, ops, ir.OPS[op].normalize_attrs(attrs), t))  # noqa: E731
    add(HOSTILE[3], "add", (x, y), {}, TensorType(ir.dtype("f32"), (s, 4)))
    add(HOSTILE[4], "linear", ("%" + HOSTILE[3], "@" + HOSTILE[1], "@" + HOSTILE[2]), {}, TensorType(ir.dtype("f32"), (s, 3)))
    add(HOSTILE[5], "arange", (), {"end": f"2*{s} + 1", "dtype": "f32"}, TensorType(ir.dtype("f32"), (f"2*{s} + 1",)))
    add(HOSTILE[6], "reshape", ("%" + HOSTILE[4],), {"shape": [3, s]}, TensorType(ir.dtype("f32"), (3, s)))
    g.outputs = ["%" + HOSTILE[6], "%" + HOSTILE[5], "@" + HOSTILE[2]]
    return ir.verify(g)


def test_hostile_names_stay_in_sanitised_comments() -> None:
    g = hostile_graph()
    exe = build(g, check=False)
    src = exe.source
    for h in HOSTILE:
        if len(h) > 3:  # (short ones like ")" occur in any code)
            assert h not in src, f"{h!r} reached the source"
    names, strings = code_names(src)
    assert all(GENERATED.fullmatch(n) or n in ALLOWED_NAMES for n in names), sorted(names)
    assert set(strings) <= {'"unsafe"', '"ignore"'}, strings
    for line in src.splitlines():
        assert line.isascii() and line.isprintable()
        if "#" in line:
            assert re.fullmatch(r"[ -~]*", line.split("#", 1)[1])
    assert "# x0: %x______import..._.system__echo_pwned____" in src  # sanitised (both ends kept), only in a comment
    args = [np.arange(20, dtype=np.float32).reshape(5, 4), np.ones(4, np.float32)]
    got = check_against_reference(g, args, exe)
    assert got[2] is not g.weights[HOSTILE[2]]  # a weight returned is a copy: the caller may write to it


def test_comment_names_and_dims() -> None:
    assert comment_name("a b\n\"c\"/d:e-f.g") == "a_b__c_/d:e-f.g"
    assert len(comment_name("x" * 500)) <= 40
    p = DimPrinter({"s0": "n0", "s1": "n1"})
    for text in ["2*s0 + 1", "s0*s1", "s0**2 - 3", "3*s0 - 2", "-s0 + s1", "s0 - 1", "2*s0**3*s1 - 5*s1 + 7"]:
        code = p.expr(ir.shapes.expr(text))
        assert set(re.findall(r"[A-Za-z_]\w*", code)) <= {"n0", "n1"}, code
        for v0, v1 in [(2, 3), (7, 1), (0, 0)]:
            assert eval(code, {"n0": v0, "n1": v1}) == evaluate(text, {"s0": v0, "s1": v1}), (text, code)
    with pytest.raises(ir.CompileError, match="not bound"):
        DimPrinter({})("s9 + 1")


# -- buffer reuse ---------------------------------------------------------------------------------------
REUSE = """graph @reuse(%x: f32[s0, 3]) {
  %a: f32[s0, 3] = exp(%x)
  %b: f32[3, s0] = permute(%a) {perm = [1, 0]}
  %c: f32[s0, 3] = neg(%x)
  %d: f32[3, s0] = permute(%c) {perm = [1, 0]}
  %e: f32[3, s0] = add(%b, %d)
  %f: f32[s0, 3] = sin(%x)
  %g: f32[s0, 3] = cos(%f)
  %h: f32[3*s0] = reshape(%g) {shape = [3*s0]}
  %i: f32[s0, 3] = tanh(%x)
  %j: f32[s0, 3] = mul(%i, %i)
  %k: f32[s0, 3] = sigmoid(%j)
  %l: f32[s0, 3] = abs(%k)
  return %e, %h, %j, %l
}"""


def test_buffers_are_reused_but_outputs_and_live_views_never_clobbered() -> None:
    g = ir.parse(REUSE)
    exe = build(g)
    src = exe.source
    # %c must not take %a's buffer (%b, a view of it, is alive); %i not %g's (%h, an output, views it);
    # %k and %l may reuse %f's and %i's buffers; %j is an output, so nobody writes into it.
    assert re.search(r"v2 = np.negative\(x0\)\n", src), src
    assert "out=v6" not in src and "out=v9" not in src, src
    assert exe.stats["pooled_reuses"] >= 2, exe.stats
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)
    first = check_against_reference(g, [x], exe)
    kept = [o.copy() for o in first]
    check_against_reference(g, [2 * x], exe)  # a second call allocates afresh: the first results stay
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            assert not np.shares_memory(first[i], first[j]), (i, j)


def test_reuse_is_keyed_by_exact_type() -> None:
    g = ir.parse("""graph @k(%x: f32[s0, 4], %y: f32[s1, 4]) {
  %a: f32[s0, 4] = exp(%x)
  %b: f32[s0, 4] = neg(%a)
  %c: f32[s1, 4] = exp(%y)
  %d: f32[s0, 4] = sin(%b)
  %e: f64[s0, 4] = cast(%d) {dtype = f64}
  return %c, %e
}""")
    exe = build(g)
    assert "np.exp(x1)\n" in exe.source  # s1 rows may differ from s0 rows: no reuse across them
    assert "v3 = np.sin(v1, out=v0)" in exe.source
    rng = np.random.default_rng(0)
    check_against_reference(g, [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)], exe)


# -- kernels, errors, tracebacks ---------------------------------------------------------------------------
class Shifted(OpDef):
    """A plugin op with a symbolic attribute and no template: runs through its reference."""
    name = "test_shifted"
    operands = ("x",)
    attrs = {"n": Attr("dim")}

    def infer(self, ins, attrs):
        return ins[0]

    def reference(self, ins, attrs):
        return (ins[0] + attrs["n"]).astype(ins[0].dtype)


class NoReference(Shifted):
    name = "test_no_reference"
    reference = OpDef.reference


@pytest.fixture
def plugin_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ir.OPS, Shifted.name, Shifted())
    monkeypatch.setitem(ir.OPS, NoReference.name, NoReference())
    monkeypatch.setattr(kernels, "KERNELS", dict(kernels.KERNELS))


def test_ops_without_template_run_their_reference_as_an_extern_call(plugin_ops: None) -> None:
    g = ir.parse("""graph @g(%x: f32[s0, 2]) {
  %y: f32[s0, 2] = test_shifted(%x) {n = 2*s0 + 1}
  %z: f32[s0, 2] = neg(%y)
  return %y, %z
}""")
    exe = build(g)
    assert "v0 = k0(x0, syms=(n0,))" in exe.source and "k0: test_shifted for %y (its NumPy reference)" in exe.source
    assert "out=v0" not in exe.source  # a kernel's result is never written into
    check_against_reference(g, [np.ones((3, 2), np.float32)], exe)


def test_registered_kernel_is_built_once_and_called_explicitly(plugin_ops: None) -> None:
    built, calls = [], []

    @kernels.register_kernel("neg")  # a kernel takes precedence over the template
    def neg_kernel(node: ir.Node, graph: ir.Graph):
        built.append(node.name)
        cache = np.zeros(3, np.float32)

        def run(x: np.ndarray) -> np.ndarray:
            calls.append(1)
            np.negative(x, out=cache)
            return cache  # a cached array: the backend must not hand it out or write into it
        return run

    g = ir.parse("graph @g(%x: f32[3]) {\n  %y: f32[3] = neg(%x)\n  %z: f32[3] = exp(%x)\n  return %y, %z\n}")
    assert "k0" not in build(g).source and not built  # exact=True (tests' build): the template, bit-exact
    exe = CpuExecutable(g, generate(g, check=True))
    assert built == ["y"] and "v0 = k0(x0)" in exe.source and "np.array(v0, copy=True)" in exe.source
    a = exe([np.ones(3, np.float32)])
    b = exe([2 * np.ones(3, np.float32)])
    assert calls == [1, 1] and (a[0] == -1).all() and (b[0] == -2).all()


def test_an_op_with_no_way_to_run_names_op_and_node(plugin_ops: None) -> None:
    g = ir.parse('graph @g(%x: f32[2]) {\n  %"bad node": f32[2] = test_no_reference(%x) {n = 1}\n  return %"bad node"\n}')
    with pytest.raises(ir.UnsupportedOpError, match=r"test_no_reference.*%bad node"):
        generate(g)


def test_tracebacks_show_the_generated_line() -> None:
    g = ir.parse("graph @g(%x: i64[3]) {\n  %y: i64[3] = pow(%x, %x)\n  return %y\n}")
    exe = build(g)
    with pytest.raises(ir.TritiumError, match="pow failed at %y: ValueError") as info:  # numpy: integers to negative
        exe([np.array([-1, 2, 3])])                                                       # integer powers (the cause)
    tb = "".join(traceback.format_exception(info.value))
    assert exe.filename in tb and "v0 = np.power(x0, x0)" in tb


def test_inputs_are_checked_like_the_reference_runtime() -> None:
    g = ir.parse("graph @g(%x: f32[s0, 2], %y: f32[2*s0 + 1]) {\n  %z: f32[s0, 2] = neg(%x)\n  return %z\n}")
    exe = get_backend("cpu").build(g)
    good = [np.zeros((3, 2), np.float32), np.zeros(7, np.float32)]
    for bad in ([good[0]], [good[0].astype(np.float64), good[1]], [good[0], np.zeros(6, np.float32)],
                [good[0][None], good[1]]):
        with pytest.raises(ir.RuntimeShapeError) as want:
            ir.run(g, bad)
        with pytest.raises(ir.RuntimeShapeError) as got:
            exe(bad)
        assert str(got.value) == str(want.value)
    assert exe(good)[0].shape == (3, 2)


def test_missing_weights_fail_at_build() -> None:
    g = ir.parse("graph @g(%x: f32[2]) {\n  param @w: f32[2]\n  %y: f32[2] = add(%x, @w)\n  return %y\n}")
    with pytest.raises(ir.VerifyError, match="no weights bound"):
        CpuExecutable(g, generate(g))
