"""The backend tests reuse tests/ir's strategies: random valid graphs (strategies.py) and each op's
input cases (CASES in test_ops_vs_torch.py)."""
from __future__ import annotations

import sys
from pathlib import Path

IR_TESTS = str(Path(__file__).parent.parent / "ir")
if IR_TESTS not in sys.path:
    sys.path.insert(0, IR_TESTS)


import pytest  # noqa: E402

from backends.cpu import cc  # noqa: E402


@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    """build(make, portable=False) -> make(): the C kernels it compiles go to a temporary cache (nothing is
    written to ~/.cache); portable: compiled without -mavx2, so the portable C path runs (the same on any CPU)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITIUM_CACHE", str(tmp_path_factory.mktemp("tritium-cache")))
    real = cc.features

    def build(make, portable: bool = False):
        with pytest.MonkeyPatch.context() as m:
            if portable:
                m.setattr(cc, "features", lambda: real() - {"avx2"})
            return make()

    yield build
    mp.undo()
