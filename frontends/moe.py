"""Hugging Face mixture-of-experts blocks as one `moe` op per layer.

transformers 5.x stores a block's experts stacked (`gate_up_proj` [E, 2I, H], `down_proj` [E, H, I])
and picks the expert loop through `config._experts_implementation`: "eager" (a loop over the hit
experts with `nonzero`, data-dependent shapes torch.export cannot keep symbolic) or "grouped_mm"
(the default: `sort`, `histc` and a grouped matmul custom op). Neither says "a token runs its k
experts" in a form a compiler can use, so while tracing, `experts_as_moe(model)` selects one more
implementation, "tritium", registered in transformers' own `ALL_EXPERTS_FUNCTIONS`: it calls the
custom op `tritium::moe`, which torch.export keeps as one node and the importer maps onto the IR's
`moe` op (ir/ops/moe.py) with each expert's weights split into its own 2-D parameters
(`...experts.3.gate_up_proj`). The router (softmax, `topk`, Mixtral's renormalisation, Qwen's
`norm_topk_prob`) is the model's own code, traced as it is.

Experts the op cannot express (biases, interleaved gate/up, a custom `_apply_gate`, a norm after each
expert) raise UnsupportedOpError naming the module.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ir.errors import UnsupportedOpError

IMPLEMENTATION = "tritium"
# config.hidden_act -> the moe op's act
ACTS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": None}


@torch.library.custom_op("tritium::moe", mutates_args=())
def moe_op(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
           act: str, gated: bool, transposed: bool) -> torch.Tensor:
    """x [T, H], index/weight [T, k], w_in [E, 2I, H] (gated) or [E, I, H], w_out [E, H, I]
    ([E, in, out] each when transposed): the `moe` op's meaning, in torch."""
    if transposed:
        w_in, w_out = w_in.transpose(1, 2), w_out.transpose(1, 2)
    y = torch.zeros(x.shape, dtype=torch.float32)
    xf = x.float()
    for j in range(index.shape[1]):
        part = torch.zeros_like(y)
        for e in index[:, j].unique().tolist():
            rows = (index[:, j] == e).nonzero()[:, 0]
            h = xf[rows] @ w_in[e].float().T
            if gated:
                g, u = h.chunk(2, dim=-1)
                h = _act(g, act) * u
            else:
                h = _act(h, act)
            part[rows] = (h @ w_out[e].float().T) * weight[rows, j, None].float()
        y += part
    return y.to(x.dtype)


@moe_op.register_fake
def _(x, index, weight, w_in, w_out, act, gated, transposed):
    return torch.empty_like(x)


def _act(h: torch.Tensor, act: str) -> torch.Tensor:
    if act in ("gelu", "gelu_tanh"):
        return torch.nn.functional.gelu(h, approximate="tanh" if act == "gelu_tanh" else "none")
    return {"silu": torch.nn.functional.silu, "relu": torch.relu}[act](h)


def tritium_experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts implementation for transformers' `ExpertsInterface`: the whole loop as `tritium::moe`."""
    from transformers.integrations.moe import _default_apply_gate

    name = type(self).__name__
    why = ("biases" if getattr(self, "has_bias", False) else
           "gate and up interleaved" if not getattr(self, "is_concatenated", True) else
           "a norm after each expert" if getattr(self, "has_post_expert_norm", False) else
           "its own gating (_apply_gate)" if type(self)._apply_gate is not _default_apply_gate else
           "no stacked gate_up_proj/up_proj and down_proj" if not hasattr(self, "down_proj") else None)
    act = ACTS.get(getattr(self.config, "hidden_act", None) or "")
    if why is None and act is None:
        why = f"the activation {getattr(self.config, 'hidden_act', None)!r}"
    if why is not None:
        raise UnsupportedOpError(f"{name}: experts with {why} have no `moe` op form yet (ir/ops/moe.py)")
    gated = getattr(self, "has_gate", True)
    w_in = self.gate_up_proj if gated else self.up_proj
    return moe_op(hidden_states, top_k_index, top_k_weights.to(hidden_states.dtype), w_in, self.down_proj,
                  act, gated, bool(getattr(self, "is_transposed", False)))


def _register() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, tritium_experts_forward)


def has_experts(model: torch.nn.Module) -> bool:
    return any(getattr(type(m), "_apply_gate", None) is not None and hasattr(m, "down_proj") and m.down_proj.dim() == 3
               for m in model.modules())


@contextlib.contextmanager
def experts_as_moe(model: torch.nn.Module) -> Iterator[None]:
    """While tracing: the model's stacked experts run as `tritium::moe` (restored afterwards)."""
    if not (hasattr(model, "set_experts_implementation") and has_experts(model)):
        yield
        return
    _register()
    before: Any = model.get_experts_implementation()
    model.set_experts_implementation(IMPLEMENTATION)
    try:
        yield
    finally:
        model.set_experts_implementation(before)
