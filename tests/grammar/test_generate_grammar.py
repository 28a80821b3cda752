"""generate(..., grammar=...) and json_schema=: the mask is an op in the compiled step graph, every
row of a batch follows the grammar, and generation stops where the grammar is complete. Also the
Hugging Face LogitsProcessor adapter and `tritium generate --grammar/--json-schema`."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import compiler
from compiler.grammar import TokenizerInfo
from compiler.grammar.hook import GrammarLogitsProcessor, resolve
from frontends.hf_models import tiny
from ir.errors import CompileError

# token 0 stops; token i (1..127) is the ASCII byte i -- the tiny models' 128-token vocabulary
ASCII = TokenizerInfo([b"</s>"] + [bytes([i]) for i in range(1, 128)], stop_token_ids=[0])
KEY_VALUE = r'start: "{\"" /[a-z]/~1..4 "\": " ("true" | "false" | /[1-9][0-9]?/) "}"'


def text_of(row: np.ndarray) -> str:
    return bytes(int(t) for t in row if t != 0).decode()


@pytest.mark.parametrize("target", ["reference", "cpu", "cuda"])
def test_generate_follows_the_grammar_and_stops(target):
    model = tiny("llama")
    c = compiler.compile(model, target=target)
    prompts = [[5, 9, 40], [60, 61], [7]]
    out = c.generate(prompts, max_new_tokens=16, grammar=KEY_VALUE, tokenizer=ASCII, do_sample=True, seed=1)
    assert any(n.op == "mask_logits" for n in c.generator.step_for(3, True)[0].graph.nodes)
    for row in out[:, 3:]:
        stop = list(row).index(0)  # every row finished with the stop token, padded after it
        assert re.fullmatch(r'\{"[a-z]{1,4}": (true|false|[1-9][0-9]?)\}', text_of(row[:stop])), text_of(row)
        assert (row[stop:] == 0).all()


def test_json_schema_constrains_greedy_output():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"]}
    c = compiler.compile(tiny("llama"), target="cpu")
    # a random model loves whitespace, which JSON allows anywhere: here the whitespace tokens are special (never allowed)
    no_space = TokenizerInfo(ASCII.decoded, stop_token_ids=[0], special_token_ids=[9, 10, 13, 32])
    out = c.generate([[1, 2, 3]], max_new_tokens=40, json_schema=schema, tokenizer=no_space)
    doc = json.loads(text_of(out[0, 3:]))
    assert isinstance(doc["ok"], bool) and doc["n"] in (1, 2, 3) and set(doc) == {"ok", "n"}


def test_grammar_needs_a_tokenizer_and_one_source():
    c = compiler.compile(tiny("llama"), target="reference")
    with pytest.raises(CompileError, match="pass tokenizer="):
        c.generate([[1]], max_new_tokens=2, grammar=KEY_VALUE)
    with pytest.raises(CompileError, match="either grammar= or json_schema="):
        c.generate([[1]], max_new_tokens=2, grammar=KEY_VALUE, json_schema={}, tokenizer=ASCII)


def test_compiled_grammars_are_reused():
    cache: dict = {}
    assert resolve(KEY_VALUE, None, ASCII, cache) is resolve(KEY_VALUE, None, ASCII, cache)


def test_hugging_face_logits_processor():
    import torch

    model = tiny("llama")
    proc = GrammarLogitsProcessor(resolve(KEY_VALUE, None, ASCII))
    out = model.generate(torch.tensor([[3, 4]]), max_new_tokens=16, do_sample=False, logits_processor=[proc],
                         eos_token_id=0, pad_token_id=0)
    assert re.fullmatch(r'\{"[a-z]{1,4}": (true|false|[1-9][0-9]?)\}', text_of(out[0, 2:].numpy()))


CLI_SPEC = '''
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from frontends.hf_models import tiny
from ir.errors import CompileError


def build():
    """The tiny Llama and a byte-level tokenizer of its 128 tokens: </s>, then the bytes 1..127."""
    kept = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))  # GPT-2's byte table
    moved = [b for b in range(256) if b not in kept]
    table = {b: chr(b) if b in kept else chr(0x100 + moved.index(b)) for b in range(256)}
    vocab = {"</s>": 0, **{table[b]: b for b in range(1, 128)}}
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return tiny("llama"), PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>")
'''


@pytest.mark.parametrize("flag", ["--grammar", "--json-schema"])
def test_cli_generate_with_a_grammar(tmp_path, capsys, flag):
    from compiler.cli import main

    (tmp_path / "toy.py").write_text(CLI_SPEC)
    if flag == "--grammar":
        (tmp_path / "g.lark").write_text(KEY_VALUE)
        path, pattern = tmp_path / "g.lark", r'\{"[a-z]{1,4}": (true|false|[1-9][0-9]?)\}'
    else:
        (tmp_path / "s.json").write_text(json.dumps({"type": "array", "items": {"type": "boolean"}, "maxItems": 2}))
        path, pattern = tmp_path / "s.json", r"\[\s*((true|false)(\s*,\s*(true|false))?)?\s*\]"
    assert main(["generate", f"{tmp_path / 'toy.py'}:build", "--prompt", "Hi", "--max-new-tokens", "24",
                 "--target", "cpu", flag, str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Hi") and re.fullmatch(pattern, out[2:].strip()), out
    assert main(["generate", f"{tmp_path / 'toy.py'}:build", "--prompt", "Hi", flag, str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert flag in err and "missing" in err and ("no file" in err or "No such file" in err), err
