"""An op with no handler fails with UnsupportedOpError naming the op, the module path and the
source line, in both frontends."""
from __future__ import annotations

import inspect
import os

import pytest
import torch
from torch import nn

import ir
from frontends.torch_export import export
from frontends.torch_fx import trace


class Sorts(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.sort(self.fc(x), dim=-1).values


class Transforms(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real


class Net(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.encoder = nn.ModuleDict({"block": inner})

    def forward(self, x):
        return self.encoder["block"](x) + 1


def _line(cls: type, text: str) -> str:
    """`file.py:N` of the line of `cls` that contains `text`."""
    lines, start = inspect.getsourcelines(cls)
    return f"{os.path.basename(__file__)}:{start + next(i for i, l in enumerate(lines) if text in l)}"


@pytest.mark.parametrize("frontend", ["export", "fx"])
@pytest.mark.parametrize("inner, names", [(Sorts, {"export": "aten.sort", "fx": "torch.sort"}),
                                          (Transforms, {"export": "aten.fft_fft", "fx": "fft"})])
def test_unsupported_op_names_op_module_and_line(frontend, inner, names):
    model, x = Net(inner()), torch.randn(2, 8)
    with pytest.raises(ir.UnsupportedOpError) as e:
        export(model, (x,)) if frontend == "export" else trace(model, (x,))
    msg = str(e.value)
    where = _line(inner, "torch.sort" if inner is Sorts else "torch.fft")
    assert names[frontend] in msg and "encoder.block" in msg and where in msg, msg
