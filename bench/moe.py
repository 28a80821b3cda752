"""MoE decode cost on target="cpu": a Mixtral-style model with 8 experts, 2 active, against a dense model
with the same active parameters (a Mistral-style FFN of twice the expert's width), same attention.

    python bench/moe.py                      # 5 interleaved rounds, 64 new tokens each, every core
    python bench/moe.py --rounds 3 --tokens 32 --threads 1

Both are random-weight transformers models (no download), float32, compiled with the default pipeline.
Per round and model: `compiled.generate` greedy over a 16-token prompt; the decode step time is the median
of the steps after the first. Rounds alternate the two models so that machine noise hits both; the ratio
reported is the median over rounds of each round's MoE / dense. The bar (issue 22): MoE <= 1.3x dense.
Writes docs/performance.md (section moe-<threads>t) and bench/results/moe-<threads>t.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, save_results, write_section  # noqa: E402  (bench/common.py)

SHAPE = dict(vocab_size=4096, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
             max_position_embeddings=1024, attn_implementation="sdpa", bos_token_id=1, eos_token_id=2)
EXPERTS, ACTIVE, EXPERT_WIDTH = 8, 2, 1024


def models():
    import torch
    import transformers as tf

    torch.manual_seed(0)
    moe = tf.MixtralForCausalLM(tf.MixtralConfig(**SHAPE, intermediate_size=EXPERT_WIDTH, num_local_experts=EXPERTS,
                                                 num_experts_per_tok=ACTIVE)).eval()
    dense = tf.MistralForCausalLM(tf.MistralConfig(**SHAPE, intermediate_size=ACTIVE * EXPERT_WIDTH)).eval()
    return {"moe": moe, "dense": dense}


def params(model, active: bool) -> int:
    """Parameters read per token: a MoE's k active experts of E (the router included)."""
    n = 0
    for name, p in model.named_parameters():
        n += p.numel() * (ACTIVE / EXPERTS if active and ".experts." in name else 1)
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="OpenMP threads of the kernels (OMP_NUM_THREADS)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ and bench/results/ alone")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch or any kernel library loads OpenMP
    import torch

    import compiler

    load = os.getloadavg()[0]  # other processes on the machine: the rounds share it with them
    ms = models()
    compiled = {k: compiler.compile(m, target="cpu") for k, m in ms.items()}
    prompt = torch.randint(3, SHAPE["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    for c in compiled.values():  # build the step graphs and kernels once, outside the timing
        c.generate(prompt, max_new_tokens=2)
    steps: dict[str, list[float]] = {k: [] for k in ms}
    for r in range(args.rounds):
        for k in (["moe", "dense"] if r % 2 == 0 else ["dense", "moe"]):
            compiled[k].generate(prompt, max_new_tokens=args.tokens)
            s = compiled[k].generator.stats.step_s
            steps[k].append(float(np.median(s)))
            print(f"round {r} {k:5s}: {1e3 * steps[k][-1]:.2f} ms/step", flush=True)
    med = {k: float(np.median(v)) for k, v in steps.items()}
    ratio = float(np.median(np.array(steps["moe"]) / np.array(steps["dense"])))
    rows = [{"model": k, "total_params": params(ms[k], False), "active_params": params(ms[k], True),
             "step_ms": 1e3 * med[k], "rounds_ms": [1e3 * x for x in steps[k]]} for k in ms]
    print(f"MoE / dense decode step: {ratio:.2f}x (bar: <= 1.3x)")
    if args.no_write:
        return
    save_results(f"moe-{args.threads}t", rows, ratio=ratio, rounds=args.rounds, tokens=args.tokens, threads=args.threads,
                 load=load)
    table = ["| model | parameters | active per token | decode step (median of rounds) |", "|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['model']} | {row['total_params'] / 1e6:.1f}M | {row['active_params'] / 1e6:.1f}M | "
                     f"{row['step_ms']:.2f} ms |")
    text = "\n".join([
        f"## MoE decode cost, {args.threads} thread(s) (`bench/moe.py --threads {args.threads}`)", "",
        f"Mixtral-style, {EXPERTS} experts of width {EXPERT_WIDTH}, {ACTIVE} active, against a Mistral-style dense "
        f"model of FFN width {ACTIVE * EXPERT_WIDTH} (the same active parameters); hidden {SHAPE['hidden_size']}, "
        f"{SHAPE['num_hidden_layers']} layers, vocab {SHAPE['vocab_size']}, float32, target=\"cpu\", {args.threads} "
        f"OpenMP thread(s). {args.rounds} interleaved rounds of {args.tokens} greedy tokens; {machine()}, "
        f"{time.strftime('%Y-%m-%d')}, load average {load:.1f} at the start (other jobs shared the cores).", "",
        *table, "",
        f"MoE / dense (median of the rounds' ratios): **{ratio:.2f}x** (bar: <= 1.3x). The native step runs the "
        "router (softmax, argtopk, gather) and `moe` in C (backends/cpu/native/moe.py): each token computes its "
        "selected experts only and reads only their weights.",
    ])
    write_section(ROOT / "docs" / "performance.md", f"moe-{args.threads}t", text, "Performance")


if __name__ == "__main__":
    main()
