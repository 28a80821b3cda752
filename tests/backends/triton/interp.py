"""Helpers of the Triton backend's tests: build a graph for target=cuda and check it against the reference."""
from __future__ import annotations

from typing import Sequence

import numpy as np

import ir


def build(g: ir.Graph, tiles: str = "gpu"):
    """The GPU's tile sizes by default, so ragged edges and multi-tile loops are those a GPU runs."""
    from backends.triton import TritonBackend

    return TritonBackend().build(g, tiles)


def check(g: ir.Graph, args: Sequence[np.ndarray], rtol: float = 1e-5, atol: float = 1e-6, exe=None) -> list[np.ndarray]:
    """target=cuda (interpreted) against the reference runtime: same dtypes and shapes, close values
    (NaN where NaN; integers and bools exactly); the inputs come back unchanged."""
    from compare import assert_same  # tests/backends/compare.py

    exe = exe or build(g)
    before = [np.array(a, copy=True) for a in args]
    want = ir.run(g, [np.array(a, copy=True) for a in args])
    got = exe(list(args))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        floats = a.dtype.kind in "fV"
        assert_same(a, b, f"output {i} ({g.outputs[i]})", rtol if floats else 0.0, atol if floats else 0.0)
    for a, b in zip(args, before):
        assert_same(a, b, "an input was modified")
    return got
