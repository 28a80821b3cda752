"""Shared fixtures of the pass tests: golden before/after checks and a registry that tests may change."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

import ir
from passes import Pass, base


def check_golden(p: Pass, before: str, after: str, idempotent: bool = True) -> ir.Graph:
    """Run `p` on the `before` text; the result must verify and equal the `after` text."""
    g = ir.parse(before)
    text = str(g)
    out = p.run(g)
    assert str(g) == text, f"{p} mutated its input"
    ir.verify(out)
    assert out == ir.parse(after), f"{p} gave:\n{out}"
    assert ir.parse(str(out)) == out  # the result round-trips through text
    if idempotent:
        assert p.run(out) == out, f"{p} is not idempotent"
    return out


@pytest.fixture
def golden() -> Callable[..., ir.Graph]:
    return check_golden


@pytest.fixture
def registry() -> Iterator[None]:
    """Passes a test registers are gone after it."""
    saved, origins = dict(base._REGISTRY), dict(base._ORIGINS)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)
    base._ORIGINS.clear()
    base._ORIGINS.update(origins)
