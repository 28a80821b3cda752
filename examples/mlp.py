"""A plain nn.Module: the smallest thing to compile.

    tritium compile examples/mlp.py:build --dump-ir - --passes "cse,dce"
"""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d: int = 16, h: int = 32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


def build():
    torch.manual_seed(0)
    return MLP().eval(), (torch.randn(4, 16),)
