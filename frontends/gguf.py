"""GGUF (llama.cpp) files, loaded as the file holds them: quantized tensors stay their blocks.

    gm = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # HF skeleton, tokenizer, the file's tensors
    cg = gguf_graph(gm, batch=1)                        # the KV-cache step graph (frontends/kv_cache.py)
    # @model.model.layers.0.mlp.up_proj.weight: u8[1536, 360]
    # %model.model.layers.0.mlp.up_proj.weight.dq: f32[1536, 576] = dequant_gguf(@...) {type = "q4_1", cols = 576}

The architecture comes from transformers' GGUF support (the config from the file's metadata, the
tensor names from its name map), the tensors from gguf-py's reader. Nothing is dequantized or
requantized: each quantized weight becomes a `u8[N, row_bytes]` parameter (the file's rows) decoded
by a `dequant_gguf` node (ir/ops/quant/gguf.py, bit for bit gguf-py's decoder); F32, F16 and BF16
tensors become f32 parameters (widened exactly). The model is traced from an HF skeleton whose
weights are never initialised: tracing needs shapes, and every parameter is then bound from the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ir
from ir.dtypes import DTYPES
from ir.errors import CompileError
from ir.ops.quant.gguf import BLOCKS

from .kv_cache import CacheGraph, export_with_cache

FLOAT_TYPES = ("f32", "f16", "bf16")
SUPPORTED_TYPES = (*BLOCKS, *FLOAT_TYPES)
STEP_PREFIX = "model."  # kv_cache's step module holds the model as `.model`: its params are model.<HF name>


class GGUFError(CompileError):
    """A GGUF file Tritium cannot load: unreadable, truncated, an unsupported tensor type or architecture."""


@dataclass
class GGUFTensor:
    """One tensor as the file stores it. shape: logical, torch order ([out, in] for a weight);
    data: the raw bytes, u8 [*shape[:-1], row_bytes] (rows in the HF model's order)."""

    name: str  # the GGUF name, e.g. blk.0.attn_q.weight
    qtype: str  # lower-case ggml type: q4_1, q8_0, f32 ...
    shape: tuple[int, ...]
    data: np.ndarray

    def decode(self) -> np.ndarray:
        """The values as f32: F16/BF16 widened exactly, blocks decoded as gguf-py does."""
        if self.qtype in BLOCKS:
            from ir.ops.quant.gguf import dequantize

            return dequantize(self.data.reshape(-1, self.data.shape[-1]), self.qtype, self.shape[-1]).reshape(self.shape)
        raw = np.ascontiguousarray(self.data)
        if self.qtype == "f32":
            return raw.view("<f4").reshape(self.shape).astype(np.float32)
        if self.qtype == "f16":
            return raw.view("<f2").reshape(self.shape).astype(np.float32)
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(self.shape)  # bf16: the high half


@dataclass
class GGUFModel:
    """A GGUF file read for tracing: the HF model skeleton (float32, eval mode, weights NOT loaded),
    its tokenizer (None when not asked for), and the file's tensor for every HF parameter name (a
    tied LM head shares the embedding's)."""

    path: Path
    architecture: str
    model: torch.nn.Module
    tokenizer: Any
    tensors: dict[str, GGUFTensor] = field(default_factory=dict)


def _reader(path: Path) -> Any:
    """gguf-py's reader over `path`, or a GGUFError that names the file and what is wrong with it."""
    from gguf import GGUFReader

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"cannot read {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise GGUFError(f"{path} is not a GGUF file: it starts with {magic!r}, not the magic b'GGUF'")
    try:
        r = GGUFReader(path)
    except Exception as e:  # gguf-py fails on a short file with whatever numpy says
        raise GGUFError(f"{path} is truncated or corrupt ({size} bytes): gguf-py cannot read it "
                        f"({type(e).__name__}: {e})") from None
    for t in r.tensors:
        if t.data_offset + t.n_bytes > size:
            raise GGUFError(f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}, "
                            f"the file has {size}")
    return r


def _tensor(t: Any, path: Path) -> GGUFTensor:
    qtype = t.tensor_type.name.lower()
    if qtype not in SUPPORTED_TYPES:
        raise GGUFError(f"{path}: tensor {t.name} is {t.tensor_type.name}, which Tritium does not decode; "
                        f"supported types: {', '.join(s.upper() for s in SUPPORTED_TYPES)}")
    shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists dims fastest first
    data = np.array(t.data, copy=True).view(np.uint8)  # owned: a graph must not fault when the file changes
    return GGUFTensor(t.name, qtype, shape, data.reshape(*shape[:-1], -1))


def _unpermute_rows(data: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q and k with each head's rows interleaved for its rotary layout; transformers'
    LlamaTensorProcessor undoes it on float rows. A permutation of whole rows, so here it moves the
    rows' blocks: nothing is requantized."""
    dim = data.shape[0] // n_head // 2
    return np.ascontiguousarray(data.reshape(n_head, dim, 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape))


def _skeleton(path: Path, arch: str) -> tuple[torch.nn.Module, dict]:
    """The HF model of the file's architecture with uninitialised float32 weights, and its config dict."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        cfg = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        config = CONFIG_MAPPING[cfg["model_type"]].from_dict(cfg)
        with no_init_weights(), torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
        model.tie_weights()  # no_init_weights skips the tying too: a tied head must stay one parameter
    except (ValueError, KeyError, NotImplementedError) as e:
        raise GGUFError(f"{path}: transformers cannot load a causal LM of architecture {arch!r} from this file "
                        f"({type(e).__name__}: {e})") from None
    return model.eval(), cfg


def read_gguf(path: str | os.PathLike, tokenizer: bool = True) -> GGUFModel:
    """Read a .gguf file: the model skeleton, the tokenizer (unless `tokenizer=False`) and each HF
    parameter's tensor as stored. Raises GGUFError for an unreadable or truncated file, an
    unsupported tensor type and an architecture transformers cannot load."""
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, LlamaTensorProcessor, TensorProcessor,
                                                          get_gguf_hf_weights_map)

    path = Path(path)
    r = _reader(path)
    arch = str(r.fields["general.architecture"].contents()) if "general.architecture" in r.fields else "?"
    tensors = {t.name: _tensor(t, path) for t in r.tensors}  # every type checked before the slow part
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)
    if processor not in (TensorProcessor, LlamaTensorProcessor):  # only these leave the blocks' values alone
        raise GGUFError(f"{path}: transformers rewrites architecture {arch!r}'s tensors with {processor.__name__} on "
                        "load, which on blocks would mean requantizing; Tritium loads llama and the architectures "
                        "whose tensors transformers takes as stored")
    model, cfg = _skeleton(path, arch)
    try:
        names = get_gguf_hf_weights_map(model, processor(config=cfg))
    except NotImplementedError as e:
        raise GGUFError(f"{path}: no GGUF tensor names for architecture {arch}: {e}") from None
    out: dict[str, GGUFTensor] = {}
    for gname, t in tensors.items():
        if gname not in names:  # e.g. llama 3's rope_freqs: transformers ignores them too
            continue
        if processor is LlamaTensorProcessor and (".attn_q." in gname or ".attn_k." in gname):
            heads = cfg.get("num_attention_heads")
            heads = cfg.get("num_key_value_heads", heads) if ".attn_k." in gname else heads
            if heads:
                t = GGUFTensor(t.name, t.qtype, t.shape, _unpermute_rows(t.data, heads))
        out[names[gname]] = t
    tied = getattr(model, "_tied_weights_keys", None)
    for target, source in (tied.items() if isinstance(tied, dict) else ()):  # the LM head reads the embedding
        if target not in out and source in out and getattr(model.config, "tie_word_embeddings", False):
            out[target] = out[source]
    tok = None
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except (ValueError, KeyError, OSError) as e:
            raise GGUFError(f"{path}: transformers cannot build this file's tokenizer ({type(e).__name__}: {e}); "
                            "read_gguf(..., tokenizer=False) loads the model alone") from None
    return GGUFModel(path, arch, model, tok, out)


def bind_gguf(g: ir.Graph, gm: GGUFModel, prefix: str = "") -> ir.Graph:
    """A copy of `g` (traced from `gm.model`, whose parameters are named `prefix` + HF name) with every
    model parameter bound to the file: a quantized weight `@w: f32[N, K]` becomes `@w: u8[N, row_bytes]`
    (the file's rows) and `%w.dq = dequant_gguf(@w)` replaces it in every use; F32/F16/BF16 tensors
    are f32 weights. Buffers and constants of the trace (rotary frequencies) keep their values."""
    g = g.copy()
    params = {prefix + n for n, _ in gm.model.named_parameters(remove_duplicate=False)}
    bound = 0
    for name in [p for p in g.params if p in params]:
        hf, want = name[len(prefix):], g.params[name]
        t = gm.tensors.get(hf)
        if t is None:
            raise GGUFError(f"{gm.path}: the graph's parameter @{name} (HF {hf}) has no tensor in the file")
        if tuple(want.shape) != t.shape:
            raise GGUFError(f"{gm.path}: tensor {t.name} is {list(t.shape)}, but the model's {hf} is {want}")
        bound += 1
        if t.qtype in FLOAT_TYPES:
            g.weights[name] = t.decode().astype(want.dtype.np, copy=False)
            continue
        if len(t.shape) != 2:
            raise GGUFError(f"{gm.path}: tensor {t.name} is {t.qtype.upper()} blocks of shape {list(t.shape)}; "
                            "Tritium keeps blocks for 2-D weights only")
        attrs = ir.OPS["dequant_gguf"].normalize_attrs({"type": t.qtype, "cols": t.shape[1]})
        g.params[name] = ir.TensorType(DTYPES["u8"], t.data.shape)
        g.weights[name] = t.data
        users = [i for i, n in enumerate(g.nodes) if "@" + name in n.operands]
        if users or "@" + name in g.outputs:  # a tied weight's second name is unused: its blocks alone, for dce
            dq = ir.Node(g.fresh_name(name + ".dq"), "dequant_gguf", ("@" + name,), attrs, want)
            g.replace_uses("@" + name, dq.ref)
            g.nodes.insert(users[0] if users else len(g.nodes), dq)
    if not bound:
        raise GGUFError(f"{gm.path}: no parameter of graph @{g.name} is named {prefix!r} + a parameter of the "
                        f"{type(gm.model).__name__} it should be traced from")
    return ir.verify(g)


def gguf_graph(path: str | os.PathLike | GGUFModel, batch: int = 1) -> CacheGraph:
    """The KV-cache step graph of a GGUF model (export_with_cache on the skeleton, then bind_gguf)."""
    gm = path if isinstance(path, GGUFModel) else read_gguf(path, tokenizer=False)
    cg = export_with_cache(gm.model, batch)
    return CacheGraph(bind_gguf(cg.graph, gm, STEP_PREFIX), cg.batch, cg.cache_dtype)
