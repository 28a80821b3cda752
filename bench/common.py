"""What the benchmark scripts share: the machine's name for result tables, and doc sections."""
from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """CPU model name, core count and OS, for the results table."""
    name = platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.system()}, no GPU"


def write_section(doc: Path, name: str, text: str, title: str) -> None:
    """Replace the section between `<!-- name -->` and `<!-- /name -->` in `doc` (added at the end
    the first time), so several benchmarks share one page without overwriting each other."""
    body = doc.read_text() if doc.exists() else f"# {title}\n"
    block = f"<!-- {name} -->\n{text.rstrip()}\n<!-- /{name} -->"
    pat = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    body = pat.sub(lambda _: block, body) if pat.search(body) else body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)


def grouped_bars(ax, groups: Sequence, names: Sequence[str], value: Callable[[object, str], float],
                 labels: Sequence[str]) -> None:
    """One bar per name in each group; `value(group, name)` is its height."""
    import numpy as np

    w = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(groups)) + i * w, [value(g, n) for g in groups], w, label=n)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - w / 2, labels)
    ax.legend(fontsize=8)


def save_results(name: str, rows: list[dict], **extra: object) -> Path:
    """bench/results/<name>.json: the rows, the machine and the date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), **extra,
                                "rows": rows}, indent=1))
    return path
