"""Whole models on target="cpu" against target="reference": the tiny Hugging Face architectures and
quantized tiny Llamas (fast), SmolLM2-135M and all-MiniLM-L6-v2 (slow). One trace (symbolic sequence
length) serves both lengths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree

import compiler
import ir
from frontends.hf_models import TINY_ARCHS, tiny

TOL = 1e-4
PROMPT = "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is"
SENTENCES = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog near the river bank."]


def max_diff(a, b) -> float:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    assert len(la) == len(lb) and la
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(la, lb))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_models_match_the_reference_at_two_lengths(arch: str) -> None:
    model = tiny(arch)
    cpu, ref = compiler.compile(model, target="cpu"), compiler.compile(model, target="reference")
    for length in (5, 13):
        ids = torch.randint(0, 128, (2, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            got, want = cpu(ids), ref(ids)
        assert type(got) is type(want)
        assert max_diff(got, want) <= TOL
    assert len(cpu._specs) == 1 and cpu._specs[0].source == cpu.source
    if "int64_t step(" in cpu.source:  # the native step (backends/cpu/native)
        assert "#pragma omp parallel" in cpu.source  # ops without a C lowering (cumsum, layer_norm) run in Python
    else:
        assert "def forward(x0" in cpu.source and "= np." in cpu.source and ", out=v" in cpu.source  # NumPy templates, writing into reused buffers


QUANT = {  # pipeline -> the extern op it leaves in the graph
    "rtn{bits=4,group=32},dce": "dequant_affine",
    "ptqtp{planes=2,group=32,iters=10},dce": "dequant_planes",
    "int8,dce": "int8_linear",
    "squeezellm{bits=3},dce": "dequant_codebook",
}


@pytest.fixture(scope="module")
def llama_ids() -> tuple[torch.nn.Module, torch.Tensor]:
    return tiny("llama"), torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("passes", list(QUANT))
def test_quantized_tiny_llama_matches_the_reference_runtime_of_its_graph(passes: str, llama_ids) -> None:
    model, ids = llama_ids
    calib = [(torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(i)),) for i in (1, 2)]
    c = compiler.compile(model, (ids,), target="cpu", passes=passes, calibration=calib)
    g = c._specs[0].portable  # the quantized model, before the CPU layout passes (pack_lut)
    assert QUANT[passes] in ir.count_ops(g)
    lut = QUANT[passes] in ("dequant_affine", "dequant_planes", "dequant_codebook")  # packed for the LUT kernels
    assert ("lut_linear" in ir.count_ops(c.graph)) == lut
    assert "= k0(" in c.source or "cb(0, p)" in c.source  # the extern calls (native: Python callbacks) are in the source
    for length in (12, 7):
        x = ids[:, :length].numpy()
        got = c._specs[0].executable([x])[0]
        want = ir.run(g, [x])[0]
        assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


@pytest.mark.slow
def test_smollm2_on_cpu_matches_the_reference(smollm2) -> None:
    model, tok = smollm2
    cpu, ref = compiler.compile(model, target="cpu"), compiler.compile(model, target="reference")
    for text in (PROMPT, "Hello"):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            d = max_diff(cpu(ids).logits, ref(ids).logits)
        print(f"SmolLM2-135M cpu vs reference, {ids.shape[1]} tokens: max abs diff {d:.3g}")
        assert d <= TOL
    assert len(cpu._specs) == 1 and (cpu._specs[0].executable.stats.get("pooled_reuses") or cpu._specs[0].executable.stats["c_ops"]) > 100


@pytest.mark.slow
def test_minilm_on_cpu_matches_the_reference(minilm) -> None:
    model, tok = minilm
    enc = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    cpu, ref = compiler.compile(model, enc, target="cpu"), compiler.compile(model, enc, target="reference")
    for sentences in (SENTENCES, ["Short.", "Also short, but longer."]):
        enc = dict(tok(sentences, padding=True, return_tensors="pt"))
        with torch.no_grad():
            d = max_diff(cpu(**enc).last_hidden_state, ref(**enc).last_hidden_state)
        print(f"all-MiniLM-L6-v2 cpu vs reference, {enc['input_ids'].shape[1]} tokens: max abs diff {d:.3g}")
        assert d <= TOL
