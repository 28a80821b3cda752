"""Typed errors. Every error says what was wrong, where, and what to do."""
from __future__ import annotations


class TritiumError(Exception):
    """Base class of every error Tritium raises on purpose."""


class ParseError(TritiumError):
    """Malformed IR text. Carries the 1-based line and column."""

    def __init__(self, message: str, line: int = 0, column: int = 0, source_line: str = ""):
        self.line, self.column, self.source_line = line, column, source_line
        where = f"line {line}, column {column}: " if line else ""
        caret = f"\n  {source_line}\n  {' ' * max(column - 1, 0)}^" if source_line else ""
        super().__init__(f"{where}{message}{caret}")


class VerifyError(TritiumError):
    """A graph that breaks an IR invariant (SSA, types, shapes, attributes)."""


class UnsupportedOpError(TritiumError):
    """An op a frontend or backend cannot handle; names the op and where it came from."""


class PassError(TritiumError):
    """A pass failed, or a pipeline is invalid; names the pass and those that ran before."""


class CompileError(TritiumError):
    """The public compile() API was misused, or a target is not available."""


class GrammarError(TritiumError):
    """A malformed or unsupported grammar, regular expression or JSON schema. Carries where: the
    1-based line and column in grammar text, or the JSON-pointer path in a schema."""

    def __init__(self, message: str, line: int = 0, column: int = 0, path: str | None = None):
        self.line, self.column, self.path = line, column, path
        where = f"line {line}, column {column}: " if line else (f"at schema path {path or '/'}: " if path is not None else "")
        super().__init__(f"{where}{message}")


class RuntimeShapeError(TritiumError):
    """Inputs whose shapes or values a graph cannot take at run time (a wrong rank or dtype, a symbolic
    dim that comes out negative, a reduction with no identity over an axis that is empty this call)."""
