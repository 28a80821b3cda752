"""Fuzz surface "cli": random command lines for `tritium` (every subcommand and option, with values that
are files good and bad, directories, missing paths, stdin, numbers out of range, broken pipelines and
grammars). In process: `main` returns 0 or 1 (1 with one `tritium: error:` line) or argparse exits with 0
or 2, never a traceback. A few run as a subprocess under resource limits (memory, CPU time, a timeout):
no signal, no hang (docs/fuzzing.md).

    pytest tests/fuzz/test_fuzz_cli.py
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_cli.py -k in_process
    TRITIUM_FUZZ_MINUTES=10 pytest tests/fuzz/test_fuzz_cli.py -k subprocess
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzzing import fuzz
from hypothesis import strategies as st

from compiler.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).parents[2]
SPEC = '''
import torch
from frontends.hf_models import tiny


class Chars:
    eos_token_id = None

    def encode(self, text):
        return [(ord(c) - 97) % 128 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def build():
    return tiny("llama"), (torch.tensor([[1, 2, 3]]),)


def tok():
    return tiny("llama"), Chars()


def number():
    return 42, None
'''
FILES = {"good.ir": "graph @g(%x: f32[2, s0]) {\n  %y: f32[2, s0] = neg(%x)\n  %z: f32[2, s0] = neg(%y)\n  return %z\n}\n",
         "bad.ir": "graph @g(%x: f32[2]) {\n  %y: f32[2] = neg(%q)\n}\n", "spec.py": SPEC, "schema.json": '{"type": "integer"}',
         "bad.json": '{"type": [', "g.lark": 'start: "a"+', "bad.lark": "start: (", "x.gguf": "GGUF\x03\x00garbage",
         "hw.toml": "[hardware]\nname = 1\n", "page.html": "<html>"}
BINARY = {"bin.ir": b"\xff\xfe\x00graph", "bin.lark": b"\x80\x81"}
VALUES = list(FILES) + list(BINARY) + [
    "adir", "missing.ir", "-", "spec.py:build", "spec.py:tok", "spec.py:number", "spec.py:nope",
    "spec.py", ":build", "spec.py:", "out", "out/deeper", "good.ir:build", "h100", "a100", "epyc-2core-avx2", "nope",
    "this-machine", "-1", "0", "1", "2", "3", "2.5", "1e309", "nan", "inf", "-0", "99999999999999999999", "0x10",
    "dce", "cse,dce", "fold_transposes,constant_fold,cse,dce", "rtn{bits=99}", "rtn{bits=4,group=16}", "ptqtp{",
    "nope_pass", ",,", "dce{x=1}", "reference", "cpu", "cuda", "bogus", "hello", "", " ", "\x7f", "é", "--", "-x"]
def _all_options() -> list[str]:
    import argparse

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sorted({o for sp in sub.choices.values() for a in sp._actions for o in a.option_strings})


OPTIONS = _all_options()


def argvs() -> st.SearchStrategy[list[str]]:
    command = st.one_of(st.sampled_from(sorted(COMMANDS)), st.sampled_from(["", "-h", "bogus", "--version"]))
    rest = st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=6)), max_size=7)
    return st.builds(lambda c, r: [c, *r], command, rest)


@contextlib.contextmanager
def workdir():
    """A fresh directory with the files the command lines name, as the working directory."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        for name, text in FILES.items():
            Path(d, name).write_text(text)
        for name, data in BINARY.items():
            Path(d, name).write_bytes(data)
        Path(d, "adir").mkdir()
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(cwd)


def check_in_process(case: tuple[list[str], str]) -> None:
    argv, stdin = case
    out, err = io.StringIO(), io.StringIO()
    with workdir(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        saved, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help (0), a usage error (2)
            assert e.code in (0, 2), (argv, e.code, err.getvalue()[-2000:])
            return
        finally:
            sys.stdin = saved
    assert code in (0, 1), (argv, code)
    if code == 1:
        assert "tritium: error: " in err.getvalue(), (argv, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue()[-4000:])


FOUND = [  # what fuzzing found (the command line, stdin): each raised a plain Python error before its fix
    (["analyze", "good.ir:build"], ""),  # a SPEC file that is not Python: AssertionError in load_spec
    (["compile", "good.ir:build"], ""),
    (["compile", "--passes", "good.ir", "spec.py:tok"], ""),  # example inputs that are a tokenizer: TypeError
]


def test_cli_in_process() -> None:
    stdin = st.one_of(st.sampled_from([FILES["good.ir"], FILES["bad.ir"], ""]), st.text(max_size=40))
    fuzz("cli in process", st.tuples(argvs(), stdin), check_in_process, examples=60, slow_s=120, found=FOUND)


# -- a few in a subprocess, under limits ----------------------------------------------------------------------
def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))  # torch reserves much address space; 16 GiB
    resource.setrlimit(resource.RLIMIT_CPU, (240, 240))


def check_subprocess(argv: list[str]) -> None:
    with workdir() as d:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITIUM_CPU_MODE": "numpy"}
        try:
            r = subprocess.run([sys.executable, "-m", "compiler.cli", *argv], cwd=d, env=env, capture_output=True,
                               text=True, timeout=300, preexec_fn=_limits, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"tritium {argv} ran past 300 s") from None
    assert r.returncode in (0, 1, 2), (argv, r.returncode, r.stderr[-3000:])  # < 0: a signal
    assert "Traceback" not in r.stderr, (argv, r.stderr[-3000:])


def test_cli_subprocess() -> None:
    fuzz("cli subprocess", argvs(), check_subprocess, examples=0, slow_s=300,
         found=[["generate", "x.gguf", "--prompt", "hi", "--max-new-tokens", "-5"]])
