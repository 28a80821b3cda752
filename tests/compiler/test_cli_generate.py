"""tritium generate: streams the prompt and the new text to stdout and tokens/s to stderr; a SPEC
that does not give a tokenizer is a one-line error."""
from __future__ import annotations

from compiler.cli import main

SPEC = '''
from frontends.hf_models import tiny


class Chars:
    """A toy tokenizer: token i is the character chr(97 + i % 26)."""
    eos_token_id = None

    def encode(self, text):
        return [(ord(c) - 97) % 128 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def build():
    return tiny("llama"), Chars()


def no_tokenizer():
    return tiny("llama"), None
'''


def test_generate_streams_text_and_reports_speed(tmp_path, capsys) -> None:
    spec = tmp_path / "toy.py"
    spec.write_text(SPEC)
    assert main(["generate", f"{spec}:build", "--prompt", "hello", "--max-new-tokens", "7", "--target", "reference"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("hello") and len(out.strip()) == 5 + 7
    assert "7 tokens" in err and "tokens/s" in err


def test_a_spec_without_a_tokenizer_is_an_error(tmp_path, capsys) -> None:
    spec = tmp_path / "toy.py"
    spec.write_text(SPEC)
    assert main(["generate", f"{spec}:no_tokenizer", "--prompt", "x"]) == 1
    assert "must be a tokenizer" in capsys.readouterr().err
