"""Whole models compiled for target="cuda", run in Triton's interpreter, against the reference runtime of
the same graph: the tiny Hugging Face architectures and the real SmolLM2-135M and all-MiniLM-L6-v2, each
unquantized, with ptqtp (trit-planes decoded inside the matmul) and with int8 (LLM.int8() kernels).
The bar is 1e-3 relative on the logits (max |diff| / max |reference|).

Every kernel launch these tests make is recorded; the last test compiles each distinct one ahead of time
to cubin for sm_80 and sm_90 (Triton's real pipeline and ptxas, no GPU needed) and fails on register
spills (backends/triton/aot.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
import ir
from frontends.hf_models import TINY_ARCHS, tiny

from backends.triton import aot
from ir.ops.quant.int8 import outlier_columns
from interp import build

RECORDED: list[tuple[dict[str, str], set]] = []  # (kernels, launches) of every executable run below


def run(g: ir.Graph, args: list[np.ndarray], exe=None) -> list[np.ndarray]:
    """Run exe (interpreted), then record the launches a GPU would make for these inputs (a dry run)."""
    exe = exe or build(g, tiles="interpreter")  # the real models: large tiles, fewer interpreted programs
    out = exe(args)
    with exe.recording(dry=True) as launches:
        exe(args)
    RECORDED.append((exe.kernels, launches))
    return out

TOL = 1e-3
# int8 at the paper's threshold (6.0). At a threshold near the activations' scale (1.0 in these tiny random
# models) whether a column is an outlier can flip with a 1-ulp difference upstream (a different summation
# order in a norm), which moves logits by ~1e-3; test_triton_kernels checks the outlier path on fixed inputs.
PIPELINES = {"fp32": None, "ptqtp": "fold_transposes,ptqtp{group=32},dce", "int8": "fold_transposes,int8,dce"}


def rel_err(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(got, want))


@pytest.mark.parametrize("quant", list(PIPELINES))
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_match_the_reference(arch: str, quant: str) -> None:
    model = tiny(arch)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    g = compiler.compile(model, (ids,), target="reference", passes=PIPELINES[quant]).graph
    if quant != "fp32":
        assert {"ptqtp": "dequant_planes", "int8": "int8_linear"}[quant] in ir.count_ops(g)
    exe = build(g)
    for length in (9, 4):  # one trace, two lengths (symbolic sequence dim)
        x = ids[:, :length].numpy()
        err = rel_err(run(g, [x], exe), ir.run(g, [x]))
        assert err <= TOL, f"{arch} {quant} length {length}: {err:.3g}"
    assert "def forward(" in exe.source and "@_jit" in exe.source


def test_squeezellm_dense_and_sparse_on_cuda() -> None:
    """SqueezeLLM's per-row codebooks decode inside a copy kernel, its sparse outliers are scattered on
    top (add_sparse), and the dense weight feeds the matmul."""
    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    calib = [(torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(i)),) for i in (1, 2)]
    g = compiler.compile(model, (ids,), target="reference", passes="squeezellm{bits=3},dce", calibration=calib).graph
    assert {"dequant_codebook", "add_sparse"} <= set(ir.count_ops(g))
    x = ids.numpy()
    assert rel_err(run(g, [x], build(g)), ir.run(g, [x])) <= TOL


def test_dfloat11_model_on_cuda() -> None:
    """DFloat11 weights decoded by their own kernel (one lane per coded block) into bf16, then the matmuls:
    the bf16-weight model's logits."""
    model = tiny("llama")
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    g = compiler.compile(model, (ids,), target="reference", passes="dfloat11{block=64},dce").graph  # short blocks: fewer interpreted steps
    assert ir.count_ops(g)["dfloat11_decode"] == 14
    x = ids.numpy()
    assert rel_err(run(g, [x]), ir.run(g, [x])) <= TOL


def test_compile_target_cuda_runs_the_kernels() -> None:
    model = tiny("llama")
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(1))
    c = compiler.compile(model, target="cuda")
    with torch.no_grad():
        got, want = c(ids).logits, model(ids, use_cache=False).logits
    assert float((got - want).abs().max() / want.abs().max()) <= TOL
    assert "tl.dot(" in c.source and "def forward(" in c.source


# the paper's defaults (2 planes, group 128); fewer fitting iterations keep SmolLM2's quantization under a minute
REAL = {"fp32": None, "ptqtp": "fold_transposes,ptqtp{iters=3},dce", "int8": "fold_transposes,int8,dce"}
# Not met: LLM.int8() on the real models differs from the reference by 0.049 (SmolLM2) and 0.039 (MiniLM)
# relative on the logits (2026-11-27), though each int8_linear kernel is bit for bit the reference on that
# node's own inputs from the same models (test_int8_kernels_are_exact_on_real_activations below). The gap is
# the op's dynamic rounding amplifying last-bit differences from upstream ops that sum in another order
# (norms, softmax, attention): traced on both models (each int8 input as an extra output), the inputs differ
# by 1e-7 to 1e-6 relative and every int8 code is equal up to one layer (SmolLM2: the attention output of
# layer 7; MiniLM: layer 3), where one code rounds the other way; from there the difference and the number
# of differing codes grow each layer (SmolLM2: 1 code, then 8, 59, ..., 513 by layer 8). The reference does not
# meet the bar against itself either: with OpenBLAS's Sandybridge kernels instead of Haswell's it moves by 6.2e-2
# (SmolLM2) and 1.1e-2 (MiniLM) on int8, 2.4e-6 and 4.3e-7 on fp32 (bench/int8_reproducibility.py,
# docs/notes/int8.md). A 1e-3 bar on whole-model int8 logits needs every upstream sum in one order. Strict: the
# mark comes off with a fix.
INT8_GAP = pytest.mark.xfail(strict=True, reason="int8 on real models: 0.049/0.039 relative, bar 1e-3 (see above)")
QUANTS = ["fp32", "ptqtp", pytest.param("int8", marks=INT8_GAP)]


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["fp32", "ptqtp", "int8"])
def test_smollm2_matches_the_reference(smollm2_4_layers, quant: str) -> None:
    """Its first 4 layers (the whole model takes minutes in the interpreter: bench/int8_reproducibility.py
    runs it; the int8 gap above appears from layer 7 on)."""
    model, tok = smollm2_4_layers
    ids = tok("The capital of France is Paris. The capital of", return_tensors="pt")["input_ids"]
    passes = REAL[quant]
    g = compiler.compile(model, (ids,), target="reference", passes=passes).graph
    err = rel_err(run(g, [ids.numpy()]), ir.run(g, [ids.numpy()]))
    print(f"SmolLM2-135M (4 layers) {quant} on cuda (interpreted) vs reference: {err:.3g} relative")
    assert err <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("quant", QUANTS)
def test_minilm_matches_the_reference(minilm, quant: str) -> None:
    model, tok = minilm
    b = tok(["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog."], padding=True, return_tensors="pt")
    passes = REAL[quant]
    g = compiler.compile(model, (b["input_ids"], b["attention_mask"]), target="reference", passes=passes).graph
    args = [b["input_ids"].numpy(), b["attention_mask"].numpy()]
    err = rel_err(run(g, args), ir.run(g, args))
    print(f"all-MiniLM-L6-v2 {quant} on cuda (interpreted) vs reference: {err:.3g} relative")
    assert err <= TOL


def int8_nodes_exact(g: ir.Graph, args: list[np.ndarray], every: int = 1) -> list[int]:
    """Each int8_linear of g (every `every`-th), alone in a graph and fed the reference's inputs of that node,
    against the reference op. -> how many were checked [without, with] outlier columns."""
    checked = [0, 0]
    seen: dict[str, list[np.ndarray]] = {}
    nodes = [n for n in g.nodes if n.op == "int8_linear"][::every]
    names = {n.name for n in nodes}
    ir.run(g, args, observe=lambda n, ins: seen.update({n.name: [np.array(a) for a in ins]}) if n.name in names else None)
    types = g.types()
    for n in nodes:
        consts = [o[1:] for o in n.operands if o.startswith("@")]
        one = ir.Graph("one", [(o[1:], types[o]) for o in n.operands if o.startswith("%")],
                       {p: g.params[p] for p in consts}, [n], [n.ref], {p: g.weights[p] for p in consts})
        xs = [a for o, a in zip(n.operands, seen[n.name]) if o.startswith("%")]
        got, want = run(one, xs)[0], ir.run(one, xs)[0]
        # exact but for the f32 sum of the f16 outlier products, which may round in another order (and so
        # flip the last bit of its sum with the int8 part)
        X = xs[0].reshape(-1, xs[0].shape[-1]).astype(np.float32)
        O = outlier_columns(X, n.attrs["threshold"])
        wq, ws = (g.weights[o[1:]] for o in n.operands[1:3])
        mag = np.abs(X[:, O]) @ (np.abs(wq[:, O].astype(np.float32)) * ws[:, None] / 127).T
        bound = 1e-6 * mag + np.spacing(np.abs(want)).reshape(mag.shape) if O.any() else 0.0
        err = np.abs(got.astype(np.float64) - want).reshape(mag.shape)
        assert (err <= bound).all(), f"%{n.name}: {float(err.max())} off on its own inputs"
        checked[bool(O.any())] += 1
    return checked


@pytest.mark.slow
def test_int8_kernels_are_exact_on_real_activations(smollm2, minilm) -> None:
    """The whole-model int8 comparison cannot tell a kernel error from amplified rounding (see INT8_GAP); this
    one can: every LLM.int8() linear of MiniLM and every 7th of SmolLM2 (each of q, k, v, o, gate, up, down in
    turn), on its real activations, gives the reference's output exactly, but for the order of the f32 sum
    of the outlier columns' products where there are any."""
    model, tok = minilm
    b = tok(["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog."], padding=True, return_tensors="pt")
    g = compiler.compile(model, (b["input_ids"], b["attention_mask"]), target="reference", passes=REAL["int8"]).graph
    checked = int8_nodes_exact(g, [b["input_ids"].numpy(), b["attention_mask"].numpy()])
    print("MiniLM int8 nodes checked [no outliers, outliers]:", checked)
    assert sum(checked) == sum(n.op == "int8_linear" for n in g.nodes) > 0
    model, tok = smollm2
    ids = tok("The capital of France is Paris. The capital of", return_tensors="pt")["input_ids"]
    g = compiler.compile(model, (ids,), target="reference", passes=REAL["int8"]).graph
    checked = int8_nodes_exact(g, [ids.numpy()], every=7)
    print("SmolLM2 int8 nodes checked [no outliers, outliers]:", checked)
    assert sum(checked) == len([n for n in g.nodes if n.op == "int8_linear"][::7]) > 0


def test_every_kernel_compiles_for_sm80_and_sm90_without_spills() -> None:
    """Runs last in this file: it compiles what the tests above launched (all of them in CI); run alone,
    it records a tiny Llama's launches first, so it never passes without compiling anything."""
    if not RECORDED:
        test_tiny_models_match_the_reference("llama", "fp32")
    assert RECORDED
    source, launches, kernels = aot.merge(RECORDED)
    reports = aot.compile_launches(source, launches, archs=(80, 90))
    print(f"\n{len(launches)} distinct launches of {source.count('@_jit')} kernels, compiled for sm_80 and sm_90:")
    print(aot.table(reports))
    assert len(reports) == 2 * len(launches) and all(r.cubin_bytes > 0 for r in reports)
    spilled = aot.unexplained_spills(reports, kernels)
    assert not spilled, "register spills:\n" + aot.table(spilled)
