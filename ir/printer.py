"""IR -> text. The text is the truth: `parse(print_graph(g)) == g` for every graph."""
from __future__ import annotations

import json
import re
from typing import Any

from .dtypes import DType
from .graph import Graph, Node

_BARE = re.compile(r"[A-Za-z0-9_.$]+")


def fmt_name(sigil: str, name: str) -> str:
    """`%x` / `@model.w`; names with other characters are quoted, so any model name round-trips."""
    return sigil + (name if _BARE.fullmatch(name) else json.dumps(name))


def fmt_ref(ref: str) -> str:
    return fmt_name(ref[0], ref[1:])


def fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, DType):
        return v.name
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".ein") else r + ".0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    if isinstance(v, str):
        from .parser import DimText

        return str(v) if isinstance(v, DimText) else json.dumps(v)
    raise TypeError(f"attribute value {v!r} has no text form")


def fmt_attrs(attrs: dict[str, Any]) -> str:
    from .ops import OPS  # noqa: F401  (kinds are attached by the op; values print by their type)

    return "{" + ", ".join(f"{k} = {fmt_value(v)}" for k, v in attrs.items()) + "}"


def print_node(n: Node, locs: bool = False) -> str:
    from .ops.base import OPS

    attrs = n.attrs
    spec = OPS[n.op].attrs if n.op in OPS else {}
    shown = {k: _dimtext(v) if spec.get(k) and spec[k].kind in ("dim", "dims") else v for k, v in attrs.items()}
    s = f"{fmt_name('%', n.name)}: {n.type} = {n.op}({', '.join(fmt_ref(o) for o in n.operands)})"
    if shown:
        s += " " + fmt_attrs(shown)
    if locs and n.loc is not None:  # an empty loc is still a loc
        s += f" loc({json.dumps(n.loc)})"
    return s


def _dimtext(v: Any) -> Any:
    from .parser import DimText

    if isinstance(v, list):
        return [_dimtext(x) for x in v]
    return DimText(v) if isinstance(v, str) else v


def print_graph(g: Graph, locs: bool = False) -> str:
    ins = ", ".join(f"{fmt_name('%', n)}: {t}" for n, t in g.inputs)
    lines = [f"graph {fmt_name('@', g.name)}({ins}) {{"]
    lines += [f"  param {fmt_name('@', n)}: {t}" for n, t in g.params.items()]
    lines += ["  " + print_node(n, locs) for n in g.nodes]
    lines.append("  return " + ", ".join(fmt_ref(o) for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
