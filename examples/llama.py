"""A Hugging Face Llama-architecture model with random weights (no download).

    tritium compile examples/llama.py:build --dump-ir -
"""
from __future__ import annotations

import torch


def build(layers: int = 2, hidden: int = 64, vocab: int = 256, seq: int = 12):
    """Returns (model, example_inputs) as the `tritium compile` SPEC contract asks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    input_ids = torch.randint(0, vocab, (1, seq))
    return model, (input_ids,)
