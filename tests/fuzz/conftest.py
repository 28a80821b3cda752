"""The fuzz surfaces import fuzzing.py (the shared runner and contract) and tests/ir's strategies."""
from __future__ import annotations

import sys
from pathlib import Path

for d in (Path(__file__).parent, Path(__file__).parent.parent / "ir"):
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """How many examples each surface ran, and how many ended in a typed error (wrapped: a runtime turned a
    plain Python error into a TritiumError naming the node)."""
    from fuzzing import COUNTS

    for name, counts in COUNTS.items():
        terminalreporter.write_line(f"fuzz {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
