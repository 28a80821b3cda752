"""SmolLM2-135M forward on `target="cpu"` (fp32 and ptqtp trit-planes) against torch eager fp32, one run.

    python bench/model_cpu.py                    # seq 1, 16, 128 (quantizes once: ~3 min, then cached)
    python bench/model_cpu.py --seqs 1,16 --reps 5

A forward pass over `seq` tokens (no KV cache: the decoding runtime is its own issue): median
latency and tokens/s. The ptqtp model is quantized once with `ptqtp{planes=2,group=64}` and kept
as an artifact in ~/.cache/tritium/bench (`compiler.load` brings it back without re-quantizing);
the CPU backend packs it for the LUT kernels. Writes docs/performance.md (section model_cpu) and
docs/model_cpu.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compiler  # noqa: E402
from frontends.hf_models import smollm2_135m  # noqa: E402

from common import grouped_bars, machine, save_results, write_section  # noqa: E402  (bench/common.py)

CACHE = Path.home() / ".cache" / "tritium" / "bench"
PTQTP = "ptqtp{planes=2,group=64}"


def median_latency(fn, reps: int) -> float:
    fn()  # warm-up (first call traces / compiles kernels)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def quantized(model: torch.nn.Module, ids: torch.Tensor) -> Path:
    path = CACHE / "smollm2-ptqtp2-g64"
    if not (path / "manifest.json").exists():
        print(f"quantizing SmolLM2-135M with {PTQTP} once (cached in {path}) ...", flush=True)
        c = compiler.compile(model, (ids,), target="reference", passes=PTQTP)
        c(ids)
        c.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="1,16,128")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    seqs = [int(s) for s in args.seqs.split(",")]
    model, tok = smollm2_135m()
    model.eval()
    ids = {s: torch.randint(0, tok.vocab_size, (1, s)) for s in seqs}
    example = torch.randint(0, tok.vocab_size, (1, 8))  # traced with a symbolic length (1 would be specialised)
    ours = {"tritium cpu fp32": compiler.compile(model, (example,), target="cpu"),
            "tritium cpu ptqtp (LUT)": compiler.load(quantized(model, example), target="cpu")}
    rows = []
    for s in seqs:
        with torch.no_grad():
            base = median_latency(lambda: model(ids[s], use_cache=False), args.reps)
        rows.append({"seq": s, "method": "torch eager fp32", "ms": base * 1e3, "tok_s": s / base, "speedup": 1.0})
        for name, c in ours.items():
            t = median_latency(lambda: c(ids[s]), args.reps)
            rows.append({"seq": s, "method": name, "ms": t * 1e3, "tok_s": s / t, "speedup": base / t})
        for r in rows[-3:]:
            print(f"seq {s:4d}  {r['method']:<26} {r['ms']:9.1f} ms  {r['tok_s']:8.1f} tok/s  x{r['speedup']:.2f}",
                  flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = Path(args.doc)
    png = doc.parent / "model_cpu.png"
    seqs = list(dict.fromkeys(r["seq"] for r in rows))
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    grouped_bars(ax, seqs, names, lambda s, n: next(r["tok_s"] for r in rows if r["seq"] == s and r["method"] == n),
                 [f"seq {s}" for s in seqs])
    ax.set_ylabel("tokens / s (one forward pass)")
    ax.set_title("SmolLM2-135M forward on CPU")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    lines = ["## SmolLM2-135M forward on CPU (`bench/model_cpu.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, torch {torch.__version__} with "
             f"{torch.get_num_threads()} threads. One forward pass over `seq` tokens, no KV cache; median of "
             f"{args.reps}. ptqtp = `{PTQTP}`, packed by the CPU backend for the LUT kernels (its default int16 tables).", "",
             "| seq | method | ms | tokens/s | x vs torch eager fp32 |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['seq']} | {r['method']} | {r['ms']:.1f} | {r['tok_s']:.1f} | {r['speedup']:.2f} |" for r in rows]
    lines += ["", f"![tokens/s]({png.name})"]
    write_section(doc, "model_cpu", "\n".join(lines), "Performance")
    save_results("model_cpu", rows)
    print(f"wrote {doc} and {png}")


if __name__ == "__main__":
    main()
