"""Text generation with a KV cache: `compiled.generate(...)` and `compiled.stream(...)`.

    compiled = compiler.compile(model, target="cpu", passes="ptqtp")
    out = compiled.generate(input_ids, max_new_tokens=64)              # greedy, like HF generate
    for tokens in compiled.stream(input_ids, max_new_tokens=64, do_sample=True, seed=0):
        ...                                                             # int64 [batch] per step

The step graph (frontends/kv_cache.py) is compiled once per batch size with the model's pipeline
and target; the same graph runs the prefill (the whole prompt) and each one-token decode step, its
KV cache held here as NumPy arrays and grown (copied into a larger one) when full. The cache arrays
are donated to each step (`donate_state`): the step writes the new positions into them in place.

Decoding hooks (`DecodingHook`) observe and change each step, in this order: `token_bitmask` (an
int32 bitmask of the allowed tokens, applied inside the compiled graph by the `mask_logits` op
that the `logits_mask` pass adds), `process_logits` (any change, in NumPy), then the choice of the
token (argmax, or temperature / top-k / top-p sampling), then `accept_token`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ir.errors import CompileError

if TYPE_CHECKING:
    from .api import Compiled, _Specialization

CACHE_BLOCK = 256  # the cache grows by whole blocks of positions


class DecodingHook:
    """Observe and change each decoding step; override what you need (all are optional).

    `uses_bitmask = True` asks for the masked step graph; then `token_bitmask` must return an int32
    array [batch, ceil(vocab / 32)] each step (bit j % 32 of word j // 32 set: token j allowed).
    """

    uses_bitmask: bool = False

    def token_bitmask(self, input_ids: np.ndarray, vocab: int) -> np.ndarray | None:
        return None

    def process_logits(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """input_ids: every token so far [batch, t]; logits: f32 [batch, vocab]. Return the new logits."""
        return logits

    def accept_token(self, tokens: np.ndarray) -> None:
        """The tokens just chosen, int64 [batch] (finished rows get the pad token)."""


def allowed_bitmask(allowed: np.ndarray) -> np.ndarray:
    """bool [..., vocab] -> the int32 bitmask [..., ceil(vocab / 32)] that mask_logits reads."""
    pad = -allowed.shape[-1] % 32
    bits = np.pad(allowed.astype(np.uint8), [(0, 0)] * (allowed.ndim - 1) + [(0, pad)])
    return np.packbits(bits, axis=-1, bitorder="little").view("<i4").astype(np.int32)


@dataclass
class GenerationStats:
    """Timings of the last call: prefill and per-step decode seconds."""

    prompt_tokens: int = 0
    prefill_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        return len(self.step_s) / sum(self.step_s) if self.step_s else 0.0

    def record(self, i: int, t0: float) -> None:
        """Step `i` (0: the prefill) began at perf_counter() `t0` and ends now."""
        if i:
            self.step_s.append(time.perf_counter() - t0)
        else:
            self.prefill_s = time.perf_counter() - t0


class Generator:
    """Owns the compiled step graphs of one `Compiled` (per batch size and mask use)."""

    def __init__(self, compiled: "Compiled"):
        import torch

        if not isinstance(compiled.model, torch.nn.Module):
            raise CompileError("generate() needs the PyTorch model the compiled object was made from, not an IR graph")
        self.compiled = compiled
        self.model = compiled.model
        self._steps: dict[tuple[int, bool], tuple["_Specialization", Any]] = {}
        self._grammars: dict = {}  # compiled grammars by (tokenizer, grammar text): compiled once
        self.stats = GenerationStats()

    def step_for(self, batch: int, masked: bool) -> tuple["_Specialization", Any]:
        """(specialization, CacheGraph) of the step graph for `batch` prompts, with the mask input or not.
        The masked one is the unmasked one plus `logits_mask`: the pipeline runs once per batch size."""
        if (batch, False) not in self._steps:
            from frontends.common import Imported

            cg = self.compiled.step_graph(batch)  # export_with_cache, or compile_gguf's graph with the file's blocks
            imp = Imported(cg.graph, None, list(range(len(cg.graph.inputs))), None)
            spec = self.compiled._build(imp, extra="donate_state", calibration=self._calibration(cg))  # cache in place
            self._steps[(batch, False)] = (spec, cg)
        if masked and (batch, True) not in self._steps:
            from passes.logits_mask import LogitsMask

            spec, cg = self._steps[(batch, False)]
            self._steps[(batch, True)] = (self._lowered(LogitsMask().run(spec.portable)), cg)
        return self._steps[(batch, masked)]

    def _lowered(self, g: Any) -> "_Specialization":
        """A specialization of a step graph that the pipeline already ran on: the target's lowering, built."""
        from frontends.common import Imported

        from .api import _Specialization
        from .pass_manager import lower

        lowered = lower(self.compiled.backend, g, **self.compiled._pm_options)
        imp = Imported(g, None, list(range(len(g.inputs))), None)
        return _Specialization(imp, lowered, self.compiled.backend.build(lowered), g)

    def save(self, path: Any, batch: int = 1) -> Any:
        """Write the step graph for `batch` (after the pipeline, before the target's layout passes)
        as an artifact, so that `load` skips tracing and quantizing it next time."""
        from .artifact import save

        spec, _ = self.step_for(batch, False)
        p = self.compiled.passes
        pipeline = p if isinstance(p, str) else ",".join(str(x) for x in p)
        return save(spec.portable, path, target=self.compiled.target, pipeline=f"{pipeline} (KV-cache step)")

    def load(self, path: Any, passes: str = "") -> None:
        """Use a step graph that `save` wrote (for the batch size it was traced with); `passes` run on
        it before the target's lowering (e.g. `pack_lut{table=i8}` to choose the LUT tables)."""
        from frontends.kv_cache import STATE_INPUTS, CacheGraph
        from passes.donate_state import DonateState

        from .artifact import read
        from .pass_manager import PassManager

        g, _ = read(path)
        g = DonateState().run(PassManager(passes, **self.compiled._pm_options).run(g) if passes else g)
        names = [n for n, _ in g.inputs]
        n_cache = sum(n.startswith("kv_") for n in names)
        if names[:STATE_INPUTS] != ["input_ids", "position_ids", "attention_mask", "past_len"] or n_cache == 0:
            raise CompileError(f"{path} is not a KV-cache step graph (its inputs are {names[:6]} ...)")
        batch = g.inputs[0][1].shape[0]
        self._steps = {k: v for k, v in self._steps.items() if k[0] != batch}  # its masked variant follows it
        self._steps[(batch, False)] = (self._lowered(g), CacheGraph(g, batch, g.inputs[STATE_INPUTS][1].dtype.np))

    def _calibration(self, cg: Any) -> list[list[np.ndarray]]:
        """compile()'s calibration prompts as prefill inputs of the step graph (each row repeated
        to the graph's batch): the data-driven passes see the activations they would see."""
        from frontends.kv_cache import cache_shapes

        out = []
        for sample in self.compiled.calibration or []:
            x = sample[0] if isinstance(sample, (tuple, list)) else sample.get("input_ids") if isinstance(sample, dict) else sample
            ids = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, np.int64)
            for row in ids.reshape(-1, ids.shape[-1]):
                T = row.size
                batch = np.repeat(row[None], cg.batch, 0)
                cache = [np.zeros(s, cg.cache_dtype) for s in cache_shapes(self.model, cg.batch, T)]
                out.append([batch, np.repeat(np.arange(T)[None], cg.batch, 0), np.ones_like(batch), np.array(0), *cache])
        return out

    # -- the loop ----------------------------------------------------------------------------------
    def stream(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 20, do_sample: bool = False,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
               hooks: Sequence[DecodingHook] = (), grammar: Any = None, json_schema: Any = None,
               tokenizer: Any = None) -> Iterator[np.ndarray]:
        """Yield each step's new tokens, int64 [batch]; see `generate` for the arguments."""
        from frontends.kv_cache import cache_shapes

        hooks = _hooks(hooks)
        if grammar is not None or json_schema is not None:
            from .grammar.hook import GrammarHook, resolve

            hook = GrammarHook(resolve(grammar, json_schema, tokenizer, self._grammars))
            hooks = [*hooks, hook]
            if eos_token_id is None:  # finish where the grammar is complete and says stop
                eos_token_id = list(hook.stop_token_ids)
        ids, mask = _prompt(input_ids, attention_mask, pad_token_id)
        B, T = ids.shape
        eos = _token_ids(eos_token_id, "eos_token_id")
        pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos.size else 0)
        _check_sampling(max_new_tokens, do_sample, temperature, top_k, top_p)
        masked = any(h.uses_bitmask for h in hooks)
        spec, cg = self.step_for(B, masked)
        _check_ids(ids[mask == 1], self._vocab(spec))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise CompileError(f"seed must be an integer >= 0 or None, got {seed!r}")
        rng = np.random.default_rng(seed)
        # room for the prompt and the first block of new tokens; it grows as they come (never all of a huge
        # max_new_tokens up front)
        capacity = -(-(T + min(max_new_tokens, CACHE_BLOCK)) // CACHE_BLOCK) * CACHE_BLOCK
        cache = [np.zeros(s, cg.cache_dtype) for s in cache_shapes(self.model, B, capacity)]
        pos = np.where(mask == 1, np.cumsum(mask, -1) - 1, 1)  # as HF generate: pads get position 1
        done = np.zeros(B, bool)
        self.stats = GenerationStats(prompt_tokens=T)
        step_ids, step_pos, past = ids, pos, 0
        limit = _blas_limit(spec)
        for i in range(max_new_tokens):
            t0 = time.perf_counter()
            inputs = [step_ids, step_pos, mask, np.array(past, np.int64), *cache]
            if masked:
                inputs.append(_combined_bitmask(hooks, ids, self._vocab(spec), B))
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
            past += step_ids.shape[1]
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], 1)
            step_ids, step_pos = tok[:, None], step_pos[:, -1:] + 1
            if past + 1 > cache[0].shape[2]:  # full: copy into a larger cache
                cache = [np.concatenate([c, np.zeros(c.shape[:2] + (CACHE_BLOCK,) + c.shape[3:], c.dtype)], 2) for c in cache]

    def generate(self, input_ids: Any, **kw: Any) -> Any:
        """The prompt followed by the new tokens, [batch, prompt + new] (a torch tensor for a torch
        prompt, else NumPy), like Hugging Face `generate`; rows that finish early are padded.
        `grammar=` (lark EBNF text, or a compiled grammar) or `json_schema=` (dict or JSON text)
        constrain the output (compiler/grammar), with `tokenizer=` to compile it against; generation
        then stops at the tokenizer's stop tokens, which the grammar allows only where it is complete."""
        ids, _ = _prompt(input_ids, kw.get("attention_mask"), kw.get("pad_token_id"))
        new = list(self.stream(input_ids, **kw))
        out = np.concatenate([ids] + [t[:, None] for t in new], 1) if new else ids
        import torch

        return torch.from_numpy(out) if isinstance(input_ids, torch.Tensor) else out

    @staticmethod
    def _vocab(spec: "_Specialization") -> int:
        return spec.graph.types()[spec.graph.outputs[-1]].shape[-1]


_CONTROLLER: Any = None


def _blas_limit(spec: "_Specialization") -> Any:
    """A context for each step: BLAS on one thread when the step runs OpenMP kernels (the CPU backend's
    dense, LUT and sparse linears say so with `.openmp`). Their team uses every core; BLAS's threads,
    spinning after a matmul, would fight it for them (on 2 cores a step ran 3x slower)."""
    global _CONTROLLER
    kernels = getattr(spec.executable, "_kernels", {})
    if not any(getattr(k, "openmp", False) for k in kernels.values()):
        return contextlib.nullcontext
    from threadpoolctl import ThreadpoolController

    _CONTROLLER = _CONTROLLER or ThreadpoolController()
    return lambda: _CONTROLLER.limit(limits=1, user_api="blas")


def _ints(x: Any, what: str) -> np.ndarray:
    """An integer array from a tensor, array or nested list; floats, bools and strings are refused (HF
    raises on them too: a float id truncated to an int would be silently another token)."""
    if hasattr(x, "detach") and (x.is_floating_point() or x.is_complex()):  # bf16 has no NumPy dtype to say so
        raise CompileError(f"{what} must hold integers, got {x.dtype} ({type(x).__name__})")
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else x
    try:
        a = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise CompileError(f"{what} must be integers of shape [batch, length]: {e}") from None
    if a.dtype.kind not in "iu":
        raise CompileError(f"{what} must hold integers, got {a.dtype} ({type(x).__name__})")
    return a.astype(np.int64, copy=False)


def _prompt(input_ids: Any, attention_mask: Any, pad_token_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int64 [batch, T]; a list of token lists of different lengths is left-padded. Checked as
    Hugging Face does: integer ids >= 0 (the step checks the upper bound), no empty rows, a 0/1 mask with
    at least one real token per row, the last one real (left padding)."""
    if pad_token_id is not None and _token_ids(pad_token_id, "pad_token_id").shape != (1,):
        raise CompileError(f"pad_token_id must be one integer token id, got {pad_token_id!r:.100}")
    if isinstance(input_ids, (list, tuple)) and input_ids and isinstance(input_ids[0], (list, tuple, np.ndarray)):
        rows = [_ints(list(r) if len(r) else np.zeros(0, np.int64), f"input_ids[{i}]") for i, r in enumerate(input_ids)]
        empty = [i for i, r in enumerate(rows) if r.size == 0]
        if empty:
            raise CompileError(f"input_ids rows {empty[:5]} are empty; every prompt needs at least one token")
        if any(r.ndim != 1 for r in rows):
            raise CompileError("input_ids as a list must be a list of token lists")
        T = max(len(r) for r in rows)
        pad = 0 if pad_token_id is None else pad_token_id
        ids = np.array([[pad] * (T - len(r)) + list(r) for r in rows], np.int64)
        mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows], np.int64)
        _check_ids(ids[mask == 1])
        return ids, mask
    ids = _ints(input_ids, "input_ids")
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise CompileError(f"input_ids must be [batch, length] with batch, length >= 1, got shape {list(ids.shape)}")
    if attention_mask is None:
        _check_ids(ids)
        return ids, np.ones_like(ids)
    mask = _ints(attention_mask, "attention_mask")
    if mask.shape != ids.shape:
        raise CompileError(f"attention_mask {list(mask.shape)} does not match input_ids {list(ids.shape)}")
    if not np.isin(mask, (0, 1)).all():
        raise CompileError("attention_mask must hold only 0 (padding) and 1 (a real token)")
    empty = np.flatnonzero(~mask.any(1))
    if empty.size:
        raise CompileError(f"attention_mask rows {empty[:5].tolist()} are all zeros; every row needs a real token")
    if (mask[:, -1] == 0).any():
        raise CompileError("right padding: the last prompt token of every row must be real; pad on the left")
    _check_ids(ids[mask == 1])
    return ids, mask


def _token_ids(v: Any, what: str) -> np.ndarray:
    """None, an integer or a list of integers (a tensor or array of them too) -> int64 [n]."""
    if v is None:
        return np.zeros(0, np.int64)
    vals = v.tolist() if hasattr(v, "tolist") else v
    vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and -2**63 <= x < 2**63 for x in vals):
        raise CompileError(f"{what} must be an integer token id or a list of them, got {v!r:.100}")
    return np.array(vals, np.int64).reshape(-1)


def _check_ids(ids: np.ndarray, vocab: int | None = None) -> None:
    """Token ids in [0, vocab): a negative id would wrap to the last embedding rows, where HF raises."""
    bad = ids[(ids < 0) | (ids >= vocab if vocab is not None else False)]
    if bad.size:
        raise CompileError(f"token id {int(bad[0])} is out of range: ids must be in [0, "
                           f"{vocab if vocab is not None else 'vocab size'})")


def _check_sampling(n: Any, do_sample: bool, temperature: float, top_k: Any, top_p: float | None) -> None:
    import numbers

    def integer(v: Any, name: str) -> None:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise CompileError(f"{name} must be an integer, got {v!r}")
    integer(n, "max_new_tokens")
    if n < 0:
        raise CompileError(f"max_new_tokens must be >= 0, got {n}")
    if not isinstance(temperature, numbers.Real) or (do_sample and not temperature > 0):
        raise CompileError(f"temperature must be a number > 0 when sampling, got {temperature!r}")
    if top_k is not None:
        integer(top_k, "top_k")
        if top_k < 1:
            raise CompileError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise CompileError(f"top_p must be in (0, 1], got {top_p!r}")


def next_token(logits: np.ndarray, ids: np.ndarray, hooks: Sequence[DecodingHook], done: np.ndarray, pad: int,
               sampling: tuple) -> np.ndarray:
    """One step's tokens: the hooks' logits processing, the choice (`sampling` = do_sample, temperature,
    top_k, top_p, rng), `pad` for finished rows, then the hooks' accept callback."""
    for h in hooks:
        logits = h.process_logits(ids, logits)
    tok = np.where(done, pad, _choose(logits, *sampling))
    for h in hooks:
        h.accept_token(tok)
    return tok


def _hooks(hooks: Any) -> list:
    """The decoding hooks as a list: each a DecodingHook (or one with all of its members)."""
    members = ("uses_bitmask", "token_bitmask", "process_logits", "accept_token")
    if hooks is None:
        return []
    if not isinstance(hooks, (list, tuple)) or not all(all(hasattr(h, a) for a in members) for h in hooks):
        raise CompileError(f"hooks must be a list of compiler.generate.DecodingHook objects, got {hooks!r:.200}")
    return list(hooks)


def _combined_bitmask(hooks: Sequence[DecodingHook], ids: np.ndarray, vocab: int, B: int) -> np.ndarray:
    words = np.full((B, -(-vocab // 32)), -1, np.int32)
    for h in hooks:
        m = h.token_bitmask(ids, vocab) if h.uses_bitmask else None
        if m is not None:
            try:
                words &= np.asarray(m, np.int32).reshape(words.shape)
            except (TypeError, ValueError, OverflowError) as e:
                raise CompileError(f"{type(h).__name__}.token_bitmask must return int32 {list(words.shape)} "
                                   f"(batch, ceil(vocab / 32)), or None: {e}") from None
    return words


def _choose(logits: np.ndarray, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
            rng: np.random.Generator) -> np.ndarray:
    """Argmax (the first maximum, as torch), or a sample after HF's warpers: temperature, top-k, top-p."""
    if not (logits.max(-1, initial=-np.inf) > -np.inf).all():
        raise CompileError("every token is masked out (all logits are -inf or NaN); check the decoding hooks")
    if not do_sample:
        return np.argmax(logits, -1).astype(np.int64)
    x = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = np.partition(x, -top_k, -1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and top_p < 1:
        order = np.argsort(x, -1, kind="stable")  # ascending, as HF's TopPLogitsWarper
        p = _softmax(np.take_along_axis(x, order, -1))
        drop = np.cumsum(p, -1) <= 1 - top_p
        drop[:, -1] = False  # keep at least the most likely token
        x = np.where(_scatter(drop, order), -np.inf, x)
    p = _softmax(x)
    u = rng.random((x.shape[0], 1))
    return np.minimum((np.cumsum(p, -1) < u).sum(-1), x.shape[-1] - 1).astype(np.int64)


def _scatter(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    np.put_along_axis(out, order, values, -1)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, -1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0))
    s = e.sum(-1, keepdims=True)
    if (s == 0).any() or not np.isfinite(s).all():
        raise CompileError("every token is masked out (all logits are -inf or NaN); check the decoding hooks")
    return e / s
