"""Run a pipeline of passes with instrumentation: verify, print, dump and time every stage.

    pm = PassManager("constant_fold,cse,dce", dump_dir="build/ir")
    g = pm.run(g)          # 000_input.ir, 001_constant_fold.ir, 002_cse.ir, 003_dce.ir
    pm.timings             # [("constant_fold", 0.002), ("cse", 0.001), ("dce", 0.0005)]

A failure names the pass, its position and the passes that ran before it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import ir
from ir.errors import PassError, VerifyError
from passes import Pass, PassContext, parse_pipeline


class PassManager:
    def __init__(self, passes: list[Pass] | str, verify: bool = True, print_ir_after_all: bool | TextIO = False,
                 time_passes: bool = False, dump_dir: str | Path | None = None, context: PassContext | None = None):
        self.context = context or PassContext()
        self.passes: list[Pass] = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.verify = verify
        self.print_ir_after_all = print_ir_after_all
        self.time_passes = time_passes
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.timings: list[tuple[str, float]] = []

    def __str__(self) -> str:
        return ",".join(map(str, self.passes))

    def run(self, g: ir.Graph) -> ir.Graph:
        self.timings = []
        if self.verify:
            ir.verify(g)  # a bad input is the caller's error, not the first pass's
        self._dump(0, "input", g)
        total = len(self.passes)
        for i, p in enumerate(self.passes, 1):
            where = f"pass {p.name!r} ({i}/{total})"
            before = f"Passes that ran before it: {', '.join(q.name for q in self.passes[:i - 1]) or 'none'}"
            t0 = time.perf_counter()
            try:
                out = p.apply(g, self.context)
            except Exception as e:
                raise PassError(f"{where} failed: {type(e).__name__}: {e}. {before}") from e
            self.timings.append((p.name, time.perf_counter() - t0))
            if not isinstance(out, ir.Graph):
                raise PassError(f"{where} returned {type(out).__name__}, not a Graph. {before}")
            g = out
            if self.verify:
                try:
                    ir.verify(g)
                except VerifyError as e:
                    raise PassError(f"{where} produced an invalid graph: {e}. {before}") from e
            self._print(f"// -----// IR after {p.name} ({i}/{total}) //----- //", g)
            self._dump(i, p.name, g)
        if self.time_passes:
            print(self.timing_report(), file=sys.stderr)
        return g

    def _print(self, header: str, g: ir.Graph) -> None:
        if self.print_ir_after_all is False:
            return
        stream = sys.stderr if self.print_ir_after_all is True else self.print_ir_after_all
        stream.write(f"{header}\n{g}\n")

    def _dump(self, i: int, name: str, g: ir.Graph) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{i:03d}_{name}.ir").write_text(ir.print_graph(g, locs=True))  # locs help debugging

    def timing_report(self) -> str:
        """A table of the last run: pass, seconds, share of the total."""
        total = sum(s for _, s in self.timings) or 1e-12
        width = max([len(n) for n, _ in self.timings] + [5])
        rows = [f"{'pass':<{width}}  {'seconds':>10}  {'%':>6}"]
        rows += [f"{n:<{width}}  {s:>10.6f}  {100 * s / total:>5.1f}%" for n, s in self.timings]
        rows.append(f"{'total':<{width}}  {sum(s for _, s in self.timings):>10.6f}  {100.0:>5.1f}%")
        return "\n".join(["===----- pass execution timing -----==="] + rows)


def lower(backend: object, g: ir.Graph, **options: object) -> ir.Graph:
    """Run the target's layout passes (`backend.lowering`) on a graph the user's pipeline produced."""
    spec = getattr(backend, "lowering", "")
    if not spec:
        return g
    if options.get("dump_dir") is not None:  # beside the user's pipeline dumps, not over them
        options["dump_dir"] = Path(options["dump_dir"]) / f"lowering-{getattr(backend, 'name', 'target')}"  # type: ignore[arg-type]
    return PassManager(spec, **options).run(g)  # type: ignore[arg-type]
