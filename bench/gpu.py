"""The Triton backend on a real GPU: kernels and whole models against PyTorch in the same run.

    python bench/gpu.py --out DIR          # on a CUDA machine: writes DIR/gpu.json and DIR/gpu.md
    python bench/gpu.py --report DIR/gpu.json   # here: docs/performance.md (section gpu), docs/gpu.png

1. GEMV/GEMM, batch 1 and 16, weights 4096x4096: cuBLAS fp16 and fp32 (torch.nn.functional.linear)
   against our generated kernels: fp32 linear, ptqtp trit-planes decoded in the matmul's registers,
   LLM.int8(). Each row gives the latency (CUDA-event median, triton.testing.do_bench), the weight
   bytes read, and the fraction of the HBM bandwidth that a device-to-device copy reaches in this run.
2. Whole models, random weights (no model hub on the GPU machine): SmolLM2-135M's architecture (and,
   with --models smollm2,llama-1b, a Llama-shaped 1B), fp32, forward latency at batch 1 and 16 (16
   tokens), ours (target="cuda") against Hugging Face eager and torch.compile of it; our logits are
   checked against eager (max relative difference) on the way. The graphs are traced where our
   frontend runs (`--export` writes bench/graphs/) and rebuilt on the GPU machine from the IR text.
Needs a CUDA GPU (it exits with a message otherwise): the kernels' CPU checks live in tests/.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
               rms_norm_eps=1e-5)
CONFIGS: dict[str, dict] = {}
BATCHES, TOKENS = (1, 16), 16
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
                rms_norm_eps=1e-5)
CONFIGS.update({"smollm2": SMOLLM2, "llama-1b": LLAMA_1B})
GRAPHS = ROOT / "bench" / "graphs"


def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy, reads plus writes: the reachable HBM bandwidth."""
    import torch

    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms * 1e-3)


def graph(text: str, weights: dict[str, np.ndarray]):
    import ir

    g = ir.parse(text)
    g.weights.update(weights)
    return g


def gemv_graphs(n: int, k: int, group: int = 128) -> dict[str, tuple]:
    """name -> (graph, bytes of weights it reads): our three GEMVs of an [n, k] weight."""
    rng = np.random.default_rng(0)
    G = group
    cases = {
        "ours fp32": (f"graph @g(%x: f32[b, {k}]) {{\n param @w: f32[{n}, {k}]\n %y: f32[b, {n}] = linear(%x, @w)\n return %y\n}}",
                      {"w": (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)}, n * k * 4),
        "ours ptqtp (2 trit-planes)": (
            f"graph @g(%x: f32[b, {k}]) {{\n param @t: tern[2, {n}, {k}]\n param @a: f16[2, {n}, {k // G}]\n"
            f" %w: f32[{n}, {k}] = dequant_planes(@t, @a) {{group = {G}}}\n %y: f32[b, {n}] = linear(%x, %w)\n return %y\n}}",
            {"t": rng.integers(-1, 2, (2, n, k)).astype(np.int8),
             "a": (np.abs(rng.standard_normal((2, n, k // G))) * 0.02).astype(np.float16)}, 2 * n * k + 2 * n * (k // G) * 2),
        "ours int8 (LLM.int8)": (
            f"graph @g(%x: f32[b, {k}]) {{\n param @q: i8[{n}, {k}]\n param @s: f32[{n}]\n"
            f" %y: f32[b, {n}] = int8_linear(%x, @q, @s)\n return %y\n}}",
            {"q": rng.integers(-127, 128, (n, k)).astype(np.int8), "s": np.full(n, 0.05, np.float32)}, n * k + 4 * n),
    }
    return {name: (graph(t, w), nbytes) for name, (t, w, nbytes) in cases.items()}


def gemv_rows(n: int, k: int, peak: float) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from backends.triton import TritonBackend

    graphs = gemv_graphs(n, k)
    w32 = graphs["ours fp32"][0].weights["w"]
    exes = {name: (TritonBackend().build(g), nbytes) for name, (g, nbytes) in graphs.items()}
    rows = []
    for batch in (1, 16):
        x32 = torch.randn(batch, k, device="cuda")
        x16 = x32.half()
        W32 = torch.from_numpy(w32).cuda()
        W16 = W32.half()
        base = {"cuBLAS fp16": (lambda: F.linear(x16, W16), n * k * 2), "cuBLAS fp32": (lambda: F.linear(x32, W32), n * k * 4)}
        runs = {**base, **{name: ((lambda e=e: e.forward_torch(x32)), nb) for name, (e, nb) in exes.items()}}
        ref = F.linear(x32, W32)
        got = exes["ours fp32"][0].forward_torch(x32)[0]
        err = float((got - ref).abs().max() / ref.abs().max())
        for name, (fn, nbytes) in runs.items():
            ms = bench_ms(fn)
            rows.append({"kind": "gemv", "shape": f"{n}x{k}", "batch": batch, "impl": name, "ms": ms,
                         "weight_MB": nbytes / 1e6, "hbm_fraction": nbytes / (ms * 1e-3) / peak,
                         "max_rel_err_vs_fp32": err if name == "ours fp32" else None})
            print(f"  gemv {n}x{k} batch {batch:2d} {name:28s} {ms * 1e3:9.1f} us  {rows[-1]['hbm_fraction']:.2f} of HBM", flush=True)
    return rows


def export_graphs(out: Path, names: list[str]) -> None:
    """Trace the random-weight models here (the GPU machine's torch may not trace them the way ours
    does) and write, per batch size, the IR text and the parameters that are not the model's own
    (folded constants) as .npz; the GPU run takes every other weight from the model it builds."""
    import torch
    import transformers as tf

    import compiler
    import ir

    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**CONFIGS[name], attn_implementation="sdpa")).float().eval()
        own = model.state_dict()
        for batch in BATCHES:
            g = compiler.compile(model, (torch.zeros(batch, TOKENS, dtype=torch.long),), target="reference",
                                 dynamic=False).graph
            (out / f"{name}-b{batch}.ir").write_text(ir.print_graph(g))
            np.savez(out / f"{name}-b{batch}.npz", **{p: g.weights[p] for p in g.params if p not in own})
            print(f"wrote {out}/{name}-b{batch}.ir ({len(g.nodes)} nodes)")


def model_rows(name: str, graphs: Path, budget_s: float, t0: float) -> list[dict]:
    import torch
    import transformers as tf

    import ir
    from backends.triton import TritonBackend

    if time.time() - t0 > budget_s / 2:
        print(f"  {name}: skipped, past half the time budget", flush=True)
        return []
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**CONFIGS[name], attn_implementation="sdpa")).float().eval()
    own = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    model = model.cuda()
    compiled = torch.compile(model)
    rows = []
    for batch in BATCHES:
        if time.time() - t0 > budget_s:
            print(f"  {name}: time budget spent, batch {batch} skipped", flush=True)
            break
        g = ir.parse((graphs / f"{name}-b{batch}.ir").read_text())
        with np.load(graphs / f"{name}-b{batch}.npz", allow_pickle=False) as z:
            g.weights.update({p: (z[p] if p in z.files else own[p]) for p in g.params})
        t = time.time()
        exe = TritonBackend().build(g)
        x = torch.randint(0, CONFIGS[name]["vocab_size"], (batch, TOKENS), device="cuda")
        with torch.no_grad():
            want = model(x, use_cache=False).logits
            got = exe.forward_torch(x)[0]
            build_s = time.time() - t
            err = float((got - want).abs().max() / want.abs().max())
            impls = {"HF eager fp32": lambda: model(x, use_cache=False),
                     "torch.compile fp32": lambda: compiled(x, use_cache=False),
                     "ours (target=cuda) fp32": lambda: exe.forward_torch(x)}
            for impl, fn in impls.items():
                ms = bench_ms(fn)
                rows.append({"kind": "model", "model": name, "batch": batch, "tokens": TOKENS, "impl": impl, "ms": ms,
                             "max_rel_err_vs_eager": err if impl.startswith("ours") else None,
                             "build_s": build_s if impl.startswith("ours") else None})
                print(f"  {name} batch {batch:2d} {impl:26s} {ms:9.2f} ms" + (f"  (logits vs eager: {err:.2e})" if impl.startswith("ours") else ""), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| shape | batch | kernel | latency (µs) | weights (MB) | HBM fraction |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "gemv":
            out.append(f"| {r['shape']} | {r['batch']} | {r['impl']} | {r['ms'] * 1e3:.1f} | {r['weight_MB']:.1f} | {r['hbm_fraction']:.2f} |")
    out += ["", "| model | batch × tokens | implementation | latency (ms) | logits vs eager |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "model":
            e = r["max_rel_err_vs_eager"]
            out.append(f"| {r['model']} | {r['batch']} × {r['tokens']} | {r['impl']} | {r['ms']:.2f} | {'' if e is None else f'{e:.1e}'} |")
    return "\n".join(out)


def report(path: Path) -> None:
    """Write docs/performance.md's gpu section and docs/gpu.png from a results file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(ROOT / "bench"))
    from common import write_section

    res = json.loads(path.read_text())
    rows = res["rows"]
    text = (f"## GPU: Triton backend (bench/gpu.py)\n\nMeasured on {res['device']} ({res['date']}; torch {res['torch']}, "
            f"triton {res['triton']}); a device-to-device copy reached {res['copy_GBps']:.0f} GB/s (reads + writes).\n\n"
            + table(rows) + "\n")
    write_section(ROOT / "docs" / "performance.md", "gpu", text, "Performance")
    gem = [r for r in rows if r["kind"] == "gemv"]
    fig, ax = plt.subplots(figsize=(8, 4))
    impls = list(dict.fromkeys(r["impl"] for r in gem))
    batches = sorted({r["batch"] for r in gem})
    w = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        ax.bar([b + i * w for b in range(len(batches))],
               [next(r["ms"] * 1e3 for r in gem if r["impl"] == impl and r["batch"] == bt) for bt in batches], w, label=impl)
    ax.set_xticks([b + 0.4 - w / 2 for b in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("µs (lower is better)")
    ax.set_title(f"4096x4096 linear on {res['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "gpu.png", dpi=120)
    print(f"wrote docs/performance.md (section gpu) and docs/gpu.png from {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--report", type=Path, help="write the docs from a results file instead of measuring")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds: later model rows are skipped past it")
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--export", action="store_true", help="write the models' IR to bench/graphs (run where tracing works)")
    a = ap.parse_args()
    if a.report:
        return report(a.report)
    if a.export:
        return export_graphs(GRAPHS, a.models.split(","))
    import torch
    import triton

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; the kernels' checks without one are in tests/backends/triton "
                 "(TRITON_INTERPRET=1)")
    t0 = time.time()
    peak = copy_bandwidth()
    dev = torch.cuda.get_device_name()
    print(f"{dev}: device-to-device copy {peak / 1e9:.0f} GB/s", flush=True)
    rows = gemv_rows(4096, 4096, peak)
    for name in a.models.split(","):
        rows += model_rows(name, GRAPHS, a.budget, t0)
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"device": dev, "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
           "triton": triton.__version__, "copy_GBps": peak / 1e9, "rows": rows}
    (a.out / "gpu.json").write_text(json.dumps(res, indent=1))
    (a.out / "gpu.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
