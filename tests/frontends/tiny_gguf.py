"""Tiny llama GGUF files for the tests, written with gguf-py's GGUFWriter: a few layers of hidden 64
whose tensors take every block type, and a byte-level BPE tokenizer of 259 tokens.

    path = write_tiny_gguf(tmp_path / "tiny.gguf")       # the default mix of types, tied head
    path = write_tiny_gguf(p, types={"ffn_up": "Q2_K"})  # any tensor in any ggml type

Legacy types (Q4_0 ... Q8_0) are gguf-py's quantization of random normal weights. gguf-py cannot
quantize the K-quants, so those are random blocks with small f16 scales: valid blocks, decoding to
weights of about 0.05. Unknown types (Q2_K, IQ*) get random bytes: only the loader's error reads them.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from transformers.convert_slow_tokenizer import bytes_to_unicode

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 64, 256, 4, 2, 3
_BYTES = [bytes_to_unicode()[b] for b in range(256)]
TOKENS = _BYTES + ["he", "\u0120t", "<|endoftext|>"]  # \u0120 is the byte-level spelling of a space
EOS = len(TOKENS) - 1
VOCAB = len(TOKENS)

# Every block type once (three layers: the K-quants need ffn_down's 256 columns), F16/BF16/F32 too.
DEFAULT_TYPES = {
    "token_embd": "Q8_0",
    "blk.0.attn_q": "Q4_0", "blk.0.attn_k": "Q4_1", "blk.0.attn_v": "Q5_0", "blk.0.attn_output": "Q5_1",
    "blk.0.ffn_gate": "Q8_0", "blk.0.ffn_up": "F16", "blk.0.ffn_down": "Q4_K",
    "blk.1.attn_q": "Q5_1", "blk.1.attn_k": "Q8_0", "blk.1.attn_v": "BF16", "blk.1.attn_output": "F32",
    "blk.1.ffn_gate": "Q4_1", "blk.1.ffn_up": "Q4_0", "blk.1.ffn_down": "Q5_K",
    "blk.2.attn_q": "Q4_1", "blk.2.attn_k": "Q4_0", "blk.2.attn_v": "Q8_0", "blk.2.attn_output": "Q4_0",
    "blk.2.ffn_gate": "Q5_0", "blk.2.ffn_up": "Q4_1", "blk.2.ffn_down": "Q6_K",
}
_K_F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _tensor(rng: np.random.Generator, shape: tuple[int, ...], qtype: str) -> np.ndarray:
    """The array GGUFWriter stores as `qtype`: floats as such, blocks as u8 [rows, row_bytes]."""
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    t = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return w
    if qtype == "F16":
        return w.astype(np.float16)
    if qtype in ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return gguf.quants.quantize(w, t)
    elems, nbytes = gguf.GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, (shape[0], shape[1] // elems, nbytes), dtype=np.uint8)
    for at in _K_F16_FIELDS.get(qtype, ()):  # small scales: weights of about 0.05
        d = (rng.uniform(0.5, 1.0, b.shape[:2]) * (2e-3 if qtype == "Q6_K" else 1e-4)).astype("<f2")
        b[..., at:at + 2] = d[..., None].view(np.uint8)
    return b.reshape(shape[0], -1)


def write_tiny_gguf(path: Path, types: dict[str, str] | None = None, tied: bool = True, seed: int = 0,
                    arch: str = "llama", skip: tuple[str, ...] = ()) -> Path:
    """A llama GGUF of LAYERS layers. `types`: GGUF tensor name (no .weight) -> ggml type name,
    over DEFAULT_TYPES (the norms are F32 unless named); `tied=False` adds an `output.weight`;
    `skip` leaves tensors out; `arch` writes another general.architecture (same tensors)."""
    rng = np.random.default_rng(seed)
    types = {**DEFAULT_TYPES, **(types or {})}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (VOCAB - 1) + [3])  # the last one is a control token
    w.add_token_merges(["h e", "\u0120 t"])
    w.add_bos_token_id(EOS)
    w.add_eos_token_id(EOS)
    head_dim = HIDDEN // HEADS
    shapes = {"token_embd": (VOCAB, HIDDEN), "output_norm": (HIDDEN,)}
    if not tied:
        shapes["output"] = (VOCAB, HIDDEN)
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.attn_norm": (HIDDEN,), f"blk.{i}.ffn_norm": (HIDDEN,),
                   f"blk.{i}.attn_q": (HEADS * head_dim, HIDDEN), f"blk.{i}.attn_k": (KV_HEADS * head_dim, HIDDEN),
                   f"blk.{i}.attn_v": (KV_HEADS * head_dim, HIDDEN), f"blk.{i}.attn_output": (HIDDEN, HEADS * head_dim),
                   f"blk.{i}.ffn_gate": (FFN, HIDDEN), f"blk.{i}.ffn_up": (FFN, HIDDEN), f"blk.{i}.ffn_down": (HIDDEN, FFN)}
    for name, shape in shapes.items():
        if name in skip:
            continue
        qtype = types.get(name, "F32" if len(shape) == 1 else "Q8_0")
        data = _tensor(rng, shape, qtype)
        if len(shape) == 1:
            data = 1.0 + data  # norms near one, as trained models have them
        w.add_tensor(name + ".weight", data, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
