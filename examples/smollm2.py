"""SmolLM2-135M-Instruct from its pip package (no download), for `tritium generate`.

    tritium generate examples/smollm2.py:load --prompt "The capital of France is" --passes ptqtp
"""
from __future__ import annotations


def load():
    """Returns (model, tokenizer) as the `tritium generate` SPEC contract asks."""
    from frontends.hf_models import smollm2_135m

    return smollm2_135m()
