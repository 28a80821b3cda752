"""The roofline analyzer against the clock: SmolLM2-135M's decode step on target="cpu", fp32 and ptqtp,
predicted on this machine's measured roofline (`--hardware this-machine`) and timed.

    python bench/roofline.py                    # 3 rounds, kv-len 128, 30 timed steps per round and config
    python bench/roofline.py --rounds 5 --kv-len 512 --repeat 50

Both step graphs are compiled once (the default pipeline, and `ptqtp`); then each round, per config, the
machine is measured (compiler.analyze.measure_this_machine), the decode step analyzed at that roofline and
profiled (compiler.analyze.profile: the plain native step and the step with per-node timers, interleaved).
Configs alternate within a round so that the machine's load hits both. Writes docs/roofline.md (section
roofline-decode), docs/roofline.png and bench/results/roofline.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, save_results, write_section  # noqa: E402  (bench/common.py)

CONFIGS = {"fp32": None, "ptqtp": "ptqtp"}

PATTERNS = r"""
/* each thread streams its half of `rows` rows of w [rows, D] (the next block of rows each run, so they come
   from DRAM): kind 0 as one contiguous range, kind 1 four rows at a time, 8 floats of each per step (the f32
   GEMV's order, dense_kernel.TEAM's gemv_rows), kind 2 the GEMV itself (gemv_f32, one token); a barrier after
   each run, thread 0 stamps the time */
static double contiguous(const float *w, int64_t lo, int64_t hi) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = lo; i + 32 <= hi; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(w + i)); a1 = _mm256_add_ps(a1, _mm256_loadu_ps(w + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(w + i + 16)); a3 = _mm256_add_ps(a3, _mm256_loadu_ps(w + i + 24));
    }
    float b[8]; _mm256_storeu_ps(b, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); return b[0];
}
static double four_rows(const float *w, int64_t D, int64_t r0, int64_t r1) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t o = r0; o + 4 <= r1; o += 4) {
        const float *w0 = w + o * D, *w1 = w0 + D, *w2 = w1 + D, *w3 = w2 + D;
        for (int64_t i = 0; i + 8 <= D; i += 8) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(w0 + i)); a1 = _mm256_add_ps(a1, _mm256_loadu_ps(w1 + i));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(w2 + i)); a3 = _mm256_add_ps(a3, _mm256_loadu_ps(w3 + i));
        }
    }
    float b[8]; _mm256_storeu_ps(b, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); return b[0];
}
void patterns(int kind, const float *w, int64_t D, int64_t rows, int64_t total, const float *x, float *y, int samples,
              double *st) {
    volatile double sink = 0;
    #pragma omp parallel
    {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        double acc = 0;
        #pragma omp barrier
        if (t == 0) st[0] = omp_get_wtime();
        for (int s = 0; s < samples; s++) {
            const float *base = w + (s % (total / rows)) * rows * D;
            const int64_t r0 = rows * t / T / 16 * 16, r1 = t == T - 1 ? rows : rows * (t + 1) / T / 16 * 16;
            if (kind == 0) acc += contiguous(base, r0 * D, r1 * D);
            else if (kind == 1) acc += four_rows(base, D, r0, r1);
            else gemv_f32(1, x, 1, D, base, rows, NULL, y);
            #pragma omp barrier
            if (t == 0) st[s + 1] = omp_get_wtime();
        }
        #pragma omp critical
        sink += acc;
    }
}
"""


def access_patterns(D: int = 576, rows: int = 3072, samples: int = 64) -> dict[str, float]:
    """GB/s (fastest of `samples` runs, both threads) reading [rows, D] f32 blocks of a 450 MB weight three ways."""
    import ctypes

    import numpy as np

    from backends.cpu import cc
    from backends.cpu.ckernel import PRELUDE
    from backends.cpu.dense_kernel import TEAM

    lib = cc.build(PRELUDE + TEAM + PATTERNS, "roofline_patterns")
    p = ctypes.c_void_p
    lib.patterns.argtypes = [ctypes.c_int, p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, p, p, ctypes.c_int, p]
    total = 64 * rows
    w = np.ones((total, D), np.float32)
    x, y, st = np.ones(D, np.float32), np.zeros(rows, np.float32), np.zeros(samples + 1)
    out = {}
    for kind, name in enumerate(["one contiguous range per thread", "four rows at a time (the GEMV's order)",
                                 "the f32 GEMV kernel (gemv_f32)"]):
        lib.patterns(kind, w.ctypes.data, D, rows, total, x.ctypes.data, y.ctypes.data, samples, st.ctypes.data)
        out[name] = rows * D * 4 / float(np.diff(st).min()) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()

    import compiler
    from compiler import analyze as an
    from frontends.hf_models import smollm2_135m

    model, _ = smollm2_135m()
    steps = {}
    for name, passes in CONFIGS.items():
        spec, _ = compiler.compile(model, target="cpu", passes=passes).generator.step_for(1, False)
        env = an.step_env(spec.graph, 1, args.kv_len)
        steps[name] = (spec, env, an.step_inputs(spec.graph, env))
        print(f"// compiled {name}", file=sys.stderr)
    runs: dict[str, list] = {k: [] for k in CONFIGS}
    for r in range(args.rounds):
        for name, (spec, env, inputs) in steps.items():
            hw = an.measure_this_machine()
            a = an.analyze(spec.graph, env, hw, f"SmolLM2 {name} decode step")
            an.attach(a, an.profile(spec, inputs, args.repeat))
            runs[name].append(a)
            print(f"// round {r + 1} {name}: predicted {a.total.time_s * 1e3:.2f} ms, measured "
                  f"{a.measured['step (native call, median)'] * 1e3:.2f} ms; {hw.bandwidth / 1e9:.1f} GB/s, "
                  f"f32 {hw.peak['f32'] / 1e9:.0f} GFLOP/s", file=sys.stderr)

    def ratio(a: an.Analysis, what: str = "sum of the per-node fastest") -> float:
        return a.measured[what] / a.total.time_s

    rows, text = [], []
    text.append(f"Measured by `python bench/roofline.py --rounds {args.rounds} --kv-len {args.kv_len} --repeat {args.repeat}` "
                f"on {machine()}, {time.strftime('%Y-%m-%d')}, while other jobs shared the machine (load average "
                f"{os.getloadavg()[0]:.1f} on 2 cores at the end). Decode step: batch 1, one new token attending to "
                f"{args.kv_len} positions. Each round measures the machine (`--hardware this-machine`), predicts the step "
                f"on that roofline and times {args.repeat} steps, the plain native step and the step with per-node timers "
                "interleaved. 'per-node fastest' sums each node's fastest run: the step as it runs when no other process "
                "takes its cores; the medians show what the load did.\n")
    text.append("| config | round | DRAM GB/s | f32 GFLOP/s | int8 Gop/s | predicted ms | per-node fastest, summed ms | "
                "fastest step ms | per-node medians, summed ms | median step ms | per-node fastest / predicted |")
    text.append("|---|---|---|---|---|---|---|---|---|---|---|")
    chosen = {}
    for name, rs in runs.items():
        for i, a in enumerate(rs):
            m = a.measured
            text.append(f"| {name} | {i + 1} | {a.hardware.bandwidth / 1e9:.1f} | {a.hardware.peak['f32'] / 1e9:.0f} | "
                        f"{a.hardware.peak['int8'] / 1e9:.0f} | {a.total.time_s * 1e3:.2f} | "
                        f"{m['sum of the per-node fastest'] * 1e3:.2f} | {m['step (native call, fastest)'] * 1e3:.2f} | "
                        f"{m['sum of the per-node medians'] * 1e3:.2f} | {m['step (native call, median)'] * 1e3:.2f} | "
                        f"{ratio(a):.2f} |")
            rows.append({"config": name, "round": i + 1, "bandwidth": a.hardware.bandwidth, "peak": a.hardware.peak,
                         "predicted_s": a.total.time_s, **{k: v for k, v in m.items()},
                         "kinds": {k: {"count": w.count, "predicted_s": w.time_s, "median_s": ms, "bound": w.bound,
                                       "fastest_s": sum(r.fastest_s or 0.0 for r in a.rows if r.op == k),
                                       "flops": w.flops, "int_ops": w.int_ops, "weight_bytes": w.weight_bytes,
                                       "act_bytes": w.act_bytes, "written": w.written}
                                   for k, (w, ms) in a.rollup(lambda r: r.op).items()}})
        chosen[name] = sorted(rs, key=ratio)[len(rs) // 2]
    for name, a in chosen.items():
        text.append(f"\n**{name}** (the median round: predicted {a.total.time_s * 1e3:.2f} ms, per-node fastest "
                    f"{a.measured['sum of the per-node fastest'] * 1e3:.2f} ms, {ratio(a):.2f}x). Per op kind, by measured "
                    "time (node times: thread 0's, the barrier before a shared op included):\n")
        text.append("| op kind | nodes | GFLOP | G int op | weight MB | activation MB | written MB | bound | predicted ms | "
                    "fastest ms | median ms | fastest / predicted |")
        text.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        fastest = {}
        for r in a.rows:
            fastest[r.op] = fastest.get(r.op, 0.0) + (r.fastest_s or 0.0)
        for k, (w, ms) in sorted(a.rollup(lambda r: r.op).items(), key=lambda kv: -fastest[kv[0]]):
            if not (w.count or ms):
                continue
            rat = f"{fastest[k] / w.time_s:.2f}" if w.time_s else "-"
            text.append(f"| {k} | {w.count} | {w.flops / 1e9:.4f} | {w.int_ops / 1e9:.4f} | {w.weight_bytes / 1e6:.2f} | "
                        f"{w.act_bytes / 1e6:.3f} | {w.written / 1e6:.3f} | {w.bound} | {w.time_s * 1e3:.3f} | "
                        f"{fastest[k] * 1e3:.3f} | {(ms or 0) * 1e3:.3f} | {rat} |")
    pats = access_patterns()
    text.append("\nReading a 576-column f32 weight (blocks of 3072 rows, from DRAM; both threads, fastest of 64 runs; "
                "`access_patterns()` in bench/roofline.py):\n")
    text.append("| access | GB/s |")
    text.append("|---|---|")
    text += [f"| {k} | {v:.1f} |" for k, v in pats.items()]
    med = {name: statistics.median(ratio(a) for a in rs) for name, rs in runs.items()}
    text.append("\nMedian over rounds of per-node fastest / predicted: " + ", ".join(f"{k} {v:.2f}x" for k, v in med.items())
                + "; of the fastest step / predicted: " + ", ".join(
                    f"{k} {statistics.median(ratio(a, 'step (native call, fastest)') for a in rs):.2f}x" for k, rs in runs.items())
                + ".")
    write_section(ROOT / "docs" / "roofline.md", "roofline-decode", "\n".join(text), "Roofline analysis")
    an.plot(list(chosen.values()), str(ROOT / "docs" / "roofline.png"), fastest=True)
    save_results("roofline", rows, kv_len=args.kv_len, repeat=args.repeat, access_patterns=pats)
    print("\n".join(text))


if __name__ == "__main__":
    main()
