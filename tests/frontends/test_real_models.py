"""The real models through torch.export: verify, round-trip through text, and match eager
PyTorch within 1e-4 on real tokenizer inputs. Slow (they load real weights); CI runs them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

import ir
from frontends.hf_models import sentence_embedding
from frontends.torch_export import export

TOL = 1e-4
PROMPT = "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is"
SENTENCES = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog near the river bank."]


@pytest.mark.slow
def test_smollm2_matches_eager(smollm2, call_ir, diff):
    model, tok = smollm2
    ids = tok(PROMPT, return_tensors="pt")["input_ids"][:, :16]
    assert ids.shape == (1, 16)
    imp = export(model, (ids,))
    g = imp.graph
    ir.verify(g)
    parsed = ir.parse(str(g))
    assert parsed == g
    assert ir.count_ops(g)["sdpa"] == 30 and ir.count_ops(g)["linear"] == 30 * 7 + 1
    with torch.no_grad():
        want = model(ids, use_cache=False)
    got = call_ir(imp, (ids,), graph=parsed)  # run the graph read back from its text
    assert isinstance(got, CausalLMOutputWithPast) and got.logits.shape == (1, 16, 49152)
    d = diff(got, want)
    print(f"SmolLM2-135M logits max abs diff {d:.3g}")
    assert d <= TOL


@pytest.mark.slow
def test_minilm_matches_eager_with_attention_mask(minilm, call_ir, diff):
    model, tok = minilm
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # the shorter sentence is padded
    kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    imp = export(model, (), kwargs)
    g = imp.graph
    ir.verify(g)
    parsed = ir.parse(str(g))
    assert parsed == g
    with torch.no_grad():
        want = model(**kwargs)
    got = call_ir(imp, (), kwargs, graph=parsed)
    d = diff(got.last_hidden_state, want.last_hidden_state)
    print(f"all-MiniLM-L6-v2 last_hidden_state max abs diff {d:.3g}")
    assert d <= TOL
    emb = sentence_embedding(got.last_hidden_state, enc["attention_mask"])
    ref = sentence_embedding(want.last_hidden_state, enc["attention_mask"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-6)
    assert float((emb - ref).abs().max()) <= TOL
    cos = float(emb[0] @ emb[1])
    assert -1.0 <= cos < 0.9  # two unrelated sentences


def test_sentence_embedding_is_masked_mean():
    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    e = sentence_embedding(h, mask)
    np.testing.assert_allclose(e.numpy(), [[2 / np.sqrt(8), 2 / np.sqrt(8)]], rtol=1e-6)


@pytest.mark.slow
def test_real_models_through_compile_api_with_default_pipeline(smollm2, minilm):
    """The public path: compile(model, target="reference") runs the default pipeline, then the runtime."""
    import compiler

    model, tok = smollm2
    c = compiler.compile(model, target="reference")
    for text in (PROMPT, "Hello"):  # one trace, two lengths
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = model(ids, use_cache=False).logits
        got = c(ids).logits
        assert float((got - want).abs().max()) <= TOL
    assert len(c._specs) == 1 and len(c.graph.nodes) < len(export(model, (ids,)).graph.nodes)

    model, tok = minilm
    enc = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    c = compiler.compile(model, enc, target="reference")
    with torch.no_grad():
        want = model(**enc).last_hidden_state
    assert float((c(**enc).last_hidden_state - want).abs().max()) <= TOL
