"""PassManager instrumentation: verify, print, dump, time, and name the failing pass."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

import pytest

import ir
from compiler.pass_manager import PassManager
from ir.errors import PassError, VerifyError
from passes import Pass, base, get_pass, register_pass

TEXT = """
graph @main(%x: f32[2, 3]) {
  param @w: f32[3]
  %a: f32[] = full() {value = 2.0, dtype = f32}
  %b: f32[] = mul(%a, %a)
  %c: f32[2, 3] = add(%x, %b)
  %d: f32[2, 3] = add(%x, %b)
  %e: f32[2, 3] = mul(%c, %d)
  %dead: f32[2, 3] = add(%x, @w)
  return %e
}"""
RESULT = """
graph @main(%x: f32[2, 3]) {
  %b: f32[] = full() {value = 4.0, dtype = f32}
  %c: f32[2, 3] = add(%x, %b)
  %e: f32[2, 3] = mul(%c, %c)
  return %e
}"""


@pytest.fixture
def test_passes() -> Iterator[None]:
    saved, origins = dict(base._REGISTRY), dict(base._ORIGINS)

    @register_pass
    @dataclass(frozen=True)
    class Boom(Pass):
        """Always fails."""

        name = "boom"

        def run(self, g: ir.Graph) -> ir.Graph:
            raise ValueError("kaboom")

    @register_pass
    @dataclass(frozen=True)
    class Breaks(Pass):
        """Returns a graph that does not verify: an output that is not defined."""

        name = "breaks"

        def run(self, g: ir.Graph) -> ir.Graph:
            g = g.copy()
            g.outputs = ["%nowhere"]
            return g

    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)
    base._ORIGINS.clear()
    base._ORIGINS.update(origins)


def test_runs_the_pipeline_from_text_or_objects():
    g = ir.parse(TEXT)
    assert PassManager("constant_fold,cse,dce").run(g) == ir.parse(RESULT)
    objs = [get_pass("constant_fold")(), get_pass("cse")(), get_pass("dce")()]
    assert PassManager(objs).run(g) == ir.parse(RESULT)
    assert str(PassManager(objs)) == "constant_fold{max_elements=65536},cse,dce"
    assert str(g) == str(ir.parse(TEXT))  # the input is untouched


def test_dumps_every_stage(tmp_path):
    out = PassManager("constant_fold,cse,dce", dump_dir=tmp_path / "ir").run(ir.parse(TEXT))
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["000_input.ir", "001_constant_fold.ir", "002_cse.ir", "003_dce.ir"]
    assert ir.parse((tmp_path / "ir" / "000_input.ir").read_text()) == ir.parse(TEXT)
    assert ir.parse((tmp_path / "ir" / "003_dce.ir").read_text()) == out
    for f in files:
        ir.parse((tmp_path / "ir" / f).read_text())


def test_prints_ir_after_every_pass(capsys):
    stream = io.StringIO()
    out = PassManager("constant_fold,cse,dce", print_ir_after_all=stream).run(ir.parse(TEXT))
    text = stream.getvalue()
    headers = [f"// -----// IR after {p} ({i}/3) //----- //" for i, p in enumerate(["constant_fold", "cse", "dce"], 1)]
    assert [text.index(h) for h in headers] == sorted(text.index(h) for h in headers)
    assert ir.parse(text.split(headers[-1])[1]) == out
    PassManager("dce", print_ir_after_all=True).run(ir.parse(TEXT))
    assert "// -----// IR after dce (1/1) //----- //" in capsys.readouterr().err


def test_times_passes(capsys):
    pm = PassManager("constant_fold,cse,dce")
    pm.run(ir.parse(TEXT))
    assert [n for n, _ in pm.timings] == ["constant_fold", "cse", "dce"] and all(s >= 0 for _, s in pm.timings)
    assert capsys.readouterr().err == ""  # no table unless asked
    PassManager("cse,dce", time_passes=True).run(ir.parse(TEXT))
    err = capsys.readouterr().err
    assert "seconds" in err and "%" in err and "cse" in err and "total" in err and "100.0%" in err


def test_a_failing_pass_is_named_with_those_before_it(test_passes):
    with pytest.raises(PassError) as e:
        PassManager("dce,cse,boom,dce").run(ir.parse(TEXT))
    assert str(e.value) == "pass 'boom' (3/4) failed: ValueError: kaboom. Passes that ran before it: dce, cse"
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(PassError, match=r"pass 'boom' \(1/1\) failed: .*Passes that ran before it: none"):
        PassManager("boom").run(ir.parse(TEXT))


def test_an_invalid_result_is_blamed_on_the_pass(test_passes):
    with pytest.raises(PassError, match=r"pass 'breaks' \(2/2\) produced an invalid graph: output %nowhere is not "
                                        r"defined\. Passes that ran before it: cse") as e:
        PassManager("cse,breaks").run(ir.parse(TEXT))
    assert isinstance(e.value.__cause__, VerifyError)
    assert PassManager("breaks", verify=False).run(ir.parse(TEXT)).outputs == ["%nowhere"]


def test_an_invalid_input_is_a_verify_error():
    g = ir.parse(TEXT)
    g.outputs = ["%missing"]
    with pytest.raises(VerifyError, match="output %missing is not defined"):
        PassManager("dce").run(g)
