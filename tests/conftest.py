"""Fixtures shared by every test directory: the real models, loaded once per session, offline."""
from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download from a model hub


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, float32 (dequantized once, then cached)."""
    from frontends.hf_models import smollm2_135m

    return smollm2_135m()


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2."""
    from frontends.hf_models import minilm_l6

    return minilm_l6()
