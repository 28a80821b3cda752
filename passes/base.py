"""What a pass is, the pass registry, and the pipeline text `dce,cse,rtn{bits=3, group=64}`.

A pass is a frozen dataclass whose fields are its options (int, float, bool or str, each with a
default), with a `name` and a docstring. `run(g)` returns a new graph and never mutates `g`.

    @register_pass
    @dataclass(frozen=True)
    class Rtn(Pass):
        \"\"\"Round weights to nearest on a `group`-wide grid of `bits` bits.\"\"\"
        name = "rtn"
        bits: int = 4
        group: int = 128
        def run(self, g: ir.Graph) -> ir.Graph: ...

Invariant: `parse_pipeline(",".join(map(str, ps))) == ps` for every list of passes `ps`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import ir
from ir import plugins
from ir.errors import PassError

_OPTION_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}
_PASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_BARE_STR = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")  # strings that print unquoted


@dataclasses.dataclass
class PassContext:
    """What a pipeline knows beyond the graph: data for the passes that need it.

    calibration: graph-input lists (NumPy arrays in graph-input order) to run the graph on, for
        passes that use activation statistics; None when the caller gave no data.
    model: the torch module being compiled (methods that need gradients use it), or None.
    loss: a callable `loss(model) -> torch scalar` for gradient-based sensitivity, or None.
    progress: show progress bars on long work.
    """

    calibration: list[list[Any]] | None = None
    model: Any = None
    loss: Any = None
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base class of passes: maps a graph to a new, verifiable graph."""

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        # Options set from Python are checked like options parsed from text.
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(self, f, getattr(self, f.name)))

    def run(self, g: ir.Graph) -> ir.Graph:
        """The pass without pipeline context. A pass that overrides only `apply` (it reads the
        context) runs here with an empty one: no calibration data, no progress bars."""
        if type(self).apply is not Pass.apply:
            return self.apply(g, PassContext(progress=False))
        raise NotImplementedError(f"pass {self.name!r} defines neither run() nor apply()")

    def apply(self, g: ir.Graph, ctx: PassContext) -> ir.Graph:
        """What the PassManager calls. Passes that need calibration data override this."""
        return self.run(g)

    def __str__(self) -> str:
        opts = ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{self.name}{{{opts}}}" if opts else self.name

    @classmethod
    def options(cls) -> list[tuple[str, str, Any]]:
        """(name, type name, default) of every option, in field order."""
        return [(f.name, _type_name(f), f.default) for f in dataclasses.fields(cls)]

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        return ((cls.__doc__ or "").strip().splitlines() or [""])[0]


def _type_name(f: dataclasses.Field) -> str:
    t = f.type
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _coerce(p: Pass | type[Pass], f: dataclasses.Field, v: Any) -> Any:
    kind = _type_name(f)
    ok = isinstance(v, _OPTION_TYPES.get(kind, object)) and not (kind != "bool" and isinstance(v, bool))
    if kind == "float" and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if not ok:
        raise PassError(f"option {f.name} of pass {p.name!r} must be {kind}, got {v!r}")
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if _BARE_STR.fullmatch(v) and v not in ("true", "false") else json.dumps(v)
    return repr(v)  # int, or a float whose repr round-trips ("inf", "nan", "1e-05")


# -- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Pass]] = {}
_ORIGINS: dict[str, str] = {}  # pass name -> module name or "plugin:<dist>"


def _label(pkg: str, origin: str) -> None:
    """A module plugin imported before it loaded as a plugin: its passes get the plugin's origin."""
    for name, cls in _REGISTRY.items():
        if cls.__module__ == pkg or cls.__module__.startswith(pkg + "."):
            _ORIGINS[name] = origin


plugins.LABELERS.append(_label)
_load_plugins = plugins.load_plugins


class _Passes(Mapping[str, "type[Pass]"]):
    """Read-only view of the registry; reading it loads plugins first, so listings include them."""

    def __getitem__(self, name: str) -> type[Pass]:
        _load_plugins()
        return _REGISTRY[name]

    def __iter__(self) -> Iterator[str]:
        _load_plugins()
        return iter(sorted(_REGISTRY))

    def __len__(self) -> int:
        _load_plugins()
        return len(_REGISTRY)


PASSES: Mapping[str, type[Pass]] = _Passes()

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator: add a pass to the registry. Names are unique across built-ins and plugins."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if "__dataclass_fields__" not in cls.__dict__ or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise PassError(f"pass {where} must be decorated with @dataclass(frozen=True) under @register_pass")
    if not isinstance(cls.name, str) or not _PASS_NAME.fullmatch(cls.name):
        raise PassError(f"pass {where} needs a class attribute `name` like 'my_pass', got {cls.name!r}")
    doc = cls.__dict__.get("__doc__") or ""
    if not doc.strip() or doc.startswith(cls.__name__ + "("):  # dataclass invents a doc when none is given
        raise PassError(f"pass {cls.name!r} ({where}) needs a docstring saying what it does")
    for f in dataclasses.fields(cls):
        if _type_name(f) not in _OPTION_TYPES:
            raise PassError(f"option {f.name} of pass {cls.name!r} has type {_type_name(f)}; options are int, float, bool or str")
        if f.default is dataclasses.MISSING:
            raise PassError(f"option {f.name} of pass {cls.name!r} needs a default")
    origin = plugins.current_origin() or cls.__module__
    old = _REGISTRY.get(cls.name)
    if old is not None and f"{old.__module__}.{old.__qualname__}" != where:  # same place: a reload
        raise PassError(f"pass {cls.name!r} is registered twice: by {_ORIGINS[cls.name]} ({old.__module__}."
                        f"{old.__qualname__}) and by {origin} ({where}); rename one of them")
    _REGISTRY[cls.name] = cls
    _ORIGINS[cls.name] = origin
    return cls


def pass_origin(name: str) -> str:
    """Where a registered pass came from: its module, or `plugin:<distribution>`."""
    get_pass(name)
    return _ORIGINS[name]


def get_pass(name: str) -> type[Pass]:
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PassError(f"unknown pass {name!r}{hint} (known passes: {', '.join(sorted(_REGISTRY)) or 'none'}; "
                    "run `tritium passes` for details)")


# -- pipeline text -------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[^\s,{}="]+)|(?P<punct>[,{}=])|(?P<bad>\S))')


def parse_pipeline(spec: str) -> list[Pass]:
    """`"dce,cse,rtn{bits=3, group=64}"` -> passes. Option values are typed by the pass's fields:
    ints, floats, true/false, or strings (bare or double-quoted). Errors say where and what."""
    toks: list[tuple[str, str, int]] = []  # (kind, text, 1-based column)
    for m in _TOKEN.finditer(spec):
        kind = m.lastgroup or "bad"
        toks.append((kind, m.group(kind), m.start(kind) + 1))
    toks.append(("end", "", len(spec) + 1))
    i = 0

    def fail(msg: str, col: int) -> PassError:
        return PassError(f"pipeline {spec!r}, column {col}: {msg}\n  {spec}\n  {' ' * (col - 1)}^")

    def take(kind: str, text: str | None, what: str) -> tuple[str, str, int]:
        nonlocal i
        tok = toks[i]
        if tok[0] != kind or (text is not None and tok[1] != text):
            found = "end of pipeline" if tok[0] == "end" else repr(tok[1])
            raise fail(f"expected {what}, found {found}", tok[2])
        i += 1
        return tok

    out: list[Pass] = []
    if toks[0][0] == "end":
        return out  # an empty pipeline
    while True:
        _, name, col = take("word", None, "a pass name")
        try:
            cls = get_pass(name)
        except PassError as e:
            raise fail(str(e), col) from None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        opts: dict[str, Any] = {}
        if toks[i][:2] == ("punct", "{"):
            i += 1
            while toks[i][:2] != ("punct", "}"):
                _, key, kcol = take("word", None, f"an option name of {name}")
                if key not in fields:
                    known = ", ".join(f"{k}: {_type_name(f)}" for k, f in fields.items()) or "none"
                    raise fail(f"pass {name!r} has no option {key!r}; its options: {known}", kcol)
                if key in opts:
                    raise fail(f"option {key!r} of pass {name!r} is given twice", kcol)
                take("punct", "=", f"'=' after option {key}")
                kind, text, vcol = toks[i]
                if kind not in ("word", "str"):
                    raise fail(f"expected a value for option {key!r}", vcol)
                i += 1
                try:
                    opts[key] = _value(text, kind == "str", _type_name(fields[key]))
                except ValueError as e:
                    raise fail(f"option {key!r} of pass {name!r}: {e}", vcol) from None
                if toks[i][:2] != ("punct", "}"):
                    take("punct", ",", "',' or '}' after an option")
            i += 1
        out.append(cls(**opts))
        if toks[i][0] == "end":
            return out
        take("punct", ",", "',' between passes")


def _value(text: str, quoted: bool, kind: str) -> Any:
    if kind == "str":
        return json.loads(text) if quoted else text
    got = f"string {text}" if quoted else repr(text)
    if not quoted:
        if kind == "bool" and text in ("true", "false"):
            return text == "true"
        if kind == "int" and re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                pass
    raise ValueError(f"expected {kind}" + (" (true or false)" if kind == "bool" else "") + f", got {got}")
