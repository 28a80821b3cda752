"""`TokenizerInfo`: the exact bytes every token id adds to the output text.

A grammar engine matches bytes, a model emits token ids; this table joins the two. It follows
XGrammar's `TokenizerInfo` (0.2.8) so that masks agree with XGrammar's token for token:

    byte_level     GPT-2 / Llama-3 / SmolLM2 BPE: each character of a token stands for one byte
                   (GPT-2's bytes-to-unicode table, inverted). A token with a character outside the
                   table (say, an added token holding a space) is its literal UTF-8 text; added
                   tokens of printable ASCII ("<|im_start|>") come out the same either way.
    sentencepiece  Llama-2 / Mistral with byte fallback: "<0x0A>" is the byte 0x0A, "▁" is a space.
                   `add_prefix_space` says the tokenizer puts a "▁" before the text, so a text that
                   starts with neither a space nor an added token encodes to b" " + its bytes
                   (XGrammar keeps that space in the token too; the decoder strips it, not us). A Metaspace
                   tokenizer without byte pieces (T5-style Unigram) is read the same way, where
                   XGrammar would keep its "▁" raw.
    wordpiece      BERT: "##ing" continues a word (b"ing"), any other token starts one (b" word"),
                   and `add_prefix_space` is set: the first word's space is the same dummy prefix as
                   SentencePiece's. XGrammar keeps WordPiece tokens raw ("##ing", no spaces), so no
                   token sequence could spell "two words"; we diverge here on purpose. Punctuation
                   is a word of its own (b" ,"): BERT's decode-time cleanup is not modelled.
    raw            a table built by hand: the bytes are taken as given.

Like XGrammar, special (never-allowed) tokens are the ids that decode to nothing, ids past the
tokenizer (a model vocabulary padded beyond it), and ids the caller names; added tokens such as
SmolLM2's "<|endoftext|>" are *not* special: they are their literal text. Stop tokens are never
special. WordPiece's [CLS]/[SEP]/[PAD]/[MASK]/[UNK] are special (our choice; XGrammar has no rule).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from ir.errors import GrammarError

KINDS = ("byte_level", "sentencepiece", "wordpiece", "raw")

# What XGrammar takes for a stop token when the tokenizer names no eos (matched on decoded bytes).
_STOP_TEXTS = frozenset(s.encode() for s in (
    "</s>", "<|end_of_text|>", "<|eot_id|>", "<|endoftext|>", "<eos>", "<|eos|>", "<end_of_turn>",
    "<｜end▁of▁sentence｜>"))

_HOWTO = ("build one by hand: TokenizerInfo([bytes of token 0, bytes of token 1, ...], "
          "stop_token_ids=[...], vocab_size=<the model's logits width>)")


def _gpt2_unbyte_table() -> dict[int, str]:
    """str.translate table: GPT-2's stand-in character -> the latin-1 character of its byte.

    GPT-2 keeps the 188 printable bytes as themselves and moves the other 68 to U+0100.. in byte
    order. Characters below 256 that stand for nothing (space, controls, soft hyphen) map to
    U+FFFF so that the latin-1 encode fails and the token is taken as literal text.
    """
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    stand_in = {b: chr(b) for b in kept}
    stand_in.update({b: chr(0x100 + n) for n, b in enumerate(b for b in range(256) if b not in stand_in)})
    table = {c: "\uffff" for c in range(256)}
    table.update({ord(c): chr(b) for b, c in stand_in.items()})
    return table


_UNBYTE = _gpt2_unbyte_table()


def _byte_level(token: str) -> bytes:
    try:
        return token.translate(_UNBYTE).encode("latin-1")
    except UnicodeEncodeError:  # some character stands for no byte: the token is literal text
        return token.encode("utf-8")


def _sentencepiece(token: str) -> bytes:
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            pass  # "<0xZZ>" is an ordinary piece
    return token.replace("\u2581", " ").encode("utf-8")


class TokenizerInfo:
    """The bytes of every token id, and which ids are stop or never-allowed (special) tokens.

    Invariants: len(decoded) == vocab_size; stop_token_ids and special_token_ids are sorted,
    disjoint and inside [0, vocab_size); every id whose bytes are b"" is a stop or special token.
    """

    __slots__ = ("vocab_size", "decoded", "stop_token_ids", "special_token_ids", "kind", "add_prefix_space")

    def __init__(self, decoded: Sequence[bytes], stop_token_ids: Sequence[int] = (),
                 special_token_ids: Sequence[int] = (), vocab_size: int | None = None, *,
                 kind: str = "raw", add_prefix_space: bool = False):
        """`decoded[i]` is token i's bytes; `vocab_size` (default len(decoded)) is the model's logits
        width, and ids from len(decoded) up are padding: b"" and special. A stop id is never special;
        unlike XGrammar, a stop id in the padding stays a stop token (XGrammar turns it special)."""
        decoded = list(decoded)
        for i, d in enumerate(decoded):
            if not isinstance(d, (bytes, bytearray)):
                raise GrammarError(f"token {i} is {type(d).__name__} {d!r}, not bytes: pass each token's "
                                   "bytes (text.encode('utf-8') for text tokens)")
        V = len(decoded) if vocab_size is None else vocab_size
        if V < len(decoded):
            raise GrammarError(f"vocab_size {V} is smaller than the {len(decoded)} tokens given: "
                               f"pass decoded[:{V}] if the model cannot emit the rest")
        if kind not in KINDS:
            raise GrammarError(f"unknown tokenizer kind {kind!r}; known: {', '.join(KINDS)}")
        for name, ids in (("stop", stop_token_ids), ("special", special_token_ids)):
            bad = [i for i in ids if not 0 <= i < V]
            if bad:
                raise GrammarError(f"{name} token ids {bad} are outside the vocabulary [0, {V})")
        self.vocab_size = V
        self.decoded: list[bytes] = [bytes(d) for d in decoded] + [b""] * (V - len(decoded))
        stop = set(stop_token_ids)
        self.stop_token_ids: tuple[int, ...] = tuple(sorted(stop))
        empty = {i for i, d in enumerate(self.decoded) if not d}
        self.special_token_ids: tuple[int, ...] = tuple(sorted((empty | set(special_token_ids)) - stop))
        self.kind = kind
        self.add_prefix_space = add_prefix_space

    def __repr__(self) -> str:
        return (f"TokenizerInfo(kind={self.kind!r}, vocab_size={self.vocab_size}, stop_token_ids="
                f"{list(self.stop_token_ids)}, {len(self.special_token_ids)} special, "
                f"add_prefix_space={self.add_prefix_space})")

    @classmethod
    def from_huggingface(cls, tokenizer: Any, vocab_size: int | None = None,
                         stop_token_ids: Sequence[int] | None = None) -> "TokenizerInfo":
        """From a Hugging Face fast tokenizer. The kind comes from its backend's decoder,
        pre-tokenizer and model (never from the model's name). `vocab_size` is the model's logits
        width: ids past the tokenizer are padding, tokens past it are dropped. Stop tokens default,
        as in XGrammar, to the tokenizer's eos_token_id, else to tokens spelled like a known
        end-of-text marker ("</s>", "<|endoftext|>", "<|eot_id|>", ...)."""
        kind, add_prefix_space, prefix = _detect(tokenizer)
        vocab: dict[str, int] = tokenizer.get_vocab()
        V = vocab_size if vocab_size is not None else max(len(vocab), max(vocab.values(), default=-1) + 1)
        tokens = [""] * V
        for text, i in vocab.items():
            if i < V:
                tokens[i] = text
        special: list[int] = []
        if kind == "byte_level":
            decoded = [_byte_level(t) for t in tokens]
        elif kind == "sentencepiece":
            decoded = [_sentencepiece(t) for t in tokens]
        else:
            n = len(prefix)
            decoded = [t[n:].encode() if t.startswith(prefix) else (b" " + t.encode() if t else b"") for t in tokens]
            special = [i for i in getattr(tokenizer, "all_special_ids", ()) if i < V]
        if stop_token_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            if eos is not None:
                stop_token_ids = [eos] if eos < V else []  # like XGrammar, an eos past the model is dropped
            else:
                stop_token_ids = [i for i, d in enumerate(decoded) if d in _STOP_TEXTS]
        return cls(decoded, stop_token_ids, special, V, kind=kind, add_prefix_space=add_prefix_space)


def _parts(component: Any, key: str) -> list[dict]:
    """A backend component (normalizer, pre-tokenizer, decoder) as its tokenizer.json objects,
    Sequence flattened. Each component pickles as its JSON, so the vocabulary is never serialized."""
    if component is None:
        return []
    stack, out = [json.loads(component.__getstate__())], []
    while stack:
        obj = stack.pop(0)
        if obj.get("type") == "Sequence":
            stack[:0] = obj.get(key, [])
        else:
            out.append(obj)
    return out


def _detect(tokenizer: Any) -> tuple[str, bool, str]:
    """(kind, add_prefix_space, WordPiece continuation prefix) of a Hugging Face fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(tokenizer, "get_vocab"):
        raise GrammarError(f"{type(tokenizer).__name__} is not a Hugging Face fast tokenizer (no "
                           f"backend_tokenizer), so the bytes of its tokens are unknown; {_HOWTO}")
    normalizers = _parts(backend.normalizer, "normalizers")
    pre = _parts(backend.pre_tokenizer, "pretokenizers")
    decoders = _parts(backend.decoder, "decoders")
    model = type(backend.model).__name__
    types = {p["type"] for p in pre + decoders}
    if "ByteLevel" in types:
        return "byte_level", any(p["type"] == "ByteLevel" and p.get("add_prefix_space") for p in pre), ""
    if "ByteFallback" in types or "Metaspace" in types or getattr(backend.model, "byte_fallback", False):
        # The dummy prefix: a Prepend("▁") normalizer (Llama-2) or a Metaspace pre-tokenizer that
        # prepends (Mistral); XGrammar reads the same two fields.
        prepends = any(n["type"] == "Prepend" and n.get("prepend") == "\u2581" for n in normalizers) or any(
            p["type"] == "Metaspace" and (p.get("prepend_scheme") in ("always", "first") or p.get("add_prefix_space"))
            for p in pre)
        return "sentencepiece", prepends, ""
    if "WordPiece" in types or model == "WordPiece":
        prefix = next((d.get("prefix") for d in decoders if d["type"] == "WordPiece"), None)
        return "wordpiece", True, prefix or getattr(backend.model, "continuing_subword_prefix", None) or "##"
    raise GrammarError(
        f"cannot tell the bytes of {type(tokenizer).__name__}'s tokens: model {model}, pre-tokenizers "
        f"{sorted(p['type'] for p in pre) or 'none'}, decoders {sorted(d['type'] for d in decoders) or 'none'} "
        f"(known: ByteLevel, ByteFallback/Metaspace, WordPiece); {_HOWTO}")
