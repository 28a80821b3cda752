"""torch.fx frontend: random MLP and attention-like modules match eager PyTorch (hypothesis);
parameters are named by module path; output structures rebuild; failures name the culprit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ir
from frontends.torch_fx import FX_TO_ATEN, MODULES, supported_targets, trace
from frontends.torch_export import HANDLERS

ACT_MODULES = {"nn.ReLU": nn.ReLU, "nn.GELU": nn.GELU, "nn.GELU(tanh)": lambda: nn.GELU("tanh"), "nn.SiLU": nn.SiLU,
               "nn.Tanh": nn.Tanh, "nn.Sigmoid": nn.Sigmoid, "nn.Identity": nn.Identity}
ACT_FNS = {"F.relu": F.relu, "F.gelu": F.gelu, "F.gelu(tanh)": lambda x: F.gelu(x, approximate="tanh"),
           "F.silu": F.silu, "torch.tanh": torch.tanh, "torch.sigmoid": torch.sigmoid, "torch.relu": torch.relu,
           "Tensor.relu": lambda x: x.relu(), "Tensor.sigmoid": lambda x: x.sigmoid(), "neg-tanh": lambda x: -torch.tanh(x)}
HEADS = ["none", "nn.Softmax", "F.softmax", "Tensor.softmax", "log_softmax", "nn.Flatten", "torch.flatten", "sum", "mean"]


class MLP(nn.Module):
    def __init__(self, dims: list[int], acts: list[str], norm: str, residual: bool, head: str, scale: float):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=i % 2 == 0) for i, (a, b) in enumerate(zip(dims, dims[1:])))
        self.act_mods = nn.ModuleDict({str(i): ACT_MODULES[a]() for i, a in enumerate(acts) if a in ACT_MODULES})
        self.acts, self.norm, self.head, self.scale = acts, norm, head, scale
        self.residual = [residual and a == b for a, b in zip(dims, dims[1:])]
        if norm == "nn.LayerNorm":
            self.ln = nn.LayerNorm(dims[-1])
        elif norm == "F.layer_norm":
            self.ln_w, self.ln_b = nn.Parameter(torch.randn(dims[-1])), nn.Parameter(torch.randn(dims[-1]))
        self.softmax, self.flatten, self.drop = nn.Softmax(dim=-1), nn.Flatten(), nn.Dropout(0.5)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            y = layer(x)
            y = self.act_mods[str(i)](y) if str(i) in self.act_mods else ACT_FNS[self.acts[i]](y)
            x = x + y if self.residual[i] else y
        x = self.drop(x * self.scale - 0.25)
        if self.norm == "nn.LayerNorm":
            x = self.ln(x)
        elif self.norm == "F.layer_norm":
            x = F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b, eps=1e-6)
        h = self.head
        if h == "nn.Softmax":
            x = self.softmax(x)
        elif h == "F.softmax":
            x = F.softmax(x, dim=-1)
        elif h == "Tensor.softmax":
            x = x.softmax(0)
        elif h == "log_softmax":
            x = torch.log_softmax(x, -1)
        elif h == "nn.Flatten":
            x = self.flatten(x)
        elif h == "torch.flatten":
            x = torch.flatten(x, 0)
        elif h == "sum":
            x = x.sum(-1, keepdim=True) / x.size(-1)
        elif h == "mean":
            x = torch.mean(x, dim=0)
        return x


@st.composite
def mlps(draw):
    dims = draw(st.lists(st.integers(1, 12), min_size=2, max_size=4))
    acts = draw(st.lists(st.sampled_from(sorted(ACT_MODULES) + sorted(ACT_FNS)), min_size=len(dims) - 1, max_size=len(dims) - 1))
    model = MLP(dims, acts, draw(st.sampled_from(["none", "nn.LayerNorm", "F.layer_norm"])), draw(st.booleans()),
                draw(st.sampled_from(HEADS)), draw(st.sampled_from([1.0, 0.5, 2.0])))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    return model, (batch + (dims[0],),)


class Attention(nn.Module):
    """Multi-head self-attention the way hand-written models spell it, in several variants."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, fused: bool, sdpa: bool, causal: bool,
                 scale: float | None, masked: bool):
        super().__init__()
        self.h, self.kv, self.d = heads, kv_heads, head_dim
        self.fused, self.sdpa, self.causal, self.scale, self.masked = fused, sdpa, causal, scale, masked
        e = heads * head_dim
        if fused:
            self.qkv = nn.Linear(e, (heads + 2 * kv_heads) * head_dim)
        else:
            self.q, self.k, self.v = nn.Linear(e, e), nn.Linear(e, kv_heads * head_dim, bias=False), nn.Linear(e, kv_heads * head_dim)
        self.o = nn.Linear(e, e)
        self.ln = nn.LayerNorm(e)

    def forward(self, x, mask):
        b, t, e = x.shape
        if self.fused:
            q, k, v = self.qkv(x).split([self.h * self.d, self.kv * self.d, self.kv * self.d], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(b, t, self.h, self.d).transpose(1, 2)
        k = k.reshape(b, t, self.kv, -1).permute(0, 2, 1, 3)
        v = torch.transpose(v.view(b, t, self.kv, self.d), 1, 2)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if self.masked else None,
                                               is_causal=self.causal and not self.masked, scale=self.scale,
                                               enable_gqa=self.kv < self.h)
        else:
            s = torch.matmul(q, k.transpose(-2, -1))
            s = s * self.scale if self.scale is not None else s / math.sqrt(self.d)
            if self.masked:
                s = s + mask
            o = F.softmax(s, dim=-1) @ v
        o = o.transpose(1, 2).contiguous().reshape(b, t, e)
        return self.ln(x + self.o(o)), k


@st.composite
def attentions(draw):
    heads = draw(st.integers(1, 4))
    sdpa = draw(st.booleans())
    kv = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0])) if sdpa else heads
    causal, masked = draw(st.booleans()), draw(st.booleans())
    model = Attention(heads, kv, draw(st.integers(1, 6)), draw(st.booleans()), sdpa, causal,
                      draw(st.sampled_from([None, 0.3])), masked)
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    mask = torch.randn(t, t)
    if causal:
        mask = mask.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return model, ((b, t, heads * model.d), mask)


def _check(model: nn.Module, args: tuple, call_ir) -> ir.Graph:
    imp = trace(model, args)
    g = imp.graph
    ir.verify(g)
    assert ir.parse(str(g)) == g
    with torch.no_grad():
        want = model.eval()(*args)
    got = call_ir(imp, args)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    return g


@settings(max_examples=40, deadline=None)
@given(mlps(), st.integers(0, 2**31 - 1))
def test_fx_mlp_matches_eager(call_ir, case, seed):
    model, (shape,) = case
    torch.manual_seed(seed)
    _check(model, (torch.randn(shape),), call_ir)


@settings(max_examples=40, deadline=None)
@given(attentions(), st.integers(0, 2**31 - 1))
def test_fx_attention_matches_eager(call_ir, case, seed):
    model, (shape, mask) = case
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    _check(model, (torch.randn(shape), mask), call_ir)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, y):
        return self.fn(x, y)


ZOO = {  # one line per mapped target family; x: f32[2, 3, 4], y: f32[4]
    "split": lambda x, y: torch.split(x, [1, 3], dim=-1)[1] + x.split(2, -1)[0].sum(),
    "chunk/unbind": lambda x, y: torch.chunk(x, 2, 1)[1] * torch.unbind(x, 0)[1] + x.unbind(1)[2].unsqueeze(1),
    "compare/where": lambda x, y: torch.where(x > y, x, y - 1) + (x <= 0.5).float() + x.eq(y).to(x.dtype),
    "masked_fill/clamp": lambda x, y: x.masked_fill(x < 0, -2.0).clamp(-1.0, 0.5) + torch.clamp(y, min=0.0),
    "pow/sqrt/rsqrt": lambda x, y: torch.pow(x, 2) + (x * x + 1).rsqrt() + x.abs().sqrt() ** 3 + 2 ** y,
    "exp/log/erf": lambda x, y: torch.exp(-x * x) + (x.abs() + 1).log() + torch.erf(x) + y.reciprocal().sin().cos(),
    "reductions": lambda x, y: x.mean((0, 1)) + torch.sum(x, 2, keepdim=True) + x.amax(-1, keepdim=True) - x.mean(),
    "rsub/neg/div": lambda x, y: 1 - x / y - (-x) / 3 + torch.true_divide(x, 2) + torch.div(y, x.abs() + 1),
    "matmul/mm/bmm": lambda x, y: (torch.bmm(x, x.transpose(1, 2)) + x.unbind(0)[0].mm(x.unbind(0)[1].t())).sum(-1) + torch.matmul(x, y),
    "shape": lambda x, y: x.view(6, 4).reshape(2, 12).view_as(x).permute(2, 0, 1).flatten(1).unsqueeze(1).expand(4, 5, 6) * y.view(4, 1, 1),
    "cast": lambda x, y: (x.double() + y.half().float().type_as(x)).to(torch.float32).detach().clone(),
    "cat": lambda x, y: torch.cat((x, y.expand(2, 3, 4)), dim=1).softmax(1) + torch.concat([x, x], 1).sum(0, keepdim=True),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_fx_zoo_matches_eager(name, call_ir):
    x, y = torch.randn(2, 3, 4), torch.rand(4) + 0.5
    _check(Fn(ZOO[name]), (x, y), call_ir)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 16)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.gain = nn.Parameter(torch.full((8,), 2.0))

    def forward(self, ids, bias: float = 1.0):
        x = self.emb(ids)
        x = self.block(self.fc1(x)) * self.gain + bias
        a, b = x.chunk(2, dim=-1)
        both = torch.cat([b, a], -1).unsqueeze(0).squeeze(0)
        return {"logits": self.head(x), "pair": (both.to(torch.float64), F.embedding(ids, self.emb.weight).float())}


def test_fx_params_named_by_module_path_and_tied(call_ir, diff):
    model = TwoLayer()
    ids = torch.tensor([[1, 2, 3], [4, 5, 9]])
    imp = trace(model, (ids,))
    assert list(imp.graph.params) == ["emb.weight", "fc1.weight", "fc1.bias", "block.1.weight", "block.1.bias", "gain"]
    assert np.array_equal(imp.graph.weights["fc1.weight"], model.fc1.weight.detach().numpy())
    assert [str(t) for _, t in imp.graph.inputs] == ["i64[2, 3]"]
    got = call_ir(imp, (ids,))
    with torch.no_grad():
        want = model(ids)
    assert isinstance(got, dict) and isinstance(got["pair"], tuple)  # out_spec rebuilds the structure
    assert got["pair"][0].dtype == torch.float64
    assert diff(got, want) <= 1e-5


def test_fx_rejects_unsupported_module_and_indexing():
    with pytest.raises(ir.UnsupportedOpError, match=r"module torch.nn.modules.rnn.GRU .*node rnn, in rnn"):
        trace(_Seq(nn.GRU(4, 4)), (torch.randn(2, 3, 4),))

    class Index(nn.Module):
        def forward(self, x):
            return x[:, 1:] * 2

    with pytest.raises(ir.UnsupportedOpError, match=r"tensor indexing .*torch_export"):
        trace(Index(), (torch.randn(2, 4),))


class _Seq(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def test_fx_dropout_in_training_mode_is_rejected():
    class Drop(nn.Module):
        def forward(self, x):
            return F.dropout(x, 0.1)  # training=True by default: random, not an inference graph

    with pytest.raises(ir.UnsupportedOpError, match="training mode"):
        trace(Drop(), (torch.randn(2, 4),))


def test_fx_trace_failure_points_to_torch_export():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ir.UnsupportedOpError, match=r"symbolic_trace could not trace Branchy.*torch_export\.export"):
        trace(Branchy(), (torch.randn(2),))


def test_fx_table_maps_onto_export_handlers():
    """Every fx target means an ATen op that the torch.export frontend handles: one meaning per op."""
    import operator

    assert all(e.op in HANDLERS or e.op is operator.getitem for e in FX_TO_ATEN.values())
    assert {nn.Linear, nn.Embedding, nn.LayerNorm, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softmax,
            nn.Dropout, nn.Identity, nn.Flatten} <= set(MODULES)
    names = supported_targets()
    assert "torch._C._nn.scaled_dot_product_attention" in names  # F.scaled_dot_product_attention
    assert "Tensor.view" in names and "nn.Linear" in names
