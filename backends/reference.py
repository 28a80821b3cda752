"""`target="reference"`: run the IR with each op's NumPy reference implementation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

import ir

from .base import Backend, register_backend


@dataclass
class Interpreted:
    graph: ir.Graph
    source: str | None = None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return ir.run(self.graph, inputs)


@register_backend
class ReferenceBackend(Backend):
    name = "reference"
    capabilities = frozenset({"symbolic_shapes", "all_ops"})

    def build(self, g: ir.Graph) -> Interpreted:
        return Interpreted(g)

