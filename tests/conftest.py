"""Fixtures shared by every test directory: the real models, loaded once per session, offline."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Hypothesis profiles. The default, "deterministic", is what CI runs (hypothesis' own "ci" profile:
# derandomized, no example database), so the README's test command replays the same examples wherever it
# runs. "explore" (TRITIUM_HYPOTHESIS=explore) draws new random examples each run and multiplies every
# test's max_examples by TRITIUM_EXPLORE_SCALE (default 10): developers run it before they stop, and a
# failure it finds becomes an @example (or a pinned test) with the fix.
settings.register_profile("deterministic", parent=settings.get_profile("ci"))
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
PROFILE = os.environ.get("TRITIUM_HYPOTHESIS", "deterministic")
if PROFILE not in ("deterministic", "explore"):
    raise pytest.UsageError(f"TRITIUM_HYPOTHESIS={PROFILE!r}: use 'deterministic' (the default) or 'explore'")
settings.load_profile(PROFILE)


def pytest_collection_modifyitems(items: list) -> None:
    """Under "explore", scale each @given test's own max_examples (explicit settings beat a profile's)."""
    if PROFILE != "explore":
        return
    scale = int(os.environ.get("TRITIUM_EXPLORE_SCALE", "10"))
    for item in items:
        f = getattr(item, "obj", None)
        s = getattr(f, "_hypothesis_internal_use_settings", None)
        if s is not None and getattr(f, "is_hypothesis_test", False):
            f._hypothesis_internal_use_settings = settings(s, max_examples=s.max_examples * scale)


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis profile: {PROFILE}"


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
def smollm2_4_layers(smollm2):
    """SmolLM2-135M's first 4 decoder layers (its real weights, norm, embedding and head): for the runs
    that are too slow for every test run on the whole model (Triton's interpreter); bench/ has those."""
    import copy

    model, tok = smollm2
    short = copy.deepcopy(model)
    short.model.layers = short.model.layers[:4]
    short.config.num_hidden_layers = 4
    return short.eval(), tok


@pytest.fixture(scope="session")
def minilm():
    """(model, tokenizer) of all-MiniLM-L6-v2."""
    from frontends.hf_models import minilm_l6

    return minilm_l6()
