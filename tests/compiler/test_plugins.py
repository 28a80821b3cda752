"""Plugins: entry points of the group `tritium.plugins` add passes, lazily and loudly."""
from __future__ import annotations

import importlib.metadata
import textwrap
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pytest

import ir
from ir import plugins
from compiler.pass_manager import PassManager
from ir.errors import PassError
from passes import PASSES, base, get_pass, parse_pipeline, pass_origin

PLUGIN_PASS = '''
from dataclasses import dataclass
import ir
from passes import Pass, register_pass

@register_pass
@dataclass(frozen=True)
class {cls}(Pass):
    """A pass from a fake plugin."""
    name = "{name}"
    def run(self, g: ir.Graph) -> ir.Graph:
        return g.copy()
'''


@pytest.fixture
def fake_plugins(monkeypatch, tmp_path) -> Iterator[Callable[..., None]]:
    """Replace the installed entry points by fakes; the registry is restored afterwards."""
    saved, origins = dict(base._REGISTRY), dict(base._ORIGINS)
    monkeypatch.setattr(plugins, "_done", False)
    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.syspath_prepend(str(tmp_path))
    eps: list = []
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **kw: list(eps) if group == plugins.GROUP else [])

    def install(name: str, value: str, dist: str | None = "fake-dist", load: Callable | None = None,
                module_source: str | None = None) -> None:
        if module_source is not None:
            (tmp_path / f"{value}.py").write_text(textwrap.dedent(module_source))
        ep = importlib.metadata.EntryPoint(name, value, plugins.GROUP)
        eps.append(SimpleNamespace(name=name, value=value, group=plugins.GROUP,
                                   dist=SimpleNamespace(name=dist) if dist else None, load=load or ep.load))

    yield install
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)
    base._ORIGINS.clear()
    base._ORIGINS.update(origins)


def test_a_module_plugin_registers_on_first_lookup(fake_plugins):
    fake_plugins("fake", "tritium_fake_plugin_a", module_source=PLUGIN_PASS.format(cls="FakeA", name="fake-a"))
    assert "fake-a" not in base._REGISTRY  # nothing loads until the registry is read
    assert [str(p) for p in parse_pipeline("fake-a,dce")] == ["fake-a", "dce"]
    assert pass_origin("fake-a") == "plugin:fake-dist"
    assert pass_origin("dce") == "passes.dce"


def test_a_callable_plugin_is_called_once(fake_plugins):
    calls = []

    def setup() -> None:
        calls.append(1)
        ns: dict = {}
        exec(PLUGIN_PASS.format(cls="FakeB", name="fake-b"), ns)

    fake_plugins("fake", "somewhere:setup", load=lambda: setup)
    assert "fake-b" in PASSES and get_pass("fake-b").summary() == "A pass from a fake plugin."
    plugins.load_plugins()
    plugins.load_plugins(force=True)
    assert calls == [1]
    assert pass_origin("fake-b") == "plugin:fake-dist"


def test_a_plugin_that_takes_a_builtin_name_is_refused(fake_plugins):
    fake_plugins("clash", "tritium_fake_plugin_c", module_source=PLUGIN_PASS.format(cls="MyDce", name="dce"))
    with pytest.raises(PassError) as e:
        get_pass("cse")
    msg = str(e.value)
    assert "plugin 'clash'" in msg and "registered twice" in msg
    assert "passes.dce" in msg and "plugin:fake-dist" in msg


def test_a_plugin_that_fails_to_import_is_loud_every_time(fake_plugins):
    fake_plugins("broken", "tritium_no_such_module_xyz", dist=None)
    for _ in range(2):  # not swallowed, not forgotten
        with pytest.raises(PassError, match=r"plugin 'broken' \(tritium_no_such_module_xyz, from broken\) failed "
                                            r"to load: ModuleNotFoundError: No module named 'tritium_no_such_module_xyz'"):
            list(PASSES)


def test_the_installed_example_plugin_runs_by_name():
    try:
        importlib.metadata.distribution("tritium-example-pass")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the example plugin is not installed: pip install -e examples/custom_pass")
    g = ir.parse("""
graph @main(%x: f32[2, 3]) {
  %a: f32[2, 3] = neg(%x)
  %b: f32[2, 3] = neg(%a)
  %c: f32[2, 3] = neg(%b)
  %d: f32[2, 3] = neg(%c)
  %e: f32[2, 3] = add(%b, %d)
  return %e, %c
}""")
    out = PassManager("fold-double-neg,dce").run(g)
    assert out == ir.parse("""
graph @main(%x: f32[2, 3]) {
  %c: f32[2, 3] = neg(%x)
  %e: f32[2, 3] = add(%x, %x)
  return %e, %c
}""")
    assert pass_origin("fold-double-neg") == "plugin:tritium-example-pass"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for a, b in zip(ir.run(out, [x]), ir.run(g, [x])):
        np.testing.assert_array_equal(a, b)
