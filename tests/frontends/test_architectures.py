"""Every decoder family in the matrix (frontends/hf_models.py MATRIX_ARCHS: MoE, ALiBi, parallel attention,
partial rotary, encoder-decoder) on reference, cpu and cuda (Triton's interpreter): the forward within 1e-4
(relative to the largest logit) of eager PyTorch, and greedy decoding through the KV cache (T5: the encoder
once, a cross-attention cache) equal to Hugging Face's `generate`. docs/architectures.md is the table.

Each family is traced once (its forward and its step graphs) and the three targets build from that trace."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

import compiler
import ir
from frontends.hf_models import MATRIX_ARCHS, tiny
from frontends.kv_cache import export_seq2seq, export_with_cache
from frontends.torch_export import export

TOL = 1e-4
NEW = 6
MOE = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe")
TARGETS = ["reference", "cpu", pytest.param("cuda", marks=pytest.mark.slow)]


@functools.cache
def traced(arch: str):
    """(model, ids, kwargs, imported forward, eager logits) with ids [2, 9] (T5: a 4-token decoder input)."""
    model = tiny(arch)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    kw = {"decoder_input_ids": ids[:, :4].clone()} if arch == "t5" else {}
    with torch.no_grad():
        want = model(ids, use_cache=False, **kw).logits
    return model, ids, kw, export(model, (ids,), kw), want


@functools.cache
def steps(arch: str):
    """(model, prompt [2, 7], HF's greedy tokens, the traced step graph(s))."""
    model = tiny(arch)
    prompt = torch.randint(3, 128, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return model, prompt, want, (export_seq2seq(model, 2) if arch == "t5" else export_with_cache(model, 2))


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch):
    def make(model: torch.nn.Module, target: str, **kw) -> compiler.Compiled:
        if target == "cuda" and os.environ.get("TRITIUM_TEST_GPU") != "1":
            monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the kernels are decorated (at build)
        return compiler.compile(model, target=target, **kw)
    return make


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", MATRIX_ARCHS)
def test_forward_matches_eager(arch: str, target: str, compiled) -> None:
    model, ids, kw, imp, want = traced(arch)
    c = compiled(model, target)
    c._import = lambda args, kwargs: imp  # the family's one trace
    got = c(ids, **kw).logits
    assert float((got - want).abs().max() / want.abs().max()) <= TOL
    if arch in MOE:
        ops = ir.count_ops(c.graph)
        assert ops["moe"] == 2 and ops["argtopk"] == 2, ops  # one per layer: the expert loop is one op


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", MATRIX_ARCHS)
def test_greedy_decoding_equals_hf_generate(arch: str, target: str, compiled) -> None:
    model, prompt, want, graphs = steps(arch)
    c = compiled(model, target)
    if arch == "t5":
        c.generator.export = lambda batch: graphs
    else:
        c.step_graph = lambda batch: graphs
    got = c.generate(prompt, max_new_tokens=NEW, eos_token_id=model.generation_config.eos_token_id, pad_token_id=0)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


def test_moe_experts_are_per_expert_parameters_and_quantize_like_linears() -> None:
    """Mixtral's stacked experts [E, 2I, H] import as E parameters [2I, H] (the stacked one is gone); rtn puts a
    decoder in front of each, as of a linear; int8 (which replaces whole linears) leaves them and says so."""
    model, ids, kw, imp, want = traced("mixtral")
    g = imp.graph
    assert "model.layers.0.mlp.experts.gate_up_proj" not in g.params
    assert g.params["model.layers.0.mlp.experts.3.gate_up_proj"].shape == (128, 64)
    assert g.params["model.layers.1.mlp.experts.0.down_proj"].shape == (64, 64)
    c = compiler.compile(model, target="reference", passes="rtn{bits=8,group=32},dce")
    c._import = lambda args, kwargs: imp
    got = c(ids).logits
    q = c.graph
    moe = next(n for n in q.nodes if n.op == "moe")
    assert all(q.node(o[1:]).op == "dequant_affine" for o in moe.operands[3:]), moe.operands
    assert float((got - want).abs().max() / want.abs().max()) < 0.05


def test_int8_leaves_experts_float(capsys) -> None:
    model, ids, kw, imp, want = traced("mixtral")
    c = compiler.compile(model, target="reference", passes="int8,dce")
    c._import = lambda args, kwargs: imp
    c(ids)
    assert "expert weights of moe layers stay f32" in capsys.readouterr().err
    assert ir.count_ops(c.graph)["int8_linear"] > 0 and all(
        o.startswith("@") for n in c.graph.nodes if n.op == "moe" for o in n.operands[3:])


def test_the_trace_leaves_the_model_as_it_was() -> None:
    """The experts run as `tritium::moe` only while tracing (its eager form is HF's loop): the model's own
    implementation comes back."""
    from frontends.moe import experts_as_moe

    model = tiny("qwen3_moe")
    before = model.get_experts_implementation()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), experts_as_moe(model):
        assert model.get_experts_implementation() != before
        ours = model(ids, use_cache=False).logits
    export(model, (ids,))
    assert model.get_experts_implementation() == before
    with torch.no_grad():
        assert float((model(ids, use_cache=False).logits - ours).abs().max()) < 1e-5


def test_moe_op_is_exported_as_one_node_per_layer() -> None:
    model, ids, kw, imp, want = traced("qwen2_moe")
    ops = ir.count_ops(imp.graph)
    assert ops["moe"] == 2 and ops["argtopk"] == 2 and "index_put" not in str(imp.graph)
    assert np.isfinite(want.numpy()).all()
