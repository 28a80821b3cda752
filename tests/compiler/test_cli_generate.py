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


def not_a_model_spec(tmp_path):
    spec = tmp_path / "toy.py"
    spec.write_text(SPEC + "\n\ndef number():\n    return 42, Chars()\n")
    return spec


def test_user_errors_end_in_one_message_and_status_1(tmp_path, capsys) -> None:
    """Issue 27, item 5: each of these printed a traceback."""
    spec = not_a_model_spec(tmp_path)
    (tmp_path / "bin.lark").write_bytes(b"\xff\xfe\x00start")
    (tmp_path / "adir").mkdir()
    cases = [
        (["generate", f"{spec}:number", "--prompt", "x"], "torch.nn.Module"),                       # a spec returning a non-model
        (["generate", f"{spec}:build", "--prompt", ""], "--prompt is empty"),
        (["generate", f"{spec}:build", "--prompt", "x", "--seed", "-1"], "--seed"),
        (["generate", f"{spec}:build", "--prompt", "x", "--grammar", str(tmp_path / "bin.lark")], "not UTF-8"),
        (["generate", f"{spec}:build", "--prompt", "x", "--json-schema", str(tmp_path / "adir")], "cannot read"),
        (["compile", f"{spec}:number", "--no-run"], "torch.nn.Module"),
    ]
    for argv, msg in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("tritium: error:") and msg in err and "Traceback" not in err, (argv, err)
