"""The backend tests reuse tests/ir's strategies: random valid graphs (strategies.py) and each op's
input cases (CASES in test_ops_vs_torch.py)."""
from __future__ import annotations

import sys
from pathlib import Path

IR_TESTS = str(Path(__file__).parent.parent / "ir")
if IR_TESTS not in sys.path:
    sys.path.insert(0, IR_TESTS)
