"""Helpers of the frontend tests: call an imported graph the way its model is called."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from torch.utils import _pytree as pytree

import ir
from frontends.common import Imported, to_numpy, to_torch


def run_imported(imp: Imported, args: tuple = (), kwargs: dict | None = None, graph: ir.Graph | None = None) -> Any:
    """Run `imp.graph` (or `graph`, e.g. the graph parsed back from text, with imp's weights) on a
    model call's arguments with the reference runtime; rebuild the model's output structure."""
    leaves = pytree.tree_leaves((tuple(args), {**(kwargs or {}), **imp.extra_kwargs}))
    g = graph if graph is not None else imp.graph
    if graph is not None and not graph.weights:
        g = graph.copy()
        g.weights = dict(imp.graph.weights)
    outs = ir.run(g, [to_numpy(leaves[i]) for i in imp.input_leaves])
    return pytree.tree_unflatten([to_torch(o) for o in outs], imp.out_spec)


def max_diff(got: Any, want: Any) -> float:
    """Max abs difference over all tensor leaves of two output structures of one shape."""
    a, b = pytree.tree_leaves(got), pytree.tree_leaves(want)
    assert len(a) == len(b), (len(a), len(b))
    diffs = [float(np.abs(x.detach().numpy().astype(np.float64) - y.detach().numpy()).max()) if x.numel() else 0.0
             for x, y in zip(a, b)]
    return max(diffs, default=0.0)


@pytest.fixture(scope="session")
def call_ir() -> Callable[..., Any]:
    return run_imported


@pytest.fixture(scope="session")
def diff() -> Callable[[Any, Any], float]:
    return max_diff
