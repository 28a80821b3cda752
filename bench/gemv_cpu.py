"""CPU GEMV/GEMM speed: our LUT kernels against torch fp32/bf16 and dequantize-then-matmul, one run.

    python bench/gemv_cpu.py                  # all shapes, batch 1 and 8 (a few minutes)
    python bench/gemv_cpu.py --shapes 4096x4096 --batches 1

Every method cycles through enough distinct weight matrices that they exceed the L3 cache several
times over, so each call streams its weights from memory, as decoding an LLM does. Reported: the
median time per call, the ratio to torch fp32 measured in the same run, and the weight bytes per
second as a fraction of this machine's read bandwidth (torch sum over a 512 MB tensor, same run).
Writes a table and a plot to docs/performance.md (section gemv_cpu) and docs/gemv_cpu.png.
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

from backends.cpu import cc  # noqa: E402
from backends.cpu.lut_kernel import LutLinear  # noqa: E402
from ir.ops.quant.lut import pairs, tiles  # noqa: E402

from common import grouped_bars, machine, save_results, write_section  # noqa: E402  (bench/common.py)

GROUP = 64  # trit-plane / int4 scale group (ptqtp{group=64}, rtn{group=64})


def l3_bytes() -> int:
    try:
        for idx in range(8):
            p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{idx}")
            if (p / "level").read_text().strip() == "3":
                s = (p / "size").read_text().strip()
                return int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}[s[-1]]
    except (OSError, ValueError, KeyError):
        pass
    return 32 << 20


def read_bandwidth() -> float:
    """Bytes/s of torch.sum over a 512 MB f32 tensor (best of 5): the read bandwidth weights stream at."""
    a = torch.ones(128 << 20)
    a.sum()
    best = min(_time(lambda: a.sum(), 1) for _ in range(5))
    return a.numel() * 4 / best


def _time(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def bench(calls: list, reps: int) -> float:
    """Median seconds per call over `reps` passes through the rotation (after one warm-up pass)."""
    for c in calls:
        c()
    per = [_time(lambda: [c() for c in calls], 1) / len(calls) for _ in range(reps)]
    return float(np.median(per))


def rotation(nbytes: int, l3: int) -> int:
    """How many distinct matrices of `nbytes` make every pass stream at least 4x the L3 cache."""
    return max(2, -(-4 * l3 // nbytes))


def methods(out: int, cols: int, batch: int, l3: int, rng: np.random.Generator) -> dict[str, tuple[list, int]]:
    """name -> (calls of one rotation, weight bytes per call)."""
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    xt = torch.from_numpy(x)
    res: dict[str, tuple[list, int]] = {}

    n = rotation(out * cols * 4, l3)
    Ws = [torch.randn(out, cols) for _ in range(n)]
    res["torch fp32"] = ([lambda W=W: torch.nn.functional.linear(xt, W) for W in Ws], out * cols * 4)
    del Ws
    n = rotation(out * cols * 2, l3)
    Wb = [torch.randn(out, cols).to(torch.bfloat16) for _ in range(n)]
    xb = xt.to(torch.bfloat16)
    res["torch bf16"] = ([lambda W=W: torch.nn.functional.linear(xb, W) for W in Wb], out * cols * 2)
    del Wb

    # int4 codes packed two per byte + f16 scales per group: unpack and scale in torch, then BLAS
    ng = -(-cols // GROUP)
    n = rotation(out * cols // 2, l3)
    packed = [(torch.randint(0, 256, (out, cols // 2), dtype=torch.uint8),
               (torch.rand(out, ng) * 0.01).to(torch.float16)) for _ in range(n)]

    def dequant_matmul(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        q = torch.stack([b & 15, b >> 4], dim=-1).reshape(out, cols).to(torch.float32) - 8.0
        W = (q.reshape(out, -1, GROUP) * s.to(torch.float32)[..., None]).reshape(out, cols)
        return torch.nn.functional.linear(xt, W)

    res["dequant int4 + matmul (torch)"] = ([lambda p=p: dequant_matmul(*p) for p in packed],
                                            out * cols // 2 + out * ng * 2)
    del packed

    # LUT kernels: random packed bytes are valid bit-planes; scales as the pass stores them
    for name, P, offs, table in (("LUT ternary (1 plane, i8 tables)", 2, False, "i8"),
                                 ("LUT trit-planes (2 planes, i8 tables)", 4, False, "i8"),
                                 ("LUT trit-planes (2 planes, i16 tables)", 4, False, "i16"),
                                 ("LUT int4 (4 bit-planes, i8 tables)", 4, True, "i8"),
                                 ("LUT int4 (4 bit-planes, i16 tables)", 4, True, "i16")):
        bits_bytes = P * tiles(out) * pairs(cols) * 64
        scale_bytes = P * out * ng * 2 + (out * ng * 4 if offs else 0)  # f16 coefficients (+ f32 offsets) streamed
        n = rotation(bits_bytes, l3)
        coef = (rng.standard_normal((P, ng, out)) * 0.01).astype(np.float16).astype(np.float32)  # f16 scales, as passes store
        off = (rng.standard_normal((ng, out)) * 0.01).astype(np.float32) if offs else np.zeros((ng, out), np.float32)
        bs = [rng.integers(0, 256, (P, tiles(out), pairs(cols), 64), dtype=np.uint8) for _ in range(n)]
        # one kernel object per matrix, as the CPU backend has one per layer (each pads its scales once)
        ks = [LutLinear(P, out, cols, GROUP, 64, table, has_offs=offs, coef_f16=True) for _ in bs]
        res[name] = ([lambda b=b, k=k, c=coef, o=off: k(x, b, c, o) for b, k in zip(bs, ks)], bits_bytes + scale_bytes)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008", help="OUTxIN,... (rows x columns)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    if "avx2" not in cc.features():
        print("note: no AVX2 on this CPU (or compiler): the LUT kernels run their portable C path", file=sys.stderr)
    torch.set_num_threads(torch.get_num_threads())
    l3, bw = l3_bytes(), read_bandwidth()
    print(f"{machine()}; L3 {l3 >> 20} MiB; read bandwidth {bw / 1e9:.1f} GB/s; torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    rows = []
    for shape in args.shapes.split(","):
        out, cols = (int(v) for v in shape.split("x"))
        for batch in (int(b) for b in args.batches.split(",")):
            ms = methods(out, cols, batch, l3, rng)
            times = {name: bench(calls, args.reps) for name, (calls, _) in ms.items()}
            base = times["torch fp32"]
            for name, (_, nbytes) in ms.items():
                t = times[name]
                r = {"shape": f"{out}x{cols}", "batch": batch, "method": name, "ms": t * 1e3,
                     "speedup": base / t, "gbs": nbytes / t / 1e9, "bw_frac": nbytes / t / bw}
                rows.append(r)
                print(f"{r['shape']:>10} b{batch}  {name:<28} {r['ms']:8.3f} ms  x{r['speedup']:5.2f} vs fp32  "
                      f"{r['gbs']:6.1f} GB/s ({r['bw_frac']:.0%} of read bw)", flush=True)
            del ms
    write(rows, args, bw, l3)


def write(rows: list[dict], args: argparse.Namespace, bw: float, l3: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = Path(args.doc)
    png = doc.parent / "gemv_cpu.png"
    cases = list(dict.fromkeys((r["shape"], r["batch"]) for r in rows))
    names = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 5))
    grouped_bars(ax, cases, names, lambda c, n: next(r["speedup"] for r in rows if (r["shape"], r["batch"]) == c
                                                     and r["method"] == n), [f"{s}\nbatch {b}" for s, b in cases])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("speed-up over torch fp32 (same run)")
    ax.set_title("CPU GEMV/GEMM, weights streamed from memory (L3-exceeding rotation)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    lines = ["## CPU GEMV (`bench/gemv_cpu.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}: L3 {l3 >> 20} MiB, read bandwidth "
             f"{bw / 1e9:.1f} GB/s (torch sum over 512 MB), torch {torch.__version__} with {torch.get_num_threads()} "
             f"threads, LUT kernels {sorted(cc.features())} via `{cc.compiler()}`. Weights rotate through enough "
             "distinct matrices to exceed the L3 cache 4x. Scales per group of 64 columns; LUT tables quantized per 64 "
             "activations: i8 as T-MAC, i16 (the CPU backend's default, ~1e-5 relative) with twice the lookups. "
             "Weight GB/s counts the bytes each call streams: torch its fp32/bf16 matrix, dequant the packed int4 codes "
             "and f16 scales, LUT the packed bit-planes (1 bit per weight per plane) and the f16 coefficients "
             "(+ f32 offsets for int4).", "",
             "| shape (out x in) | batch | method | ms | x vs torch fp32 | weight GB/s | of read bandwidth |",
             "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['batch']} | {r['method']} | {r['ms']:.3f} | {r['speedup']:.2f} | {r['gbs']:.1f} | "
              f"{r['bw_frac']:.0%} |" for r in rows]
    lines += ["", f"![speed-up over torch fp32]({png.name})"]
    write_section(doc, "gemv_cpu", "\n".join(lines), "Performance")
    save_results("gemv_cpu", rows, read_bw=bw)
    print(f"wrote {doc} and {png}")


if __name__ == "__main__":
    main()
