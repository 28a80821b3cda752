"""The top-level packages import downward only: ir <- frontends, passes, backends <- compiler.

Every import in every module counts, lazy ones inside functions included (a lazy import hides a cycle,
it does not remove it). The middle packages may import each other only without a cycle."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"ir": 0, "frontends": 1, "passes": 1, "backends": 1, "compiler": 2}


def imports() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> 'file:line' of every such import."""
    found: dict[tuple[str, str], list[str]] = {}
    for pkg in LAYER:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(n, ast.Import):
                    names = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom) and n.level == 0:
                    names = [n.module or ""]
                else:
                    continue
                for m in names:
                    top = m.split(".")[0]
                    if top in LAYER and top != pkg:
                        found.setdefault((pkg, top), []).append(f"{f.relative_to(ROOT)}:{n.lineno}")
    return found


def test_no_upward_import() -> None:
    up = {k: v for k, v in imports().items() if LAYER[k[1]] > LAYER[k[0]]}
    assert not up, "upward imports (ir <- frontends/passes/backends <- compiler):\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(w[:5])}" for (a, b), w in up.items())


def test_no_import_cycle_between_packages() -> None:
    edges = imports()
    cycles = [(a, b) for a, b in itertools.combinations(LAYER, 2) if (a, b) in edges and (b, a) in edges]
    assert not cycles, "import cycles: " + "; ".join(
        f"{a} <-> {b} ({edges[a, b][0]} and {edges[b, a][0]})" for a, b in cycles)
