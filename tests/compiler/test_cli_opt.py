"""The `tritium` command line: opt, passes, ops; user errors exit 1 with a message, no traceback."""
from __future__ import annotations

import io

import ir
from compiler.cli import main

TEXT = """graph @main(%x: f32[2, 3]) {
  %a: f32[] = full() {value = 2.0, dtype = f32}
  %b: f32[] = mul(%a, %a)
  %c: f32[2, 3] = add(%x, %b)
  %d: f32[2, 3] = add(%x, %b)
  %e: f32[2, 3] = mul(%c, %d)
  return %e
}
"""
RESULT = ir.parse("""graph @main(%x: f32[2, 3]) {
  %b: f32[] = full() {value = 4.0, dtype = f32}
  %c: f32[2, 3] = add(%x, %b)
  %e: f32[2, 3] = mul(%c, %c)
  return %e
}""")


def test_opt_prints_the_result(tmp_path, capsys):
    f = tmp_path / "in.ir"
    f.write_text(TEXT)
    assert main(["opt", str(f), "--passes", "constant_fold,cse,dce"]) == 0
    out = capsys.readouterr()
    assert ir.parse(out.out) == RESULT and out.err == ""


def test_opt_reads_stdin_and_writes_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT))
    assert main(["opt", "-", "--passes", "constant_fold,cse,dce", "-o", str(tmp_path / "out.ir")]) == 0
    assert ir.parse((tmp_path / "out.ir").read_text()) == RESULT and capsys.readouterr().out == ""


def test_opt_without_passes_round_trips(tmp_path, capsys):
    (tmp_path / "in.ir").write_text(TEXT)
    assert main(["opt", str(tmp_path / "in.ir")]) == 0
    assert capsys.readouterr().out == str(ir.parse(TEXT))


def test_opt_instrumentation(tmp_path, capsys):
    (tmp_path / "in.ir").write_text(TEXT)
    argv = ["opt", str(tmp_path / "in.ir"), "--passes", "cse,dce", "--print-ir-after-all", "--time-passes",
            "--dump-dir", str(tmp_path / "dump")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "// -----// IR after cse (1/2) //----- //" in err and "// -----// IR after dce (2/2) //----- //" in err
    assert "total" in err
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["000_input.ir", "001_cse.ir", "002_dce.ir"]


def test_malformed_ir_is_exit_1_with_line_and_column(tmp_path, capsys):
    (tmp_path / "bad.ir").write_text("graph @main(%x: f32[2]) {\n  %y: f32[2] = neg(%x\n  return %y\n}\n")
    assert main(["opt", str(tmp_path / "bad.ir"), "--passes", "dce"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tritium: error: line 3, column 3:") and "Traceback" not in err


def test_invalid_ir_and_no_verify(tmp_path, capsys):
    (tmp_path / "bad.ir").write_text("graph @main(%x: f32[2]) {\n  %y: f32[3] = neg(%x)\n  return %y\n}\n")
    assert main(["opt", str(tmp_path / "bad.ir")]) == 1
    assert "line 2" in capsys.readouterr().err
    assert main(["opt", str(tmp_path / "bad.ir"), "--no-verify", "--passes", "cse"]) == 0
    assert "%y: f32[3] = neg(%x)" in capsys.readouterr().out


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    (tmp_path / "in.ir").write_text(TEXT)
    assert main(["opt", str(tmp_path / "in.ir"), "--passes", "cse,dcee"]) == 1
    assert "unknown pass 'dcee'; did you mean 'dce'?" in capsys.readouterr().err
    assert main(["opt", str(tmp_path / "missing.ir")]) == 1
    assert capsys.readouterr().err.startswith("tritium: error: cannot read")


def test_passes_lists_every_pass(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "constant_fold {max_elements: int = 65536}  [passes.constant_fold]" in out
    assert "dce  [passes.dce]" in out and "cse  [passes.cse]" in out
    assert "fold-double-neg  [plugin:tritium-example-pass]" in out
    assert "    Remove nodes no output" in out


def test_ops_lists_every_op(capsys):
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    for op in ir.OPS.values():
        assert op.signature() in out
    assert "linear(x, weight, bias?)" in out


def test_files_and_directories_in_the_wrong_place_are_user_errors(tmp_path, capsys):
    """Issue 27, item 5: binary input, a directory for -o, a file for --dump-dir printed tracebacks."""
    f = tmp_path / "in.ir"
    f.write_text(TEXT)
    (tmp_path / "bin.ir").write_bytes(b"\x80\x81graph")
    (tmp_path / "file").write_text("x")
    for argv, msg in [(["opt", str(tmp_path / "bin.ir")], "not UTF-8"),
                      (["opt", str(tmp_path)], "cannot read"),
                      (["opt", str(f), "-o", str(tmp_path)], "cannot write"),
                      (["opt", str(f), "--dump-dir", str(tmp_path / "file")], "not a directory")]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("tritium: error:") and msg in err, (argv, err)
