"""Build a graph for target=cpu (with per-node type checks) and compare it with the reference runtime."""
from __future__ import annotations

from typing import Sequence

import numpy as np

import ir
from backends.cpu import CpuExecutable, generate


def require_c_compiler(kernel: str) -> None:
    """At a kernel test module's top: skip the module when this machine has no C compiler (CI has one)."""
    import pytest

    from backends.cpu import cc

    try:
        cc.compiler()
    except cc.NoCompilerError as e:
        pytest.skip(f"the {kernel} C kernel needs a C compiler: {e}", allow_module_level=True)


def build(g: ir.Graph, check: bool = True) -> CpuExecutable:
    """exact: the templates, which equal the reference bit for bit (the C kernels have their own tests)."""
    return CpuExecutable(g, generate(g, check=check, exact=True))


def assert_same(got: np.ndarray, want: np.ndarray, what: str = "", rtol: float = 0.0, atol: float = 0.0) -> None:
    """Same dtype and shape; equal values (NaN where NaN, exactly unless a tolerance is given)."""
    assert isinstance(got, np.ndarray), f"{what}: got a {type(got).__name__}, not an array"
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    if got.dtype.kind in "fV":
        got, want = got.astype(np.float64), want.astype(np.float64)
    if rtol or atol:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def check_against_reference(g: ir.Graph, args: Sequence[np.ndarray], exe: CpuExecutable | None = None,
                            rtol: float = 0.0, atol: float = 0.0) -> list[np.ndarray]:
    """Run g on target=cpu and the reference runtime; inputs must come back unchanged."""
    exe = exe or build(g)
    before = [np.array(a, copy=True) for a in args]
    want = ir.run(g, [np.array(a, copy=True) for a in args])
    got = exe(list(args))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_same(a, b, f"output {i} ({g.outputs[i]!r})\n{exe.source}", rtol, atol)
    for a, b in zip(args, before):
        assert_same(a, b, "an input was modified")
    return got
