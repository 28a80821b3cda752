"""compiler.compile_gguf and `tritium generate model.gguf`: a tiny llama GGUF (every block type) compiled
with its blocks kept generates Hugging Face's greedy tokens from the same file; the compiled object is
a Compiled (.generate, .stream, .save, .generator.stats) with the file's tokenizer; bad files fail
with a one-line GGUFError."""
from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import compiler
from compiler.cli import main
from frontends.gguf import GGUFError
from ir.errors import CompileError

sys.path.insert(0, str(Path(__file__).parents[1] / "frontends"))
from tiny_gguf import EOS, write_tiny_gguf  # noqa: E402

PROMPT = "the cat he"


@functools.cache
def tiny_file() -> Path:
    return write_tiny_gguf(Path(tempfile.mkdtemp(prefix="tiny-gguf-")) / "tiny.gguf", seed=1)


@functools.cache
def hf_model() -> torch.nn.Module:
    """transformers' own load of the file (dequantized by gguf-py)."""
    from transformers import AutoModelForCausalLM

    path = tiny_file()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@functools.cache
def hf_generate(n: int) -> list[int]:
    """Hugging Face's greedy tokens."""
    ids = torch.tensor([compiled("reference").tokenizer.encode(PROMPT)])
    return hf_model().generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=EOS)[0].tolist()


@functools.cache
def compiled(target: str) -> compiler.GGUFCompiled:
    return compiler.compile_gguf(tiny_file(), target=target)


@pytest.mark.parametrize("target, n", [("reference", 16), ("cpu", 8)])
def test_greedy_tokens_equal_transformers(target: str, n: int) -> None:
    """The reference runtime decodes exactly as HF; the cpu target sums in its own order, and a random
    tiny model has near-ties among its logits, so it is held to fewer tokens."""
    c = compiled(target)
    ids = c.tokenizer.encode(PROMPT)
    out = c.generate(torch.tensor([ids]), max_new_tokens=n)
    assert out[0].tolist() == hf_generate(16)[:len(ids) + n]
    st = c.generator.stats
    assert st.prompt_tokens == len(ids) and len(st.step_s) == n - 1 and st.decode_tokens_per_s > 0
    streamed = [int(t[0]) for t in c.stream([ids], max_new_tokens=6)]
    assert streamed == hf_generate(16)[len(ids):len(ids) + 6]


def test_the_compiled_object() -> None:
    c = compiled("reference")
    assert isinstance(c, compiler.Compiled) and "tiny.gguf" in repr(c)
    assert c.tokenizer.decode(c.tokenizer.encode("he the")) == "he the"
    g = c.graph  # the step graph until a forward call is traced
    assert [n for n, _ in g.inputs[:4]] == ["input_ids", "position_ids", "attention_mask", "past_len"]
    assert sum(n.op == "dequant_gguf" for n in g) == 19  # the tied head and the embedding share one
    weights = {p: t.dtype.name for p, t in g.params.items() if t.rank == 2}
    assert sorted(weights.values()).count("f32") == 3 and set(weights.values()) == {"f32", "u8"}  # F16, BF16, F32


def test_a_forward_call_traces_the_file_weights(tmp_path: Path) -> None:
    c = compiler.GGUFCompiled(compiled("reference").gguf, "reference", "dce", dump_dir=tmp_path)  # the file read once
    ids = torch.tensor([[5, 6, 256, 7]])
    with torch.no_grad():
        want = hf_model()(ids).logits
    got = c(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert sum(n.op == "dequant_gguf" for n in c.graph) == 19 and str(c.pass_manager) == "dce"
    assert "dequant_gguf" in (tmp_path / "000_input.ir").read_text() and (tmp_path / "001_dce.ir").exists()


def test_save_writes_the_step_graph_and_it_loads_back(tmp_path: Path) -> None:
    c = compiled("reference")
    out = c.save(tmp_path / "tiny-step")
    assert "dequant_gguf" in (out / "model.ir").read_text()
    ids = c.tokenizer.encode(PROMPT)
    again = compiler.GGUFCompiled(c.gguf, "reference", None)  # nothing traced
    again.generator.load(out)  # the saved blocks, not a new trace
    np.testing.assert_array_equal(again.generate([ids], max_new_tokens=5), c.generate([ids], max_new_tokens=5))


def test_options() -> None:
    with pytest.raises(CompileError, match=r"unknown option\(s\) \['loss'\]; compile_gguf\(\) takes"):
        compiler.compile_gguf(tiny_file(), loss=lambda m: 0)


def test_bad_file_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(GGUFError, match="truncated"):
        compiler.compile_gguf(bad)


# -- the command line --------------------------------------------------------------------------------
def test_cli_generates_from_a_gguf_file(capsys) -> None:
    assert main(["generate", str(tiny_file()), "--prompt", PROMPT, "--max-new-tokens", "6", "--target", "reference"]) == 0
    out, err = capsys.readouterr()
    c = compiled("reference")
    new = hf_generate(16)[len(c.tokenizer.encode(PROMPT)):][:6]
    assert out == PROMPT + c.tokenizer.decode(new, skip_special_tokens=True)
    assert "6 tokens" in err and "tokens/s" in err


def test_cli_errors_name_the_file(tmp_path: Path, capsys) -> None:
    assert main(["generate", str(tmp_path / "none.gguf"), "--prompt", "x"]) == 1
    assert "no such GGUF file" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    assert main(["generate", str(bad), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tritium: error: ") and f"{bad} is not a GGUF file" in err and "Traceback" not in err
