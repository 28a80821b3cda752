"""Fixtures shared by every test directory: the real models, loaded once per session, offline."""
from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download from a model hub
# target="cuda" runs in Triton's interpreter here (no GPU). Triton reads this when its language module is
# imported (torch may import it early), so it is set before anything else; TRITIUM_TEST_GPU=1 on a CUDA
# machine runs the same tests on the GPU instead.
if os.environ.get("TRITIUM_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
