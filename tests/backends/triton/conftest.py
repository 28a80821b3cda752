"""The Triton backend's tests run its kernels in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors):
no GPU is needed. The variable is read when a kernel is decorated, i.e. when the backend builds.
With TRITIUM_TEST_GPU=1 on a machine with a CUDA GPU, the same tests run the compiled kernels on it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BACKEND_TESTS = str(Path(__file__).parent.parent)  # hostile_graph and friends from tests/backends
if BACKEND_TESTS not in sys.path:
    sys.path.insert(0, BACKEND_TESTS)


def _on_gpu() -> bool:
    if os.environ.get("TRITIUM_TEST_GPU") != "1":
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _on_gpu():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
