"""Layout: linear layers behind a `sparsify` become `sparse_input_linear`, their weight stored transposed.

    %s = sparsify(%x, @w.colnorm) {keep = 32}            %y = sparse_input_linear(%x, @w.colnorm, @w.t, @b)
    %y = linear(%s, @w, @b)                        ->          {keep = 32, threshold = 0.0}

y = W sparsify(x) + b reads only the columns of W whose inputs are kept; stored as wt = W.T [in, out]
each of those columns is one contiguous row, so a kernel streams half the weight bytes at 50%
sparsity (backends/cpu/sparse_kernel.py). The kernel selects the kept inputs itself, so the sparsify
goes; TEAL's has no scale, and gets a ones vector (|x| * 1 = |x| exactly).

Only f32 linears over bound weight parameters, behind a sparsify that nothing but linears reads
(several may: each gets its own sparse_input_linear). A linear over a quantized weight is not over a
parameter: it stays, with its sparsify, and its kernel runs on the masked x. @w goes when nothing else
reads it. Run after fuse_linears: q/k/v that share one sparsify (TEAL after CSE) fuse into one linear
first, and then select once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import ir

from .base import Pass, register_pass


def _fresh(g: ir.Graph, name: str) -> str:
    return name if name not in g.params and name not in g.weights else g.fresh_param(name)


@register_pass
@dataclass(frozen=True)
class PackSparse(Pass):
    """Rewrite linear(sparsify(x, s), @w, b) into sparse_input_linear(x, s or ones, @w.t, b), @w.t = w.T
    contiguous; see the module doc."""

    name = "pack_sparse"

    def run(self, g: ir.Graph) -> ir.Graph:
        g = g.copy()
        prod, users, types = {n.ref: n for n in g.nodes}, g.users(), g.types()
        outputs = set(g.outputs)
        made: dict[str, str] = {}  # weight -> its transposed parameter (several linears may read one weight)
        ones: dict[str, str] = {}  # a sparsify without scale (TEAL) -> its ones vector
        f32 = ir.dtype("f32")
        for i, lin in enumerate(g.nodes):
            sp = prod.get(lin.operands[0]) if lin.op == "linear" else None
            if sp is None or sp.op != "sparsify" or sp.ref in outputs or types[sp.ref].dtype != f32:
                continue
            w = lin.operands[1][1:]
            if (lin.operands[1][0] != "@" or w not in g.weights or g.params[w].dtype != f32
                    or any(u.op != "linear" or u.operands.index(sp.ref) != 0 for u in users[sp.ref])):
                continue
            if w not in made:
                made[w] = _fresh(g, w + ".t")
                g.weights[made[w]] = np.ascontiguousarray(np.asarray(g.weights[w]).T)
                g.params[made[w]] = ir.TensorType(f32, g.weights[made[w]].shape)
            if len(sp.operands) == 1 and sp.name not in ones:
                D = g.params[w].shape[1]
                ones[sp.name] = _fresh(g, sp.name + ".ones")
                g.weights[ones[sp.name]], g.params[ones[sp.name]] = np.ones(D, np.float32), ir.TensorType(f32, (D,))
            scale = sp.operands[1] if len(sp.operands) == 2 else "@" + ones[sp.name]
            g.nodes[i] = ir.Node(lin.name, "sparse_input_linear", (sp.operands[0], scale, "@" + made[w], *lin.operands[2:]),
                                 dict(sp.attrs), lin.type, lin.loc)
        # the sparsify nodes and weights nothing reads any more
        used = {o for n in g.nodes for o in n.operands}
        g.nodes = [n for n in g.nodes if n.op != "sparsify" or n.ref in used or n.ref in outputs]
        used = {o for n in g.nodes for o in n.operands}
        for w in made:
            if "@" + w not in used:
                del g.params[w]
                g.weights.pop(w, None)
        return g
