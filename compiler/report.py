"""What quantization did to each layer: relative error, bits per weight, and the model's size.

    rows, totals = quantization_report(original_graph, quantized_graph)
    print(format_report(rows, totals))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import ir


@dataclass
class LayerRow:
    weight: str
    method: str  # the op chain that rebuilds the weight, e.g. "dequant_codebook+add_sparse"
    shape: tuple[int, ...]
    bits_per_weight: float
    rel_error: float  # ||W - Ŵ||_F / ||W||_F


def _constant_chain(g: ir.Graph, ref: str, by_ref: dict[str, ir.Node], seen: list[ir.Node]) -> bool:
    """Collect the nodes computing `ref` from parameters alone; False if it depends on an input."""
    if ref.startswith("@"):
        return True
    n = by_ref.get(ref)
    if n is None:
        return False
    if all(_constant_chain(g, o, by_ref, seen) for o in n.operands):
        if n not in seen:
            seen.append(n)
        return True
    return False


def rebuilt_weight(g: ir.Graph, node: ir.Node) -> tuple[np.ndarray, list[ir.Node], set[str]] | None:
    """The weight a linear-like node multiplies by, as it is stored (Ŵ), the nodes that rebuild it,
    and the parameters they read. None when the weight is a plain float parameter."""
    by_ref = {n.ref: n for n in g.nodes}
    op = ir.OPS[node.op]
    if node.op == "linear":
        chain: list[ir.Node] = []
        if not _constant_chain(g, node.operands[1], by_ref, chain) or not chain:
            return None
        values: dict[str, Any] = {"@" + k: v for k, v in g.weights.items()}
        for n in chain:
            values[n.ref] = ir.OPS[n.op].reference([values[o] for o in n.operands], n.attrs)
        params = {o for n in chain for o in n.operands if o.startswith("@")}
        return np.asarray(values[node.operands[1]], np.float32), chain, params
    if hasattr(op, "weight"):  # ops that replace the whole linear (int8_linear) say what their weight is
        parts = [g.weights[o[1:]] for o in node.operands[1:] if o.startswith("@")]
        return np.asarray(op.weight(parts, node.attrs), np.float32), [node], {o for o in node.operands if o.startswith("@")}
    return None


def quantization_report(before: ir.Graph, after: ir.Graph) -> tuple[list[LayerRow], dict[str, float]]:
    from passes._quant import source_weight

    rows = []
    for n in after.nodes:
        got = rebuilt_weight(after, n)
        if got is None:
            continue
        w_hat, chain, params = got
        src = source_weight(chain[0]) or ""
        if src not in before.weights:
            continue
        W = np.asarray(before.weights[src], np.float32)
        bits = 8 * sum(after.params[p[1:]].nbytes() for p in params)
        err = float(np.linalg.norm(W - w_hat) / max(np.linalg.norm(W), 1e-30))
        rows.append(LayerRow(src, "+".join(c.op for c in chain), tuple(W.shape), bits / W.size, err))
    q_numel = sum(int(np.prod(r.shape)) for r in rows)
    totals = {
        "bytes_before": float(before.param_bytes()),
        "bytes_after": float(after.param_bytes()),
        "quantized_weights": float(q_numel),
        "bits_per_weight": float(sum(r.bits_per_weight * np.prod(r.shape) for r in rows) / q_numel) if q_numel else 0.0,
    }
    return rows, totals


def format_report(rows: list[LayerRow], totals: dict[str, float]) -> str:
    w = max([len(r.weight) for r in rows] + [6])
    lines = [f"{'weight':<{w}}  {'method':<28} {'shape':>14} {'bits/w':>7} {'rel.err':>9}"]
    lines += [f"{r.weight:<{w}}  {r.method:<28} {str(list(r.shape)):>14} {r.bits_per_weight:>7.3f} {r.rel_error:>9.2e}"
              for r in rows]
    mb = 1e6
    lines.append(f"quantized {int(totals['quantized_weights']):,} weights at {totals['bits_per_weight']:.3f} bits/weight; "
                 f"model {totals['bytes_before'] / mb:.1f} MB -> {totals['bytes_after'] / mb:.1f} MB "
                 f"({100 * totals['bytes_after'] / max(totals['bytes_before'], 1):.1f}%)")
    return "\n".join(lines)


def format_fallbacks(executable: Any) -> str | None:
    """The nodes a native CPU step runs in Python (no C lowering), one per line; None for other executables."""
    found = getattr(executable, "fallbacks", None)
    if found is None:
        return None
    if not found:
        return "native step: every node runs in C"
    return "\n".join([f"native step: {len(found)} node(s) without a C lowering run in Python:"]
                     + [f"  %{name} ({op})" for name, op in found])
