"""compiler.compile: structure of outputs, tracing on first call, re-tracing, options and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
import ir
from frontends.hf_models import tiny


class TwoOut(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: float = 2.0):
        y = self.fc(x)
        return {"y": y, "pair": (y * scale, torch.relu(y))}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_causal_lm_traces_once_for_several_lengths(arch: str) -> None:
    model = tiny(arch)
    c = compiler.compile(model, target="reference")
    for length in (5, 11):
        ids = torch.randint(0, 128, (2, length))
        out = c(ids)
        ref = model(ids, use_cache=False)
        assert type(out) is type(ref)
        assert torch.allclose(out.logits, ref.logits, atol=1e-4, rtol=0)
    assert len(c._specs) == 1, "a dynamic sequence length should need one trace"
    assert any(isinstance(d, str) for d in c.graph.inputs[0][1].shape)


def test_bert_returns_both_outputs() -> None:
    model = tiny("bert")
    ids = torch.randint(0, 128, (2, 6))
    c = compiler.compile(model, (ids,), target="cpu")
    out, ref = c(ids), model(ids)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-4)
    assert torch.allclose(out.pooler_output, ref.pooler_output, atol=1e-4)


def test_nested_outputs_and_retrace_on_new_shape_or_constant() -> None:
    torch.manual_seed(0)
    m = TwoOut().eval()
    c = compiler.compile(m, target="reference")
    with pytest.raises(ir.CompileError, match="not traced yet"):
        _ = c.graph
    x = torch.randn(3, 8)
    out = c(x)
    ref = m(x)
    assert set(out) == {"y", "pair"} and isinstance(out["pair"], tuple)
    assert torch.allclose(out["pair"][0], ref["pair"][0], atol=1e-6)
    c(torch.randn(5, 8))  # static trace: another batch size re-traces
    assert len(c._specs) == 2
    out3 = c(x, scale=3.0)  # a non-tensor argument is baked in: a new value re-traces
    assert len(c._specs) == 3
    assert torch.allclose(out3["pair"][0], m(x, scale=3.0)["pair"][0], atol=1e-6)


def test_example_inputs_trace_eagerly_and_passes_apply() -> None:
    m = TwoOut().eval()
    c = compiler.compile(m, (torch.randn(2, 8),), target="reference", passes="dce")
    assert isinstance(c.graph, ir.Graph) and "linear" in ir.count_ops(c.graph)
    assert c.source is None  # the reference runtime interprets; nothing is generated


def test_cpu_target_exposes_the_generated_module() -> None:
    torch.manual_seed(0)
    m = TwoOut().eval()
    c = compiler.compile(m, (torch.randn(2, 8),), target="cpu")
    # one C library with one entry (backends/cpu/native): the IR line above the linear's function
    assert "one entry `step`" in c.source and "/* %linear: f32[2, 4] = linear(%x, @fc.weight, @fc.bias) */" in c.source
    assert c._specs[0].source == c.source
    x = torch.randn(2, 8)
    assert torch.allclose(c(x)["pair"][1], m(x)["pair"][1], atol=1e-6)
    c(torch.randn(3, 8))  # a re-trace has its own module
    assert len(c._specs) == 2 and c._specs[1].source is not None


def test_compile_an_ir_graph() -> None:
    g = ir.parse("graph @g(%x: f32[3]) {\n  %y: f32[3] = neg(%x)\n  %z: f32[3] = neg(%y)\n  return %z\n}\n")
    c = compiler.compile(g, target="reference", passes="")
    x = np.arange(3, dtype=np.float32)
    assert np.array_equal(c(x), x)


def test_errors_are_typed_and_helpful(monkeypatch: pytest.MonkeyPatch) -> None:
    m = TwoOut()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ir.CompileError, match="no CUDA GPU.*TRITON_INTERPRET=1"):
        compiler.compile(m, target="cuda")
    with pytest.raises(ir.CompileError, match="known targets"):
        compiler.compile(m, target="tpu")
    with pytest.raises(ir.CompileError, match="unknown option"):
        compiler.compile(m, optimise=True)
    with pytest.raises(ir.CompileError, match="nn.Module or an ir.Graph"):
        compiler.compile(lambda x: x)
    with pytest.raises(ir.PassError, match="unknown pass"):
        compiler.compile(m, (torch.randn(2, 8),), passes="no-such-pass")


def test_arguments_the_model_never_takes_are_typed_errors() -> None:
    """Issue 27: a NumPy array or a string passed to compiled(...) raised AttributeError (a NumPy array would
    also have been baked into a fresh trace as a constant); tests/fuzz/test_fuzz_runtime.py found the rest."""
    c = compiler.compile(tiny("llama"), target="reference")
    c(torch.tensor([[1, 2, 3]]))
    for args, kwargs, match in [((np.array([[1, 2, 3]]),), {}, "argument 0 is a numpy.ndarray; call it as the model"),
                                (("hello",), {}, "argument 0 is a str; call it as the model, with torch.Tensor"),
                                ((torch.tensor([[1]]),), {"attention_mask": np.ones((1, 1))}, "attention_mask is a numpy"),
                                ((torch.tensor(0), torch.tensor(0)), {"input_ids": []}, "multiple values for argument"),
                                ((torch.tensor([[1, 2, 128]]),), {}, "embedding: token id 128 is out of range")]:
        with pytest.raises(ir.TritiumError, match=match):
            c(*args, **kwargs)
    with pytest.raises(ir.CompileError, match="example_inputs must be a tuple or list"):
        compiler.compile(tiny("llama"), torch.tensor([[1, 2]]), target="reference")


def test_unsupported_op_names_op_and_source() -> None:
    class Sorts(torch.nn.Module):
        def forward(self, x):
            return torch.sort(x).values

    with pytest.raises(ir.UnsupportedOpError, match=r"aten\.sort.*test_api\.py:\d+"):
        compiler.compile(Sorts(), (torch.randn(4),), target="reference")
