"""Layout: linear layers that read the same input become one, its output sliced (horizontal fusion).

    %q = linear(%h, @q.w)                           %qkv = linear(%h, @q.w.fused.0)   (rows of q, k, v)
    %k = linear(%h, @k.w)              ->           %q = slice(%qkv) {dim = -1, start = 0, end = 576}
    %v = linear(%h, @v.w)                           %k = slice(%qkv) {... 576 .. 768}  ...

A transformer's q/k/v projections and its MLP's gate/up read one normalized activation. As one
layer the activation is read once, a LUT kernel builds its tables once (they depend only on the
input), and the call overhead is paid once: at batch 1 every one of these matters. Works on
`linear` over weight parameters (rows concatenated) and on `lut_linear` (tiles concatenated: every
part but the last must fill whole 64-row tiles, and the parts must agree on planes, columns,
groups and tables), and on `gguf_linear` (block rows of one type and width concatenated; the
activations are quantized once). lut_linear and gguf_linear are exact: each output row is computed as
before. linear computes the same sums, which BLAS may block differently for the larger matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir
from ir.ops.quant.lut import TILE

from .base import Pass, register_pass

# op -> (operand index, axis) of the row dimension of each weight operand after x (bias is last)
ROWS = {"linear": [(1, 0)], "lut_linear": [(1, 1), (2, 2), (3, 1)], "gguf_linear": [(1, 0)]}


def _key(g: ir.Graph, n: ir.Node) -> tuple | None:
    """What fused parts must share, or None if `n` cannot take part."""
    if n.op not in ROWS or any(o[0] != "@" or o[1:] not in g.weights for o in n.operands[1:]):
        return None
    params = [g.params[o[1:]] for o in n.operands[1:len(ROWS[n.op]) + 1]]
    if n.op == "lut_linear":  # bits [P, tiles, pairs, 64], coef [P, ng, out], offs [ng, out]
        return (n.op, n.operands[0], tuple(sorted(n.attrs.items())), params[0].shape[0], params[0].shape[2:],
                params[1].shape[:2], params[2].shape[0], params[1].dtype.name)
    if n.op == "gguf_linear":  # blocks [out, row_bytes]: rows of one type and width stack
        return (n.op, n.operands[0], tuple(sorted(n.attrs.items())), params[0].shape[1])
    return (n.op, n.operands[0], params[0].shape[1], params[0].dtype.name)


def _out(g: ir.Graph, n: ir.Node) -> int:
    return g.params[n.operands[1][1:]].shape[0] if n.op in ("linear", "gguf_linear") else g.params[n.operands[2][1:]].shape[2]


def _fits(g: ir.Graph, group: list[ir.Node]) -> bool:
    return group[0].op in ("linear", "gguf_linear") or all(_out(g, n) % TILE == 0 for n in group[:-1])


def _fuse(g: ir.Graph, group: list[ir.Node]) -> None:
    first = group[0]
    nw = len(ROWS[first.op])
    operands = [first.operands[0]]
    for (k, axis) in ROWS[first.op]:
        parts = [np.asarray(g.weights[n.operands[k][1:]]) for n in group]
        name = g.fresh_param(first.operands[k][1:] + ".fused")
        g.weights[name] = np.ascontiguousarray(np.concatenate(parts, axis=axis))
        g.params[name] = ir.TensorType(g.params[first.operands[k][1:]].dtype, g.weights[name].shape)
        operands.append("@" + name)
    outs = [_out(g, n) for n in group]
    if any(len(n.operands) > nw + 1 for n in group):  # a bias on any part: zeros for the others
        dt = first.type.dtype.np
        bias = np.concatenate([np.asarray(g.weights[n.operands[-1][1:]]) if len(n.operands) > nw + 1
                               else np.zeros(o, dt) for n, o in zip(group, outs)])
        name = g.fresh_param(first.name + ".bias.fused")
        g.weights[name], g.params[name] = bias.astype(dt), ir.TensorType(first.type.dtype, bias.shape)
        operands.append("@" + name)
    t = first.type.with_shape(first.type.shape[:-1] + (sum(outs),))
    fused = ir.Node(g.fresh_name(first.name + ".fused"), first.op, tuple(operands), dict(first.attrs), t, first.loc)
    g.nodes.insert(g.nodes.index(first), fused)
    start = 0
    for n, o in zip(group, outs):
        attrs = ir.OPS["slice"].normalize_attrs({"dim": -1, "start": start, "end": start + o, "step": 1})
        g.nodes[g.nodes.index(n)] = ir.Node(n.name, "slice", (fused.ref,), attrs, n.type, n.loc)
        start += o


@register_pass
@dataclass(frozen=True)
class FuseLinears(Pass):
    """Fuse the linear (or lut_linear) layers that read the same input into one; see the module doc."""

    name = "fuse_linears"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        groups: dict[tuple, list[ir.Node]] = {}
        for n in g.nodes:
            k = _key(g, n)
            if k is not None:
                groups.setdefault(k, []).append(n)
        before = set(g.params)
        for group in groups.values():
            if len(group) > 1 and _fits(g, group):
                _fuse(g, group)
        used = {o for n in g.nodes for o in n.operands}
        for name in before:
            if "@" + name not in used:
                del g.params[name]
                g.weights.pop(name, None)
        return g
