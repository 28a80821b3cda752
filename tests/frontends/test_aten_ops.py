"""ATen ops the decoder families of issue 22 brought, each traced from a small module and run on the reference
runtime against eager PyTorch: topk (ties in torch's order), numpy_T, repeat, repeat_interleave, stack,
baddbmm, min/max of two tensors, and in-place ops (made functional before import)."""
from __future__ import annotations

import pytest
import torch

import ir
from frontends.torch_export import export


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _inplace(x, y):
    z = x * 2
    z.add_(y)
    z.div_(3.0)
    return z + x


torch.manual_seed(0)  # the inputs below are drawn once, at import: the same on every run
CASES = {
    "topk": (lambda x: torch.topk(x, 3, dim=-1), [torch.tensor([[1.0, 2, 2, 1, 2, 0, 2], [5, 5, 5, 5, 1, 1, 9]])]),
    "topk_smallest_dim0": (lambda x: torch.topk(x, 2, dim=0, largest=False), [torch.randn(5, 3)]),
    "numpy_T": (lambda x: x.T + 1, [torch.randn(2, 3, 4)]),
    "repeat": (lambda x: x.repeat(2, 1, 3), [torch.randn(3, 2)]),
    "repeat_interleave": (lambda x: x.repeat_interleave(2, dim=-1), [torch.randn(2, 3, 4)]),
    "repeat_interleave_flat": (lambda x: x.repeat_interleave(3), [torch.randn(2, 3)]),
    "stack": (lambda x, y: torch.stack([x, y, x], dim=1), [torch.randn(2, 3), torch.randn(2, 3)]),
    "baddbmm": (lambda c, a, b: torch.baddbmm(c, a, b, beta=0.5, alpha=2.0), [torch.randn(2, 1, 4), torch.randn(2, 3, 5), torch.randn(2, 5, 4)]),
    "baddbmm_beta0": (lambda c, a, b: torch.baddbmm(c, a, b, beta=0.0, alpha=0.25), [torch.full((2, 3, 4), float("nan")), torch.randn(2, 3, 5), torch.randn(2, 5, 4)]),
    "min_max_other": (lambda x, y: torch.min(x, y) + torch.max(x, y.long()), [torch.randn(3, 4), torch.randn(3, 4) * 4]),
    "inplace": (_inplace, [torch.randn(3, 4), torch.randn(3, 4)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_eager(name: str, call_ir, diff) -> None:
    fn, xs = CASES[name]
    m = Fn(fn)
    imp = export(m, tuple(xs), dynamic=False)
    ir.verify(imp.graph)
    assert ir.parse(str(imp.graph)) == imp.graph
    with torch.no_grad():
        want = m(*xs)
    got = call_ir(imp, tuple(xs))
    scale = max([1.0] + [float(t.abs().max()) for t in torch.utils._pytree.tree_leaves(want) if t.numel() and t.is_floating_point()])
    assert diff(got, want) <= 1e-6 * scale, name  # f32 rounding of the result's magnitude (baddbmm's sums reach ~10)
    if name == "topk":
        assert got.indices.tolist() == want.indices.tolist() and want.indices[0].tolist() == [1, 6, 4]  # ties: torch's order
        assert "argtopk" in str(imp.graph)
