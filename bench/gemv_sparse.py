"""Sparse-input GEMV on the CPU: our sparse_input_linear kernel against our dense fp32 GEMV, one run.

    python bench/gemv_sparse.py                       # 4096x4096, batch 1, 2 threads (about a minute)
    python bench/gemv_sparse.py --batches 1,2,3,4,8   # where masking x and calling BLAS takes over
    python bench/gemv_sparse.py --decode 64           # and SmolLM2-135M decode tokens/s, dense vs sparse

Dense is what target="cpu" runs for an f32 linear, our C GEMV (dense_kernel.py), the baseline, and np.matmul (OpenBLAS). Sparse
is the C kernel that `pack_sparse` lowers `linear(sparsify(x, @colnorm), @w)` to, in top-k mode with a
WINA-like positive scale: its time includes scoring and selecting the kept inputs. Both cycle through
enough distinct matrices to exceed the L3 cache 4x, so every call streams its weights from memory, as
decoding does. Reported: the median time per call over rounds, and the speed-up over dense measured in
the same run. With --decode N: SmolLM2-135M's decode speed on target="cpu" (median step over N greedy
tokens after a 32-token prompt), dense fp32 against wina and teal at 50% sparsity. Writes a table and a
plot to docs/performance.md (section gemv_sparse), docs/gemv_sparse.png and bench/results/gemv_sparse.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.cpu import cc, sparse_kernel  # noqa: E402
from compiler.api import DEFAULT_PASSES  # noqa: E402
from backends.cpu.dense_kernel import DenseLinear  # noqa: E402
from backends.cpu.sparse_kernel import SparseInputLinear  # noqa: E402

from common import machine, save_results, write_section  # noqa: E402  (bench/common.py)
from gemv_cpu import bench, l3_bytes, read_bandwidth, rotation  # noqa: E402  (bench/gemv_cpu.py)

SPARSITIES = (0.0, 0.25, 0.4, 0.5, 0.65)
DENSE = "dense fp32 (ours, C)"  # the baseline: what target="cpu" runs for an f32 linear (dense_kernel.py)
# the default pipeline, then the sparsity pass and cse (teal's q/k/v and gate/up then share one sparsify, and fuse)
DECODE = {"fp32 (dense)": DEFAULT_PASSES, "wina 0.5": f"{DEFAULT_PASSES},wina{{sparsity=0.5}},cse,dce",
          "wina 0.5 shared": f"{DEFAULT_PASSES},wina{{sparsity=0.5,shared=true}},cse,dce",
          "teal 0.5": f"{DEFAULT_PASSES},teal{{sparsity=0.5}},cse,dce"}


def methods(D: int, out: int, batch: int, sparsity: float, l3: int, rng: np.random.Generator,
            paths: bool) -> dict[str, list]:
    """name -> the calls of one rotation. paths: also the sparse kernel forced onto each of its two paths."""
    n = rotation(D * out * 4, l3)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    colnorm = (np.abs(rng.standard_normal(D)) + 0.5).astype(np.float32)  # positive, like WINA's column norms
    keep = D - int(round(sparsity * D))  # what wina{sparsity=...} asks for
    W = [rng.standard_normal((out, D), dtype=np.float32) for _ in range(n)]
    kd = DenseLinear(D, out)
    res = {DENSE: [lambda w=w: kd(x, w) for w in W], "dense fp32 (np.matmul)": [lambda w=w: np.matmul(x, w.T) for w in W]}
    wts = [np.ascontiguousarray(w.T) for w in W]
    del W
    ks = [SparseInputLinear(D, out, keep, 0.0) for _ in wts]  # one kernel per layer, as the CPU backend has
    res["sparse (ours)"] = [lambda k=k, wt=wt: k(x, colnorm, wt) for k, wt in zip(ks, wts)]
    if paths:
        def forced(rows: int) -> list:
            def call(k: SparseInputLinear, wt: np.ndarray) -> np.ndarray:
                saved, sparse_kernel.BLAS_ROWS = sparse_kernel.BLAS_ROWS, rows
                try:
                    return k(x, colnorm, wt)
                finally:
                    sparse_kernel.BLAS_ROWS = saved
            return [lambda k=k, wt=wt: call(k, wt) for k, wt in zip(ks, wts)]
        res["sparse: stream kept rows (C)"] = forced(1 << 30)
        res["sparse: mask x + BLAS"] = forced(0)
    return res


def decode(tokens: int, rounds: int) -> list[dict]:
    """SmolLM2-135M decode tokens/s on target="cpu": each configuration compiled and warmed up once, then
    `rounds` generate calls per configuration, interleaved (decode times drift by 10% over a minute here)."""
    import torch

    import compiler
    from frontends.hf_models import smollm2_135m

    model, _ = smollm2_135m()
    ids = torch.randint(0, 1000, (1, 32), generator=torch.Generator().manual_seed(0))
    compiled = {name: compiler.compile(model, target="cpu", passes=passes) for name, passes in DECODE.items()}
    for c in compiled.values():
        c.generate(ids, max_new_tokens=2)  # trace, build, compile the kernels
    speeds: dict[str, list[float]] = {name: [] for name in DECODE}
    for _ in range(rounds):
        for name, c in compiled.items():
            c.generate(ids, max_new_tokens=tokens)
            speeds[name].append(1 / float(np.median(c.generator.stats.step_s)))
    rows = [{"config": name, "passes": DECODE[name], "decode_tok_s": float(np.median(v)), "rounds": v}
            for name, v in speeds.items()]
    for r in rows:
        print(f"SmolLM2-135M decode  {r['config']:<14} {r['decode_tok_s']:6.1f} tokens/s  "
              f"({', '.join(f'{v:.1f}' for v in r['rounds'])})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x4096", help="OUTxIN")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="passes through the rotation per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each timing every method in turn")
    ap.add_argument("--decode", type=int, default=0, help="also SmolLM2-135M decode speed over this many tokens")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    out, D = (int(v) for v in args.shape.split("x"))
    l3 = l3_bytes()
    rng = np.random.default_rng(0)
    rows = []
    SparseInputLinear(D, out, 1, 0.0)  # load the kernel's OpenMP runtime first: threadpoolctl limits what is loaded
    with threadpool_limits(limits=args.threads):  # BLAS and the kernel's OpenMP team alike
        bw = read_bandwidth()
        print(f"{machine()}; L3 {l3 >> 20} MiB; read bandwidth {bw / 1e9:.1f} GB/s; {args.threads} threads; "
              f"kernel {sorted(cc.features())}")
        for batch in (int(b) for b in args.batches.split(",")):
            for s in (float(v) for v in args.sparsities.split(",")):
                ms = methods(D, out, batch, s, l3, rng, paths=batch > 1)
                times: dict[str, list[float]] = {name: [] for name in ms}
                for _ in range(args.rounds):
                    for name, calls in ms.items():
                        time.sleep(0.3)  # until the last method's idle threads sleep: OpenBLAS's spin ~0.1 s
                        times[name].append(bench(calls, args.reps))
                base = float(np.median(times[DENSE]))
                for name, ts in times.items():
                    t = float(np.median(ts))
                    r = {"shape": f"{out}x{D}", "batch": batch, "sparsity": s, "method": name, "ms": t * 1e3,
                         "speedup": base / t, "weight_gbs": D * out * 4 * (1 - s if "sparse" in name else 1) / t / 1e9}
                    rows.append(r)
                    print(f"{r['shape']} b{batch} sparsity {s:4.2f}  {name:<30} {r['ms']:8.3f} ms  x{r['speedup']:5.2f}"
                          f"  {r['weight_gbs']:5.1f} GB/s of weights read", flush=True)
                del ms
        decoded = decode(args.decode, args.rounds) if args.decode else []
    write(rows, decoded, args, bw, l3)


def write(rows: list[dict], decoded: list[dict], args: argparse.Namespace, bw: float, l3: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = Path(args.doc)
    png = doc.parent / "gemv_sparse.png"
    b1 = [r for r in rows if r["batch"] == min(r["batch"] for r in rows)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in b1):
        pts = [(r["sparsity"], r["ms"]) for r in b1 if r["method"] == name]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("sparsity (fraction of inputs dropped)")
    ax.set_ylabel("ms per call")
    ax.set_ylim(bottom=0)
    ax.set_title(f"GEMV {b1[0]['shape']}, batch {b1[0]['batch']}, fp32, weights from memory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    lines = ["## Sparse-input GEMV (`bench/gemv_sparse.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}: L3 {l3 >> 20} MiB, read bandwidth {bw / 1e9:.1f} GB/s "
             f"(torch sum over 512 MB), {args.threads} threads for BLAS and for the kernel, kernel {sorted(cc.features())} via "
             f"`{cc.compiler()}`. Dense: our C GEMV (`backends/cpu/dense_kernel.py`), what target=\"cpu\" runs for an f32 "
             "linear, the baseline of \"x vs dense\"; and `np.matmul(x, w.T)` (OpenBLAS) for reference. Sparse: the "
             "`sparse_input_linear` kernel (`pack_sparse` after `wina`), top-k mode; its time includes scoring and "
             "selecting the kept inputs. Weights rotate through enough distinct matrices to exceed the L3 cache 4x. "
             f"Median of {args.rounds} rounds of {args.reps} passes; GB/s counts the weight bytes each call needs "
             "(the kept rows for sparse).", "",
             "| shape (out x in) | batch | sparsity | method | ms | x vs dense | weight GB/s |",
             "|---|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['shape']} | {r['batch']} | {r['sparsity']:.2f} | {r['method']} | {r['ms']:.3f} | {r['speedup']:.2f} | "
              f"{r['weight_gbs']:.1f} |" for r in rows]
    if decoded:
        lines += ["", f"SmolLM2-135M decode on target=\"cpu\", same run (`--decode {args.decode}`): per configuration the "
                  f"median over {args.rounds} interleaved rounds of the median step over {args.decode} greedy tokens after a "
                  "32-token prompt. wina/teal sparsify the inputs of q/k/v, gate/up and down; the CPU lowering runs them "
                  "with this kernel (teal's q/k/v and gate/up share a mask, and so do wina's with shared=true, so they fuse "
                  "first: 3 kernels a layer; plain wina's have one mask each: 6). Dense linears run the C GEMV "
                  "(backends/cpu/dense_kernel.py).", "",
                  "| configuration | passes | decode tokens/s | x vs fp32 |", "|---|---|---:|---:|"]
        lines += [f"| {r['config']} | `{r['passes']}` | {r['decode_tok_s']:.1f} | "
                  f"{r['decode_tok_s'] / decoded[0]['decode_tok_s']:.2f} |" for r in decoded]
    lines += ["", f"![sparse GEMV time against sparsity]({png.name})"]
    write_section(doc, "gemv_sparse", "\n".join(lines), "Performance")
    save_results("gemv_sparse", rows, read_bw=bw, threads=args.threads, decode=decoded)
    print(f"wrote {doc} and {png}")


if __name__ == "__main__":
    main()
