"""Every quantized-weight op has a test module here (tests/ir/test_quant_<family>.py) that names it
in TESTED_OPS and checks its reference against an independent formulation."""
from __future__ import annotations

import importlib
from pathlib import Path

import ir


def test_every_quant_op_is_tested() -> None:
    tested: set[str] = set()
    for f in sorted(Path(__file__).parent.glob("test_quant_*.py")):
        if f.stem != "test_quant_ops":
            tested |= set(getattr(importlib.import_module(f.stem), "TESTED_OPS", ()))
    quant = {n for n, op in ir.OPS.items() if type(op).__module__.startswith("ir.ops.quant")}
    missing = sorted(quant - tested)
    assert not missing, f"add a tests/ir/test_quant_<family>.py with TESTED_OPS for: {missing}"
