"""wina{transform=true}: the reference's tensor transform (norm weights folded, residual stream rotated,
shortcut rotations) keeps the dense model's function on tiny Llama and Qwen3 (random norm weights, tied
and untied heads) and on SmolLM2's first layers, and its per-branch form on tiny BERT; what it leaves in
the graph; the reference's defaults (o_proj sparsified, only k_proj/gate_proj scored by norms, the first 1%
of a prompt dense)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ir
from passes.teal import Teal
from passes.wina import REFERENCE_LAYERS, Wina, rotate_residual


def tiny_model(arch: str, tied: bool = False) -> tuple[ir.Graph, np.ndarray, torch.nn.Module]:
    """tiny(arch) with random RMSNorm weights (so that folding them is not a no-op), exported; 12 token ids."""
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    model = tiny(arch)
    if tied:  # the embedding table is the head's weight, as in SmolLM2
        cfg = model.config
        cfg.tie_word_embeddings = True
        torch.manual_seed(1)
        model = type(model)(cfg).eval()
        assert model.lm_head.weight is model.model.embed_tokens.weight
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.25)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    return export(model, (ids,)).graph, ids.numpy(), model


CASES = [("llama", False), ("qwen3", False), ("llama", True)]


@pytest.mark.parametrize("arch, tied", CASES)
def test_transformed_dense_model_equals_the_original(arch, tied):
    g, ids, model = tiny_model(arch, tied)
    want = ir.run(g, [ids])[0]
    with torch.no_grad():
        np.testing.assert_allclose(want, model(torch.from_numpy(ids), use_cache=False).logits.numpy(), atol=1e-4)
    h = g.copy()
    refs = rotate_residual(h)
    ir.verify(h)
    np.testing.assert_allclose(ir.run(h, [ids])[0], want, rtol=0, atol=1e-4)
    # through the pass: dense masks (keep everything) and the dense prefix change nothing either
    out = Wina(sparsity=0.0, transform=True).run(g)
    np.testing.assert_allclose(ir.run(out, [ids])[0], want, rtol=0, atol=1e-4)
    assert refs == [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.k_proj.weight", "mlp.gate_proj.weight")]


@pytest.mark.parametrize("arch, tied", CASES)
def test_what_the_transform_leaves(arch, tied):
    g, ids, _ = tiny_model(arch, tied)
    before = {k: v.copy() for k, v in g.weights.items()}
    h = g.copy()
    refs = rotate_residual(h)
    assert all(np.array_equal(g.weights[k], v) for k, v in before.items())  # the input graph is untouched
    norms = [p for p in h.params if p.endswith("layernorm.weight") or p == "model.norm.weight"]
    assert len(norms) == 5 and all((h.weights[p] == 1).all() for p in norms)  # folded into the linears
    for w in refs:  # the reference's choice: k_proj and gate_proj columns orthogonal, norms = singular values
        W = h.weights[w].astype(np.float64)
        gram = W.T @ W
        assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-4 * np.abs(gram).max()
        assert (np.diff(np.diag(gram)) <= 1e-4 * np.abs(gram).max()).all()  # by descending singular value
    # a shortcut rotation between sublayers: 2 layers x 2 sublayers, the last one without (it keeps its basis)
    shortcuts = [n for n in h.nodes if n.op == "matmul" and n.operands[1].endswith(".shortcut.0")]
    assert len(shortcuts) == 3 and all(n.type.shape[-1] == 64 for n in shortcuts)
    for n in shortcuts:
        S = h.weights[n.operands[1][1:]].astype(np.float64)
        np.testing.assert_allclose(S @ S.T, np.eye(64), atol=1e-5)
    heads = [n for n in h.nodes if n.op == "linear" and n.ref in h.outputs]
    embeds = [n for n in h.nodes if n.op == "embedding"]
    assert heads[0].operands[1] == "@lm_head.weight"
    assert embeds[0].operands[0] != heads[0].operands[1]  # a tied head gets its own copy


def test_transform_keeps_k_whole_when_k_is_low_rank():
    """k_proj [32, 64] has rank 32: in its SVD basis half the rotated inputs meet zero columns, so WINA at 0.5
    drops exactly those for k, and layer 0's keys equal the dense model's; queries lose real inputs."""
    g, ids, _ = tiny_model("llama")
    seen: dict[str, list[np.ndarray]] = {}

    def run(h: ir.Graph) -> None:
        ir.run(h, [ids], observe=lambda n, ins: seen.setdefault(n.operands[1], []).append(
            ir.OPS["linear"].reference(ins, n.attrs)) if n.op == "linear" else None)

    run(Wina(sparsity=0.0, transform=True).run(g))
    run(Wina(sparsity=0.5, transform=True).run(g))
    k, q = seen["@model.layers.0.self_attn.k_proj.weight"], seen["@model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_allclose(k[1], k[0], atol=1e-5)
    assert not np.allclose(q[1][:, 1:], q[0][:, 1:], atol=1e-3)  # token 0 is the dense prefix


def test_reference_defaults():
    g, ids, _ = tiny_model("qwen3")
    out = Wina(sparsity=0.5, transform=True).run(g)
    feeds = {n.operands[1][1:] for n in out.nodes if n.op == "linear" and n.operands[0].split(".")[-1].startswith("prefix")}
    assert len(feeds) == 14 and any("o_proj" in w for w in feeds)  # all 7 linears of each block, o_proj too
    scaled = sorted(n.operands[1] for n in out.nodes if n.op == "sparsify" and len(n.operands) == 2)
    assert scaled == sorted(f"@model.layers.{i}.{m}.colnorm" for i in range(2)
                            for m in ("self_attn.k_proj.weight", "mlp.gate_proj.weight"))
    assert ir.count_ops(out)["where"] == 14  # the dense prefix, behind every sparsify
    assert Wina(sparsity=0.5, transform=True).run(out) == out  # idempotent: every input is already sparse
    plain = Wina(sparsity=0.5).run(g)  # without the transform: none of that
    assert "where" not in ir.count_ops(plain) and not any("o_proj" in n.operands[1] for n in plain.nodes
                                                           if n.op == "linear" and n.operands[0].endswith(".sparse"))
    explicit = Wina(sparsity=0.5, transform=True, layers=REFERENCE_LAYERS, prefix=0.01)
    assert explicit.run(g) == out


@pytest.mark.parametrize("L", [1, 2, 5, 99, 100, 101, 150, 512])
def test_prefix_keeps_the_references_first_tokens_dense(L):
    """The reference sparsifies the last int(0.99 L) tokens of each forward, and all of a single token."""
    g = ir.parse("""graph @mlp(%x: f32[1, s0, 8]) {
  param @layers.0.mlp.up_proj.weight: f32[16, 8]
  %up: f32[1, s0, 16] = linear(%x, @layers.0.mlp.up_proj.weight)
  %out: f32[1, s0, 16] = neg(%up)
  return %out
}
""")
    W = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    g.weights["layers.0.mlp.up_proj.weight"] = W
    x = np.random.default_rng(1).standard_normal((1, L, 8)).astype(np.float32) + 0.1
    got = -ir.run(Teal(sparsity=0.5, prefix=0.01).run(g), [x])[0]
    dense_rows = np.isclose(got, x @ W.T, atol=1e-5).all(-1)[0]
    n_dense = L - int(0.99 * L) if L > 1 else 0
    assert dense_rows.tolist() == [True] * n_dense + [False] * (L - n_dense)


def test_layer_norm_models_get_the_transform_on_each_branch():
    """BERT (post-norm: the residual stream is the LayerNorm's output, weight and bias included) cannot be
    rotated; each norm's linears read its weightless output rotated instead, with the same folded weights."""
    from frontends.hf_models import tiny
    from frontends.torch_export import export

    model = tiny("bert")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.25 if name.endswith("weight")
                        else torch.randn(p.shape, generator=gen) * 0.3)
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    g = export(model, (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}).graph
    xs = [ids.numpy(), np.ones((2, 8), np.int64)]
    want = ir.run(g, xs)
    out = Wina(sparsity=0.0, transform=True, layers="*").run(g)
    for got, w in zip(ir.run(out, xs), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-4)
    rotations = [n for n in out.nodes if n.op == "matmul" and ".rotation" in n.operands[1]]
    assert len(rotations) == 4  # q/k/v and the intermediate of each layer
    scaled = sorted(n.operands[1] for n in out.nodes if n.op == "sparsify" and len(n.operands) == 2)
    assert scaled == sorted(f"@encoder.layer.{i}.{m}.weight.colnorm" for i in range(2)
                            for m in ("attention.self.key", "intermediate.dense"))


def test_transform_refuses_what_it_cannot_rotate():
    g = ir.parse("""graph @mlp(%x: f32[1, s0, 8]) {
  param @layers.0.mlp.up_proj.weight: f32[16, 8]
  %up: f32[1, s0, 16] = linear(%x, @layers.0.mlp.up_proj.weight)
  %out: f32[1, s0, 16] = neg(%up)
  return %out
}
""")
    g.weights["layers.0.mlp.up_proj.weight"] = np.ones((16, 8), np.float32)
    with pytest.raises(ir.PassError, match="pre-norm RMSNorm decoder"):
        Wina(transform=True).run(g)
    with pytest.raises(ir.PassError, match="prefix"):
        Teal(prefix=1.0).run(g)


@pytest.mark.slow
def test_transform_on_smollm2_layers(smollm2_4_layers):
    """Real weights (a tied head, 4 of SmolLM2's 30 layers): the transformed dense model equals the original."""
    from frontends.torch_export import export

    model, tok = smollm2_4_layers
    ids = tok("The transform rotates the residual stream of a decoder.", return_tensors="pt")["input_ids"]
    g = export(model, (ids,)).graph
    want = ir.run(g, [ids.numpy()])[0]
    h = g.copy()
    assert len(rotate_residual(h)) == 8
    got = ir.run(h, [ids.numpy()])[0]
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max() + 1e-4
