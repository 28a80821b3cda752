"""How reproducible are LLM.int8() logits across implementations of the same graph? Issue 5 asks target="cuda"
to match the reference runtime within 1e-3 relative on the logits; this measures what the reference matches
against itself when only its BLAS kernels change, in one run:

    python bench/int8_reproducibility.py        # about 4 minutes on 2 cores

For SmolLM2-135M and all-MiniLM-L6-v2 (the prompts of tests/backends/triton/test_triton_models.py), fp32 and
`int8`, the reference runtime runs in a process of its own per OpenBLAS kernel set (OPENBLAS_CORETYPE:
Haswell, Sandybridge): the same sums in another order, so last-bit differences. Also target="cuda" in
Triton's interpreter against the Haswell reference. Relative difference: max |a - b| / max |b| over the
logits (MiniLM: the last hidden state). Writes a section into docs/notes/int8.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, save_results, write_section  # noqa: E402  (bench/common.py)

PIPELINES = {"fp32": None, "int8": "fold_transposes,int8,dce"}
CORES = ("Haswell", "Sandybridge")


def graph_and_args(model_name: str, quant: str):
    import compiler
    from frontends.hf_models import minilm_l6, smollm2_135m

    if model_name == "smollm2":
        model, tok = smollm2_135m()
        ids = tok("The capital of France is Paris. The capital of", return_tensors="pt")["input_ids"]
        ex, args = (ids,), [ids.numpy()]
    else:
        model, tok = minilm_l6()
        b = tok(["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog."], padding=True,
                return_tensors="pt")
        ex, args = (b["input_ids"], b["attention_mask"]), [b["input_ids"].numpy(), b["attention_mask"].numpy()]
    return compiler.compile(model, ex, target="reference", passes=PIPELINES[quant]).graph, args


def child(model_name: str, quant: str, target: str, out: str) -> None:
    """One run, in this process: the reference, or the Triton interpreter (TRITON_INTERPRET set by the parent)."""
    import ir

    g, args = graph_and_args(model_name, quant)
    if target == "cuda":
        from backends.triton import TritonBackend

        y = TritonBackend().build(g, "interpreter")(args)[0]
    else:
        y = ir.run(g, args)[0]
    np.save(out, y)


def run(model_name: str, quant: str, target: str, core: str, tmp: str) -> np.ndarray:
    out = os.path.join(tmp, f"{model_name}-{quant}-{target}-{core}.npy")
    env = {**os.environ, "OPENBLAS_CORETYPE": core, **({"TRITON_INTERPRET": "1"} if target == "cuda" else {})}
    subprocess.run([sys.executable, __file__, "--child", model_name, quant, target, out], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return np.load(out).astype(np.float64)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in ("smollm2", "minilm"):
            for quant in PIPELINES:
                t0 = time.perf_counter()
                base = run(model_name, quant, "reference", CORES[0], tmp)
                other = run(model_name, quant, "reference", CORES[1], tmp)
                cuda = run(model_name, quant, "cuda", CORES[0], tmp)
                rows.append({"model": model_name, "quant": quant, "reference_vs_itself": rel(other, base),
                             "cuda_vs_reference": rel(cuda, base)})
                print(f"{model_name:8s} {quant:5s} reference {CORES[1]} vs {CORES[0]}: {rows[-1]['reference_vs_itself']:.2e}"
                      f"   cuda (interpreted) vs reference: {rows[-1]['cuda_vs_reference']:.2e}"
                      f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    save_results("int8_reproducibility", rows)
    lines = ["## How reproducible int8 logits are (`bench/int8_reproducibility.py`)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {machine()}. Max |a - b| / max |b| over the logits (MiniLM: the "
             "last hidden state) for the prompts of tests/backends/triton/test_triton_models.py. \"reference vs "
             f"itself\": the reference runtime with OpenBLAS's {CORES[1]} kernels against its {CORES[0]} kernels, "
             "the same graph summed in another order. \"cuda\": target=\"cuda\" in Triton's interpreter against "
             f"the {CORES[0]} reference. Issue 5's bar is 1e-3.", "",
             "| model | graph | reference vs itself | cuda vs reference |", "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['quant']} | {r['reference_vs_itself']:.2e} | {r['cuda_vs_reference']:.2e} |" for r in rows]
    lines += ["", "The int8 graph amplifies last-bit differences: each token's activations are rounded to int8 "
              "codes, a value at a rounding boundary goes to the other code when an upstream sum rounds the other "
              "way, the next layers see a whole int8 step of difference and flip more codes. The same graph on "
              "the same machine, with only the BLAS kernels changed, moves by as much as the Triton backend does; "
              "each int8_linear kernel is exact on its own inputs (test_int8_kernels_are_exact_on_real_activations)."]
    write_section(ROOT / "docs" / "notes" / "int8.md", "int8-reproducibility", "\n".join(lines), "LLM.int8()")
    print("wrote docs/notes/int8.md")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
