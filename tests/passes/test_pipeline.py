"""The pass registry and the pipeline text: round trips, and an error for each mistake."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
import passes
from ir.errors import PassError
from passes import PASSES, Pass, get_pass, parse_pipeline, pass_origin, register_pass


@pytest.fixture
def opts(registry) -> type[Pass]:
    @register_pass
    @dataclass(frozen=True)
    class Opts(Pass):
        """A pass with one option of every type."""

        name = "test-opts"
        bits: int = 4
        scale: float = 0.5
        signed: bool = False
        mode: str = "absmean"

        def run(self, g: ir.Graph) -> ir.Graph:
            return g.copy()

    return Opts


def test_every_registered_pass_round_trips_and_lives_in_its_own_file():
    root = Path(passes.__file__).parent
    assert {"dce", "cse", "constant_fold"} <= set(PASSES)
    for name, cls in PASSES.items():
        p = cls()
        assert parse_pipeline(str(p)) == [p]
        assert cls.summary(), f"{name} has no docstring"
        if pass_origin(name).startswith("passes."):
            assert pass_origin(name) == f"passes.{name}" and (root / f"{name}.py").exists()


def test_str_lists_options_in_field_order(opts):
    assert str(opts()) == "test-opts{bits=4,scale=0.5,signed=false,mode=absmean}"
    assert str(get_pass("dce")()) == "dce"
    assert str(opts(mode="a b", scale=1e-05)) == 'test-opts{bits=4,scale=1e-05,signed=false,mode="a b"}'


def test_parse_values_and_spacing(opts):
    got = parse_pipeline(' dce , test-opts{ bits = 3,signed=true, mode="x,y}" , scale=2 }, cse,test-opts{}')
    assert got == [get_pass("dce")(), opts(bits=3, signed=True, mode="x,y}", scale=2.0), get_pass("cse")(), opts()]
    assert parse_pipeline("test-opts{mode=128}") == [opts(mode="128")]  # a str option takes any word
    assert parse_pipeline("test-opts{scale=-inf}")[0].scale == float("-inf")
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.integers(), scale=st.floats(allow_nan=False), signed=st.booleans(), mode=st.text())
def test_round_trip_property(opts, bits, scale, signed, mode):
    ps = [opts(bits, scale, signed, mode), get_pass("dce")(), opts()]
    assert parse_pipeline(",".join(map(str, ps))) == ps


@pytest.mark.parametrize("spec, message", [
    ("dce,dcee", "column 5: unknown pass 'dcee'; did you mean 'dce'?"),
    ("test-opts{bitz=3}", "pass 'test-opts' has no option 'bitz'; its options: bits: int, scale: float, signed: bool, mode: str"),
    ("test-opts{bits=3.5}", "column 16: option 'bits' of pass 'test-opts': expected int, got '3.5'"),
    ("test-opts{bits=\"3\"}", "expected int, got string \"3\""),
    ("test-opts{signed=1}", "expected bool (true or false), got '1'"),
    ("test-opts{scale=x}", "expected float, got 'x'"),
    ("test-opts{bits=1,bits=2}", "option 'bits' of pass 'test-opts' is given twice"),
    ("dce,,cse", "column 5: expected a pass name, found ','"),
    ("dce,", "column 5: expected a pass name, found end of pipeline"),
    ("dce cse", "column 5: expected ',' between passes, found 'cse'"),
    ("test-opts{bits 3}", "column 16: expected '=' after option bits, found '3'"),
    ("test-opts{bits=3", "column 17: expected ',' or '}' after an option, found end of pipeline"),
    ("test-opts{bits=}", "column 16: expected a value for option 'bits'"),
    ("test-opts{mode=\"open}", "column 16: expected a value for option 'mode'"),
])
def test_pipeline_errors_say_what_and_where(opts, spec, message):
    with pytest.raises(PassError) as e:
        parse_pipeline(spec)
    assert message in str(e.value)
    assert spec in str(e.value)  # the spec is shown, with a caret under the column


def test_options_are_checked_when_built_in_python(opts):
    with pytest.raises(PassError, match="option bits of pass 'test-opts' must be int, got '3'"):
        opts(bits="3")
    with pytest.raises(PassError, match="must be int, got True"):
        opts(bits=True)
    assert opts(scale=1).scale == 1.0 and isinstance(opts(scale=1).scale, float)


def test_duplicate_name_names_both_origins(registry):
    @dataclass(frozen=True)
    class OtherDce(Pass):
        """Not the real dce."""

        name = "dce"

    with pytest.raises(PassError, match=r"pass 'dce' is registered twice: by passes\.dce .* and by test_pipeline"):
        register_pass(OtherDce)
    assert get_pass("dce").__module__ == "passes.dce"


def test_bad_pass_definitions_are_refused(registry):
    class NotADataclass(Pass):
        """No decorator."""

        name = "bad"

    @dataclass(frozen=True)
    class NoDoc(Pass):
        name = "bad"

    @dataclass(frozen=True)
    class BadType(Pass):
        """A list option."""

        name = "bad"
        xs: list = dataclasses.field(default_factory=list)

    @dataclass(frozen=True)
    class NoDefault(Pass):
        """An option without a default."""

        name = "bad"
        n: int

    @dataclass(frozen=True)
    class NoName(Pass):
        """No name."""

    for cls, msg in [(NotADataclass, "dataclass"), (NoDoc, "docstring"), (BadType, "options are int, float, bool or str"),
                     (NoDefault, "needs a default"), (NoName, "needs a class attribute `name`")]:
        with pytest.raises(PassError, match=msg):
            register_pass(cls)
    assert "bad" not in PASSES
