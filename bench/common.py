"""What the benchmark scripts share: the machine's name for result tables, and doc sections."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path


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
