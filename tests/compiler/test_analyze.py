"""`tritium analyze` (compiler/analyze.py): exact FLOP and byte counts against hand counts (linear, matmul,
LUT linear, attention, packed weights), symbol binding, hardware files and their typed errors, and the CLI
on tiny models (with --plot, and --profile on the native CPU step)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from compiler.analyze import (HARDWARE_DIR, AnalyzeError, Hardware, HardwareError, analyze, hardware_names,
                              layer_of, load_hardware, parse_hardware, step_env, step_inputs,
                              weight_refs)
from compiler.cli import main
from compiler.pass_manager import PassManager

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
HW = Hardware("test", {"f32": 1e12, "int8": 4e12}, 1e11)  # round numbers: times are easy to check


def counts(text: str, env: dict[str, int] | None = None, hw: Hardware = HW) -> dict[str, int | float]:
    """Totals of the analysis of a graph in IR text."""
    t = analyze(ir.parse(text), env or {}, hw).total
    return {"flops": t.flops, "int_ops": t.int_ops, "weight_bytes": t.weight_bytes, "act_bytes": t.act_bytes,
            "written": t.written, "time_s": t.time_s}


# -- exact counts -------------------------------------------------------------------------------------------
def test_linear_by_hand() -> None:
    """x [3, 5, 16] -> 15 rows; W [8, 16]; bias [8]: 2*15*8*16 multiply-adds + 15*8 bias adds."""
    c = counts("""graph @g(%x: f32[3, 5, 16]) {
  param @w: f32[8, 16]
  param @b: f32[8]
  %y: f32[3, 5, 8] = linear(%x, @w, @b)
  return %y
}""")
    assert c["flops"] == 2 * 15 * 8 * 16 + 15 * 8 == 3960
    assert (c["weight_bytes"], c["act_bytes"], c["written"]) == (8 * 16 * 4 + 8 * 4, 15 * 16 * 4, 15 * 8 * 4)
    # memory-bound: 1504 bytes at 1e11 B/s beat 3960 flops at 1e12
    assert c["time_s"] == pytest.approx((544 + 960 + 480) / 1e11)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 64), n=st.integers(1, 64), k=st.integers(1, 64), bias=st.booleans(),
       dt=st.sampled_from(["f32", "f16"]))
def test_linear_counts(m: int, n: int, k: int, bias: bool, dt: str) -> None:
    size = {"f32": 4, "f16": 2}[dt]
    c = counts(f"""graph @g(%x: {dt}[{m}, {k}]) {{
  param @w: {dt}[{n}, {k}]
  {f"param @b: {dt}[{n}]" if bias else ""}
  %y: {dt}[{m}, {n}] = linear(%x, @w{", @b" if bias else ""})
  return %y
}}""")
    assert c["flops"] == 2 * m * n * k + (m * n if bias else 0)
    assert c["weight_bytes"] == size * (n * k + (n if bias else 0))
    assert (c["act_bytes"], c["written"], c["int_ops"]) == (size * m * k, size * m * n, 0)


def test_matmul_by_hand() -> None:
    """[2, 1, 3, 4] @ [5, 4, 6] -> [2, 5, 3, 6]: 180 results of 4 multiply-adds; each operand read once."""
    c = counts("""graph @g(%a: f32[2, 1, 3, 4], %b: f32[5, 4, 6]) {
  %y: f32[2, 5, 3, 6] = matmul(%a, %b)
  return %y
}""")
    assert c["flops"] == 2 * (2 * 5 * 3 * 6) * 4 == 1440
    assert (c["weight_bytes"], c["act_bytes"], c["written"]) == (0, (24 + 120) * 4, 180 * 4)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), m=st.integers(1, 16), n=st.integers(1, 16), k=st.integers(1, 16), vec=st.booleans())
def test_matmul_counts(b: int, m: int, n: int, k: int, vec: bool) -> None:
    """Batched matrix product, or a batched matrix times a vector: 2 * K per result element."""
    rhs, out = (f"f32[{k}]", f"f32[{b}, {m}]") if vec else (f"f32[{b}, {k}, {n}]", f"f32[{b}, {m}, {n}]")
    c = counts(f"""graph @g(%a: f32[{b}, {m}, {k}], %w: {rhs}) {{
  %y: {out} = matmul(%a, %w)
  return %y
}}""")
    results = b * m * (1 if vec else n)
    assert c["flops"] == 2 * results * k
    assert c["act_bytes"] == 4 * (b * m * k + (k if vec else b * k * n)) and c["written"] == 4 * results


def test_attention_by_hand() -> None:
    """q [1, 4, 3, 8], grouped k/v [1, 2, 10, 8], a bool mask [1, 1, 3, 10]: 120 scores, each 2*8 (q.k)
    + 1 (scale) + 1 (mask) + 5 (softmax) + 2*8 (p @ v) = 39 flops; k and v read once, not per query head."""
    c = counts("""graph @g(%q: f32[1, 4, 3, 8], %k: f32[1, 2, 10, 8], %v: f32[1, 2, 10, 8], %m: bool[1, 1, 3, 10]) {
  %y: f32[1, 4, 3, 8] = sdpa(%q, %k, %v, %m) {scale = 0.35}
  return %y
}""")
    assert c["flops"] == 120 * 39 == 4680
    assert (c["act_bytes"], c["written"]) == (96 * 4 + 2 * 160 * 4 + 30, 96 * 4)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), kv=st.integers(1, 4), rep=st.integers(1, 3), lq=st.integers(1, 8), s=st.integers(1, 40),
       d=st.sampled_from([4, 8, 16]), mask=st.booleans())
def test_attention_counts_follow_the_bound_kv_length(b: int, kv: int, rep: int, lq: int, s: int, d: int, mask: bool) -> None:
    """A KV-cache decode step attends to s1 positions: the count follows the value bound to it."""
    h = kv * rep
    m = f", %m: bool[{b}, 1, {lq}, s1]" if mask else ""
    c = counts(f"""graph @g(%q: f32[{b}, {h}, {lq}, {d}], %k: f32[{b}, {kv}, s1, {d}], %v: f32[{b}, {kv}, s1, {d}]{m}) {{
  %y: f32[{b}, {h}, {lq}, {d}] = sdpa(%q, %k, %v{", %m" if mask else ""}) {{scale = 0.5}}
  return %y
}}""", {"s1": s})
    assert c["flops"] == b * h * lq * s * (4 * d + 6 + (1 if mask else 0))
    assert c["act_bytes"] == 4 * (b * h * lq * d + 2 * b * kv * s * d) + (b * lq * s if mask else 0)


LUT = """graph @g(%x: f32[2, 100]) {{
  param @bits: u8[4, 2, 13, 64]
  param @coef: f32[4, 2, 70]
  param @offs: f32[2, 70]
  %y: f32[2, 70] = lut_linear(%x, @bits, @coef, @offs) {{cols = 100, group = 64, tgroup = 64, table = "{table}"}}
  return %y
}}"""


@pytest.mark.parametrize("table", ["i16", "i8", "f32"])
def test_lut_linear_by_hand(table: str) -> None:
    """N = 2 tokens, 100 columns = J = 25 tables, P = 4 planes, O = 70 rows (2 tiles of 64), tgroup 64 =
    16 tables a block: nb = 2 blocks; group 64: ng = 2 column groups."""
    c = counts(LUT.format(table=table))
    tables = 11 * 2 * 25  # 11 adds per table
    lookups = 2 * 2 * 4 * 70 * 25  # a lookup and an add per (token, plane, row, table)
    offsets = 2 * 100 + 2 * 2 * 2 * 70  # group sums, then offs * sum per (token, group, row)
    if table == "f32":
        assert (c["flops"], c["int_ops"]) == (tables + lookups + 2 * 2 * 4 * 70 * 2 + offsets, 0)
    else:
        quantize = 32 * 2 * 25 + 2 * 2  # |T| max and T / s per entry; s per block
        assert (c["flops"], c["int_ops"]) == (tables + quantize + 3 * 2 * 4 * 70 * 2 + offsets, lookups) == (6274, 28000)
    assert c["weight_bytes"] == 4 * 2 * 13 * 64 + 4 * 4 * 2 * 70 + 4 * 2 * 70  # packed planes, coef, offs as stored
    assert (c["act_bytes"], c["written"]) == (2 * 100 * 4, 2 * 70 * 4)


def test_packed_weights_count_their_stored_bytes() -> None:
    """Trit-planes stored 5 to a byte, and after pack_lut the bit-planes, coefficients and offsets: the
    weight bytes are exactly those of the arrays the graph holds."""
    text = """graph @mlp(%x: f32[s0, 20]) {
  param @w.t: tern[2, 6, 20]
  param @w.alpha: f16[2, 6, 3]
  %w.dq: f32[6, 20] = dequant_planes(@w.t, @w.alpha) {group = 8, dtype = f32}
  %y: f32[s0, 6] = linear(%x, %w.dq)
  return %y
}"""
    g = ir.parse(text)
    rng = np.random.default_rng(0)
    g.weights = {"w.t": rng.integers(-1, 2, (2, 6, 20)).astype(np.int8), "w.alpha": rng.random((2, 6, 3)).astype(np.float16)}
    a = analyze(g, {"s0": 3}, HW)
    dq, lin = a.rows
    assert dq.work.weight_bytes == 2 * 6 * 4 + 2 * 6 * 3 * 2  # 20 trits = 4 bytes a row; f16 scales
    assert lin.work.weight_bytes == 6 * 20 * 4  # a value computed from parameters alone is a weight
    packed = PassManager("pack_lut").run(g)
    (row,) = analyze(packed, {"s0": 3}, HW).rows
    assert row.op == "lut_linear"
    assert row.work.weight_bytes == sum(packed.weights[p].nbytes for p in packed.params)


def test_views_are_free_and_in_place_cache_writes_move_only_the_new_entries() -> None:
    c = counts("""graph @g(%x: f32[1, 2, s0, 4], %cache: f32[1, 2, 64, 4], %pos: i64[s0], %mask: i64[1, s1]) {
  %t: f32[1, s0, 2, 4] = permute(%x) {perm = [0, 2, 1, 3]}
  %r: f32[1, s0, 8] = reshape(%t) {shape = [1, s0, 8]}
  %c: f32[1, 2, 64, 4] = index_copy(%cache, %pos, %x) {axis = 2, inplace = true}
  %s: f32[1, 2, s1, 4] = slice(%c) {dim = 2, start = 0, end = s1}
  return %r, %s
}""", {"s0": 3, "s1": 10})
    assert c == {"flops": 0, "int_ops": 0, "weight_bytes": 0, "act_bytes": 3 * 8 + 24 * 4, "written": 24 * 4,
                 "time_s": pytest.approx((24 + 2 * 96) / 1e11)}


def test_embedding_reads_only_the_rows_it_gathers() -> None:
    c = counts("""graph @g(%ids: i64[1, s0]) {
  param @e: f32[1000, 16]
  %y: f32[1, s0, 16] = embedding(@e, %ids)
  return %y
}""", {"s0": 5})
    assert (c["flops"], c["weight_bytes"], c["act_bytes"], c["written"]) == (0, 5 * 16 * 4, 5 * 8, 5 * 16 * 4)


def test_elementwise_default_and_the_roofline_time() -> None:
    """One flop per result element; time = max(flops / peak, bytes / bandwidth)."""
    hw = Hardware("slow compute", {"f32": 1e3}, 1e12)
    g = ir.parse("""graph @g(%a: f32[4, 8], %b: f32[8]) {
  %y: f32[4, 8] = add(%a, %b)
  return %y
}""")
    (row,) = analyze(g, {}, hw).rows
    assert (row.work.flops, row.work.act_bytes, row.work.written) == (32, 160, 128)
    assert row.work.bound == "compute" and row.work.time_s == pytest.approx(32 / 1e3)
    assert row.work.intensity == pytest.approx(32 / 288)


def test_int_ops_run_at_the_int8_peak_and_a_missing_dtype_at_f32s() -> None:
    hw = Hardware("h", {"f32": 1e9, "int8": 1e10}, 1e15)
    a = analyze(ir.parse(LUT.format(table="i16")), {}, hw)
    assert a.total.compute_s == pytest.approx(6274 / 1e9 + 28000 / 1e10)
    assert hw.peak_for("bf16") == 1e9


def test_unbound_symbols_are_an_analyze_error() -> None:
    g = ir.parse("graph @g(%x: f32[s0, 4]) {\n  %y: f32[s0, 4] = neg(%x)\n  return %y\n}")
    with pytest.raises(AnalyzeError, match="s0"):
        analyze(g, {}, HW)


def test_step_env_binds_sequence_attention_length_and_capacity() -> None:
    g = ir.parse("""graph @step(%input_ids: i64[1, s0], %position_ids: i64[1, s0], %attention_mask: i64[1, s1], %past_len: i64[],
    %kv_0: f32[1, 2, s2, 4], %kv_1: f32[1, 2, s2, 4]) {
  %y: f32[1, s0] = cast(%input_ids) {dtype = f32}
  return %kv_0, %kv_1, %y
}""")
    assert step_env(g, 1, 300) == {"s0": 1, "s1": 300, "s2": 512}
    ids, pos, mask, past, kv0, _ = step_inputs(g, step_env(g, 2, 10))
    assert (ids.shape, pos.tolist(), mask.shape, int(past), kv0.shape) == ((1, 2), [[8, 9]], (1, 10), 8, (1, 2, 256, 4))
    assert mask.all() and not kv0.any()
    assert step_env(g, 16, 16, 64) == {"s0": 16, "s1": 16, "s2": 64}
    with pytest.raises(AnalyzeError, match="kv-len >= seq"):
        step_env(g, 8, 4)


def test_layers_come_from_the_module_path_or_the_parameters() -> None:
    n = ir.Node("y", "neg", ("%x",), {}, ir.TensorType(ir.dtype("f32"), (4,)), "model.layers.12.mlp (m.py:3: y = f(x))")
    assert layer_of(n) == "layer 12"
    n.loc = None
    n.operands = ("@transformer.h.3.attn.weight",)
    assert layer_of(n) == "layer 3"
    n.operands, n.loc = ("%x",), "model.lm_head (m.py:9: ...)"
    assert layer_of(n) == "lm_head"


def test_weight_refs_follow_parameter_only_chains() -> None:
    g = ir.parse("""graph @g(%x: f32[4]) {
  param @w: f32[4]
  %a: f32[4] = neg(@w)
  %b: f32[4] = add(%a, %x)
  return %b
}""")
    assert weight_refs(g) == {"@w", "%a"}


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "ir").glob("*.ir")), ids=lambda p: p.stem)
@settings(max_examples=5, deadline=None)
@given(size=st.integers(2, 9))
def test_every_op_has_a_cost(path: Path, size: int) -> None:
    """tests/ir/*.ir hold every registered op: each cost is non-negative, and a weight is never read past
    its stored bytes."""
    g = ir.parse(path.read_text())
    env = {s: size for _, t in g.inputs for d in t.shape if isinstance(d, str) for s in ir.shapes.symbols(d)}
    a = analyze(g, env, HW)
    assert {r.op for r in a.rows} == {n.op for n in g.nodes}
    types, weights = g.types(), weight_refs(g)
    for n, r in zip(g.nodes, a.rows):
        w = r.work
        assert min(w.flops, w.int_ops, w.weight_bytes, w.act_bytes, w.written) >= 0 and w.time_s >= 0, n
        assert w.weight_bytes <= sum(types[o].nbytes() for o in n.operands if o in weights and types[o].is_static), n


# -- hardware ------------------------------------------------------------------------------------------------
def test_shipped_hardware_files_load() -> None:
    names = [n for n in hardware_names() if n != "this-machine"]
    assert {"h100", "a100", "epyc-2core-avx2"} <= set(names)
    for name in names:
        hw = load_hardware(name)
        assert hw.bandwidth > 0 and hw.peak["f32"] > 0 and hw.llc > 0, name
    assert load_hardware("H100").peak["bf16"] > load_hardware("a100").peak["bf16"]
    assert load_hardware(str(HARDWARE_DIR / "a100.toml")).name == load_hardware("a100").name


def test_this_machine_is_measured() -> None:
    hw = load_hardware("this-machine")
    assert hw.name.startswith("this machine") and hw.source.startswith("measured now")
    assert hw.bandwidth > 0 and hw.cache_bandwidth and min(hw.peak.values()) > 0 and set(hw.peak) == {"f32", "f16", "bf16", "f64", "int8"}


def test_unknown_hardware_name_is_a_typed_error() -> None:
    with pytest.raises(HardwareError, match="unknown hardware 'tpu-v9'.*h100"):
        load_hardware("tpu-v9")
    with pytest.raises(HardwareError, match="no such file"):
        load_hardware("missing/gpu.toml")
    assert issubclass(HardwareError, ir.TritiumError)


@pytest.mark.parametrize("text, msg", [
    ("name = \n", "not valid TOML"),
    ("name = 'x'\nbandwidth = 1e9\n[peak]\nf32 = 1e9\n[peak]\n", "not valid TOML"),
    ("name = 'x'\n[peak]\nf32 = 1e9\n", "missing 'bandwidth'"),
    ("name = 'x'\nbandwidth = 1e9\n", "missing 'peak'"),
    ("name = 'x'\nbandwidth = 1e9\n[peak]\nf16 = 1e9\n", "at least f32"),
    ("name = 'x'\nbandwidth = -1\n[peak]\nf32 = 1e9\n", "bandwidth must be a positive number"),
    ("name = 'x'\nbandwidth = 'fast'\n[peak]\nf32 = 1e9\n", "bandwidth must be a positive number"),
    ("name = 'x'\nbandwidth = 1e9\n[peak]\nf32 = 1e9\nfp8 = 1e9\n", "unknown dtype"),
    ("name = 'x'\nbandwidth = 1e9\nbandwith = 1e9\n[peak]\nf32 = 1e9\n", "unknown key"),
    ("name = 'x'\nbandwidth = 1e9\n[peak]\nf32 = 1e9\n[cache]\nl2 = 1.5\n", "cache.l2 must be a positive integer"),
    ("name = 3\nbandwidth = 1e9\n[peak]\nf32 = 1e9\n", "name must be"),
])
def test_malformed_hardware_toml_is_a_typed_error(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(HardwareError, match=msg) as e:
        load_hardware(str(f))
    assert str(f) in str(e.value)


def test_a_user_hardware_file() -> None:
    hw = parse_hardware("name = 'my box'\nbandwidth = 5e10\ncache_bandwidth = 2e11\n[peak]\nf32 = 1e12\nint8 = 4e12\n"
                        "[cache]\nl3 = 1048576\n")
    assert (hw.name, hw.bandwidth, hw.cache_bandwidth, hw.llc, hw.peak_for("int8")) == ("my box", 5e10, 2e11, 1 << 20, 4e12)
    g = ir.parse("graph @g(%x: f32[4]) {\n  %y: f32[4] = neg(%x)\n  return %y\n}")
    assert analyze(g, {}, hw).cached  # 16 bytes fit the 1 MiB cache: priced at its bandwidth
    assert not analyze(g, {}, HW).cached


# -- the command line ---------------------------------------------------------------------------------------
def test_cli_analyzes_a_tiny_llama_prefill_and_decode(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "roofline.png"
    argv = ["analyze", f"{EXAMPLES / 'llama.py'}:build", "--target", "reference", "--hardware", "h100", "--seq", "8",
            "--kv-len", "20", "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "== prefill of 1 x 8 tokens on NVIDIA H100 SXM5 80GB ==" in out
    assert "== decode step (batch 1, kv-len 20) on NVIDIA H100 SXM5 80GB ==" in out
    for word in ("op kind", "layer 0", "layer 1", "lm_head", "linear", "sdpa", "total", "predicted decode step"):
        assert word in out, word
    assert "s0 = 1, s1 = 20, s2 = 256" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_analyzes_a_plain_module_at_its_example_inputs(capsys) -> None:
    assert main(["analyze", f"{EXAMPLES / 'mlp.py'}:build", "--target", "reference", "--hardware", "a100", "--per-op"]) == 0
    out = capsys.readouterr().out
    # MLP(16 -> 32 -> 16) on 4 rows: fc1 2*4*32*16 + 4*32, fc2 2*4*16*32 + 4*16
    line = next(x for x in out.splitlines() if x.startswith("linear "))
    assert line.split()[2] == "8.38k"  # = 2 * 4 * 32 * 16 + 128 + 2 * 4 * 16 * 32 + 64 = 8384
    assert "%" in out and "(layer_norm)" in out


def test_cli_errors_are_user_errors(capsys) -> None:
    assert main(["analyze", f"{EXAMPLES / 'mlp.py'}:build", "--hardware", "tpu-v9"]) == 1
    assert "tritium: error: unknown hardware 'tpu-v9'" in capsys.readouterr().err
    assert main(["analyze", f"{EXAMPLES / 'mlp.py'}:build", "--target", "reference", "--hardware", "h100", "--profile"]) == 1
    assert "--profile runs the native CPU step" in capsys.readouterr().err
    assert main(["analyze", f"{EXAMPLES / 'mlp.py'}:build", "--target", "reference", "--hardware", "h100", "--kv-len", "4"]) == 1
    assert "apply to causal LMs" in capsys.readouterr().err


def test_cli_profile_times_every_op_of_the_native_step(capsys) -> None:
    from backends.cpu import native

    if not native.available():
        pytest.skip("no C compiler with OpenMP: no native step to profile")
    assert main(["analyze", f"{EXAMPLES / 'mlp.py'}:build", "--hardware", "epyc-2core-avx2", "--profile", "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "measured step (native call, median)" in out
    line = next(x for x in out.splitlines() if x.startswith("linear "))
    assert line.split()[-1].endswith("x")  # measured / predicted
