"""Generation for encoder-decoder models (T5): `compiled.generate(input_ids)` as Hugging Face's.

    compiled = compiler.compile(t5, target="cpu")
    out = compiled.generate(input_ids, max_new_tokens=32)   # [batch, 1 + new]: the decoder's ids

frontends/kv_cache.py traces two graphs per batch size (`export_seq2seq`): the encoder, which also
computes every decoder layer's cross-attention keys and values, runs once per prompt; the step graph
runs the decoder for the new tokens over a self-attention cache (written in place, as a causal LM's)
and the cross-attention cache (read only). Both go through the model's pipeline and target. The
output starts with `decoder_start_token_id`, as HF's; greedy or sampled like `Generator`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ir.errors import CompileError

from .generate import CACHE_BLOCK, GenerationStats, _blas_limit, _check_sampling, _prompt, next_token

if TYPE_CHECKING:
    from .api import Compiled


class Seq2SeqGenerator:
    """Owns the compiled encoder and step graphs of one encoder-decoder `Compiled`, per batch size."""

    def __init__(self, compiled: "Compiled"):
        self.compiled = compiled
        self.model = compiled.model
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}
        self.stats = GenerationStats()

    def export(self, batch: int) -> Any:
        """The traced encoder and step graphs (frontends.kv_cache.Seq2SeqGraphs) for `batch` prompts."""
        from frontends.kv_cache import export_seq2seq

        return export_seq2seq(self.model, batch)

    def graphs_for(self, batch: int) -> tuple[Any, Any, Any]:
        """(encoder specialization, step specialization, Seq2SeqGraphs) for `batch` prompts."""
        if batch not in self._graphs:
            from frontends.common import Imported

            sg = self.export(batch)
            enc = self.compiled._build(Imported(sg.encoder, None, [0, 1], None), calibration=[])
            step = self.compiled._build(Imported(sg.step, None, list(range(len(sg.step.inputs))), None),
                                        extra="donate_state", calibration=[])
            self._graphs[batch] = (enc, step, sg)
        return self._graphs[batch]

    def stream(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 20, do_sample: bool = False,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
               decoder_start_token_id: int | None = None, hooks: Sequence[Any] = (), **unsupported: Any) -> Iterator[np.ndarray]:
        """Yield each step's new tokens, int64 [batch]; see `generate`."""
        from frontends.kv_cache import seq2seq_cache_shapes

        if unsupported:
            raise CompileError(f"generate() of an encoder-decoder model does not take {sorted(unsupported)} yet")
        if any(getattr(h, "uses_bitmask", False) for h in hooks):
            raise CompileError("token-bitmask hooks (grammars) are not supported for encoder-decoder models yet")
        src, src_mask = _prompt(input_ids, attention_mask, pad_token_id)
        B, S = src.shape
        cfg = self.model.config
        start = decoder_start_token_id if decoder_start_token_id is not None else cfg.decoder_start_token_id
        if start is None:
            raise CompileError("the model's config has no decoder_start_token_id; pass decoder_start_token_id=")
        eos = np.asarray([] if eos_token_id is None else np.atleast_1d(eos_token_id), np.int64)
        pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos.size else 0)
        _check_sampling(max_new_tokens, do_sample, temperature, top_k, top_p)
        enc, spec, sg = self.graphs_for(B)
        rng = np.random.default_rng(seed)
        self.stats = GenerationStats(prompt_tokens=S)
        t0 = time.perf_counter()
        cross = list(enc.executable([src, src_mask]))
        capacity = -(-max(max_new_tokens, 1) // CACHE_BLOCK) * CACHE_BLOCK
        cache = [np.zeros(s, sg.cache_dtype) for s in seq2seq_cache_shapes(self.model, B, capacity)]
        ids = np.full((B, 1), start, np.int64)
        done = np.zeros(B, bool)
        limit = _blas_limit(spec)
        for i in range(max_new_tokens):
            if i:
                t0 = time.perf_counter()
            past = ids.shape[1] - 1
            inputs = [ids[:, -1:], np.ones((B, past + 1), np.int64), np.array(past, np.int64), src_mask, *cache, *cross]
            with limit():
                outs = spec.executable(inputs)
            cache, logits = list(outs[:-1]), np.asarray(outs[-1], np.float32)
            tok = next_token(logits, ids, hooks, done, pad, (do_sample, temperature, top_k, top_p, rng))
            self.stats.record(i, t0)
            ids = np.concatenate([ids, tok[:, None]], 1)
            done |= np.isin(tok, eos)
            yield tok
            if done.all():
                return
            if past + 2 > cache[0].shape[2]:  # full: copy into a larger cache
                cache = [np.concatenate([c, np.zeros(c.shape[:2] + (CACHE_BLOCK,) + c.shape[3:], c.dtype)], 2) for c in cache]

    def generate(self, input_ids: Any, **kw: Any) -> Any:
        """The decoder's ids, [batch, 1 + new] starting with decoder_start_token_id, like HF's generate
        for an encoder-decoder model (a torch tensor for a torch prompt, else NumPy)."""
        src, _ = _prompt(input_ids, kw.get("attention_mask"), kw.get("pad_token_id"))
        start = kw.get("decoder_start_token_id")
        start = self.model.config.decoder_start_token_id if start is None else start
        new = list(self.stream(input_ids, **kw))
        out = np.concatenate([np.full((src.shape[0], 1), start, np.int64)] + [t[:, None] for t in new], 1)
        import torch

        return torch.from_numpy(out) if isinstance(input_ids, torch.Tensor) else out
