"""KV-cache graphs of a Hugging Face causal LM: one trace that serves prefill and every decode step.

    cg = export_with_cache(model, batch=1)
    # cg.graph(%input_ids: i64[1, s], %position_ids: i64[1, s], %attention_mask: i64[1, L],
    #          %past_len: i64[], %kv_0 ... %kv_{2L-1}: f32[1, H_kv, C, D])
    #   -> %kv_0' ... %kv_{2L-1}', %logits: f32[1, V]

The cache is explicit state: 2 tensors per layer of a capacity C that the caller allocates (static
while it lasts), graph inputs that come back as graph outputs after `index_copy` writes the new
keys and values at positions [past_len, past_len + s). Attention reads the first L = past_len + s
slots, L being the attention mask's length, so a step costs what its prefix costs, not C. s, L and
C are symbolic: the same graph is the prefill (s = the prompt's length) and every decode step (s =
1). Only the last position's logits are computed (`logits_to_keep=1`).

The trace is Hugging Face's own code: the model runs over a `StaticCache` whose layers hold the
state inputs, so masks, rotary positions and GQA are exactly those of `model.generate`; torch.export
functionalizes the in-place cache writes into outputs (USER_INPUT_MUTATION). Works for every model
whose attention layers use `Cache.update` (Llama, Qwen3, GPT-2, SmolLM2 ...).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import ir
from ir.errors import UnsupportedOpError

from .moe import experts_as_moe
from .torch_export import from_exported, is_hf_model

STATE_INPUTS = 4  # input_ids, position_ids, attention_mask, past_len; then the cache


@dataclass
class CacheGraph:
    """A traced step: graph inputs are (ids, positions, mask, past_len, *cache), outputs (*cache, logits)."""

    graph: ir.Graph
    batch: int
    cache_dtype: np.dtype


def _layer_class():
    from transformers.cache_utils import StaticLayer

    class _StateLayer(StaticLayer):
        """A static layer over given state tensors whose attention sees only the first `kv_len` slots:
        the step's cost follows the prefix, not the capacity."""

        def __init__(self, keys, values, past_len, kv_len):
            super().__init__(max_cache_len=keys.shape[2])
            self.keys, self.values, self.kv_len = keys, values, kv_len
            self.cumulative_length = past_len.clone()  # each layer advances its own copy
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            super().update(key_states, value_states)
            return self.keys[:, :, : self.kv_len], self.values[:, :, : self.kv_len]

        def get_mask_sizes(self, query_length):
            return self.kv_len, 0

    return _StateLayer


class _Step(nn.Module):
    """model.forward over a StaticCache whose layers are this call's cache tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, past_len, cache):
        from transformers import StaticCache

        layer = _layer_class()
        kv_len = attention_mask.shape[1]
        static = StaticCache(config=self.model.config, max_cache_len=cache[0].shape[2])
        static.layers = [layer(cache[2 * i], cache[2 * i + 1], past_len, kv_len) for i in range(len(cache) // 2)]
        cache_position = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         past_key_values=static, cache_position=cache_position, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]


def cache_shapes(model: nn.Module, batch: int, capacity: int) -> list[tuple[int, ...]]:
    """[batch, kv_heads, capacity, head_dim] for the keys and the values of every layer."""
    cfg = model.config.get_text_config()
    layers = cfg.num_hidden_layers
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return [(batch, heads, capacity, head_dim)] * (2 * layers)


def export_with_cache(model: nn.Module, batch: int = 1, name: str | None = None) -> CacheGraph:
    """Trace `model`'s step over an explicit KV cache; see the module doc."""
    if not is_hf_model(model) or not (hasattr(model, "can_generate") and model.can_generate()):
        raise UnsupportedOpError(f"KV-cache graphs need a Hugging Face causal LM, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    C, n = 8, 2  # example sizes; all three are symbolic in the trace
    cache = [torch.zeros(s, dtype=dtype) for s in cache_shapes(model, batch, C)]
    ids = torch.zeros(batch, n, dtype=torch.long)
    pos = torch.arange(n).expand(batch, n).contiguous()
    mask = torch.ones(batch, n + 1, dtype=torch.long)
    seq, kv_len, cap = (torch.export.Dim("seq", min=1), torch.export.Dim("kv_len", min=2),
                        torch.export.Dim("capacity", min=2))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's own pytree deprecations
            with experts_as_moe(model):
                ep = torch.export.export(_Step(model), (ids, pos, mask, torch.tensor(1), cache),
                                         dynamic_shapes=({1: seq}, {1: seq}, {1: kv_len}, None, [{2: cap}] * len(cache)),
                                         strict=False)
            ep = ep.run_decompositions({})  # the cache writes become outputs
    except UnsupportedOpError:
        raise
    except Exception as e:
        raise UnsupportedOpError(f"torch.export could not trace {type(model).__name__} over a KV cache: "
                                 f"{type(e).__name__}: {str(e)[:1500]}") from e
    finally:
        model.train(was_training)
    from torch.export.graph_signature import OutputKind

    kinds = [s.kind for s in ep.graph_signature.output_specs]
    if kinds != [OutputKind.USER_INPUT_MUTATION] * len(cache) + [OutputKind.USER_OUTPUT]:
        raise UnsupportedOpError(f"{type(model).__name__} does not write its cache in place through Cache.update "
                                 f"(outputs {[k.name for k in kinds]}); KV-cache graphs need that")
    g = from_exported(ep, name or type(model).__name__).graph
    for (old, t), new in zip(list(g.inputs), ["input_ids", "position_ids", "attention_mask", "past_len"]
                             + [f"kv_{i}" for i in range(len(cache))]):
        if old != new:
            g.inputs[g.inputs.index((old, t))] = (new, t)
            g.replace_uses("%" + old, "%" + new)
    return CacheGraph(ir.verify(g), batch, g.inputs[STATE_INPUTS][1].dtype.np)


# -- encoder-decoder models (T5): the encoder once, then steps over a self- and a cross-attention cache --
SEQ2SEQ_INPUTS = 4  # decoder_input_ids, decoder_attention_mask, past_len, attention_mask; then the caches


@dataclass
class Seq2SeqGraphs:
    """encoder(%input_ids, %attention_mask) -> the cross-attention keys and values of every decoder layer
    [B, H, S, D]; step(%decoder_input_ids [B, s], %decoder_attention_mask [B, L], %past_len,
    %attention_mask [B, S], %kv_0 ... %kv_{2N-1} [B, H, C, D], %cross_0 ... %cross_{2N-1} [B, H, S, D])
    -> (*kv written at [past_len, past_len + s), logits [B, V] of the last position)."""

    encoder: ir.Graph
    step: ir.Graph
    batch: int
    cache_dtype: np.dtype


def seq2seq_cache_shapes(model: nn.Module, batch: int, length: int) -> list[tuple[int, ...]]:
    """[batch, heads, length, d_kv] for the keys and values of every decoder layer."""
    cfg = model.config
    layers = getattr(cfg, "num_decoder_layers", None) or cfg.num_hidden_layers
    heads = getattr(cfg, "num_heads", None) or cfg.num_attention_heads
    d = getattr(cfg, "d_kv", None) or cfg.hidden_size // heads
    return [(batch, heads, length, d)] * (2 * layers)


def _cross_cache(model: nn.Module, tensors: list[torch.Tensor] | None) -> object:
    """A DynamicCache for cross-attention: empty (the first decoder call fills it), or holding `tensors`."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    if tensors is not None:
        cache.layers = []
        for i in range(len(tensors) // 2):
            layer = DynamicLayer()
            layer.keys, layer.values, layer.is_initialized = tensors[2 * i], tensors[2 * i + 1], True
            layer.device, layer.dtype = tensors[2 * i].device, tensors[2 * i].dtype
            cache.layers.append(layer)
    return cache


class _Encode(nn.Module):
    """The encoder, then one decoder call that fills the cross-attention cache with Hugging Face's own
    projections; only those keys and values are returned (dce drops the rest of the decoder call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        from transformers import DynamicCache, EncoderDecoderCache

        enc = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        cache = EncoderDecoderCache(DynamicCache(config=self.model.config), _cross_cache(self.model, None))
        start = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        self.model(encoder_outputs=enc, attention_mask=attention_mask, decoder_input_ids=start, past_key_values=cache,
                   use_cache=True)
        return [t for layer in cache.cross_attention_cache.layers for t in (layer.keys, layer.values)]


class _Seq2SeqStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, decoder_attention_mask, past_len, attention_mask, cache, cross):
        from transformers import EncoderDecoderCache, StaticCache

        layer = _layer_class()
        kv_len = decoder_attention_mask.shape[1]
        static = StaticCache(config=self.model.config, max_cache_len=cache[0].shape[2])
        static.layers = [layer(cache[2 * i], cache[2 * i + 1], past_len, kv_len) for i in range(len(cache) // 2)]
        both = EncoderDecoderCache(static, _cross_cache(self.model, cross))
        both.is_updated = {i: True for i in range(len(cross) // 2)}  # the encoder graph computed them
        B, S = attention_mask.shape
        # the decoder reads the encoder's states only for their shape (its mask): the cross cache holds the rest
        enc = torch.zeros(B, S, 0, dtype=cross[0].dtype, device=cross[0].device)
        cache_position = torch.arange(decoder_input_ids.shape[1], device=decoder_input_ids.device) + past_len
        out = self.model(encoder_outputs=(enc,), attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                         decoder_attention_mask=decoder_attention_mask, past_key_values=both, use_cache=True,
                         cache_position=cache_position)
        return out.logits[:, -1, :]


def export_seq2seq(model: nn.Module, batch: int = 1, name: str | None = None) -> Seq2SeqGraphs:
    """Trace an encoder-decoder model (T5) for generation: see Seq2SeqGraphs. The source length S, the
    step length s, the prefix L and the capacity C are symbolic."""
    from passes.dce import Dce

    cfg = getattr(model, "config", None)
    if not is_hf_model(model) or not getattr(cfg, "is_encoder_decoder", False):
        raise UnsupportedOpError(f"encoder-decoder graphs need a Hugging Face encoder-decoder model, got {type(model).__name__}")
    dtype = next(model.parameters()).dtype
    S, C, n = 5, 8, 2  # example sizes; all are symbolic in the traces
    src = torch.ones(batch, S, dtype=torch.long)
    src_mask = torch.ones(batch, S, dtype=torch.long)
    cache = [torch.zeros(s, dtype=dtype) for s in seq2seq_cache_shapes(model, batch, C)]
    cross = [torch.zeros(s, dtype=dtype) for s in seq2seq_cache_shapes(model, batch, S)]
    src_len, seq, kv_len, cap = (torch.export.Dim("src_len", min=2), torch.export.Dim("seq", min=1),
                                 torch.export.Dim("kv_len", min=2), torch.export.Dim("capacity", min=2))
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            enc = torch.export.export(_Encode(model), (src, src_mask), dynamic_shapes=({1: src_len}, {1: src_len}),
                                      strict=False).run_decompositions({})
            step = torch.export.export(
                _Seq2SeqStep(model),
                (torch.zeros(batch, n, dtype=torch.long), torch.ones(batch, n + 1, dtype=torch.long), torch.tensor(1),
                 src_mask, cache, cross),
                dynamic_shapes=({1: seq}, {1: kv_len}, None, {1: src_len}, [{2: cap}] * len(cache),
                                [{2: src_len}] * len(cross)),
                strict=False).run_decompositions({})
    except UnsupportedOpError:
        raise
    except Exception as e:
        raise UnsupportedOpError(f"torch.export could not trace {type(model).__name__} for generation: "
                                 f"{type(e).__name__}: {str(e)[:1500]}") from e
    finally:
        model.train(was_training)
    base = name or type(model).__name__
    eg = Dce().run(from_exported(enc, base + "_encoder").graph)
    _rename(eg, ["input_ids", "attention_mask"])
    sg = from_exported(step, base + "_step").graph
    _rename(sg, ["decoder_input_ids", "decoder_attention_mask", "past_len", "attention_mask"]
            + [f"kv_{i}" for i in range(len(cache))] + [f"cross_{i}" for i in range(len(cross))])
    return Seq2SeqGraphs(ir.verify(eg), ir.verify(sg), batch, sg.inputs[SEQ2SEQ_INPUTS][1].dtype.np)


def _rename(g: ir.Graph, names: list[str]) -> None:
    for (old, t), new in zip(list(g.inputs), names):
        if old != new:
            g.inputs[g.inputs.index((old, t))] = (new, t)
            g.replace_uses("%" + old, "%" + new)
