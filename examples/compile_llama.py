"""The Python API end to end: compile a Llama-architecture model and compare with eager PyTorch.

    python examples/compile_llama.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import compiler

sys.path.insert(0, str(Path(__file__).parent))
from llama import build  # noqa: E402

if __name__ == "__main__":
    model, (ids,) = build()
    compiled = compiler.compile(model, target="cpu")  # traced on the first call
    out = compiled(ids)
    ref = model(ids, use_cache=False)
    print(compiled.graph)
    print(f"logits {tuple(out.logits.shape)}, max |compiled - eager| = {(out.logits - ref.logits).abs().max():.2e}")
    longer = torch.randint(0, model.config.vocab_size, (1, 30))  # the same trace serves another length
    print(f"seq 30: max diff {(compiled(longer).logits - model(longer, use_cache=False).logits).abs().max():.2e}")
