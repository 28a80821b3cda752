"""What the weight-quantization passes share: which linear layers to rewrite, and the rewrite.

A method is a function `quantize(name, W) -> Quantized` on one float32 weight [out, in]; the
helper `quantize_linears` walks the graph's linear layers layer by layer (with a progress bar),
then the expert weights of `moe` ops (each an [out, in] linear weight too: `moe(x, ..., dequant_*(...))`),
stores the parts as new parameters `@<weight>.<part>`, and either inserts the method's dequant op
in front of the linear (`linear(x, dequant_*(@w.q, @w.scale))`) or replaces the linear by the
method's own op (`int8_linear(x, @w.q, @w.scale)`). The float weight is dropped once no other
node uses it, so a quantized graph never holds both copies.
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

import ir
from ir.dtypes import DType

PART_SEP = "."


@dataclass
class Quantized:
    """One weight's quantized form.

    op: the op that rebuilds the weight from `parts` (or, with `replaces_linear`, the op that
        replaces the whole linear and takes `(x, *parts, bias?)`).
    parts: part name -> (array of logical values, storage dtype), in operand order.
    """

    op: str
    parts: dict[str, tuple[np.ndarray, DType]]
    attrs: dict[str, Any] = field(default_factory=dict)
    replaces_linear: bool = False

    def bits(self) -> int:
        """Storage bits of all parts (scales, codebooks and sparse parts included)."""
        return 8 * sum(ir.TensorType(dt, a.shape).nbytes() for a, dt in self.parts.values())


def is_head(g: ir.Graph, n: ir.Node) -> bool:
    """The LM head: a linear whose result is a graph output, or whose weight is named lm_head."""
    return n.ref in g.outputs or n.operands[1].endswith("lm_head.weight")


def select_linears(g: ir.Graph, layers: str = "*", head: bool = False) -> list[tuple[ir.Node, str]]:
    """(linear node, weight name) for every linear whose weight is a 2-D float parameter with data,
    whose name matches the glob `layers`; the LM head only when `head`."""
    out = []
    for n in g.nodes:
        if n.op != "linear" or not n.operands[1].startswith("@"):
            continue
        w = n.operands[1][1:]
        t = g.params[w]
        if t.rank != 2 or not t.dtype.is_float or w not in g.weights:
            continue
        if (is_head(g, n) and not head) or not fnmatch.fnmatchcase(w, layers):
            continue
        out.append((n, w))
    return out


def select_experts(g: ir.Graph, layers: str = "*") -> list[tuple[ir.Node, int, str]]:
    """(moe node, operand position, weight name) for every expert weight of a `moe` op (ir/ops/moe.py)
    that is a 2-D float parameter with data, whose name matches `layers`: each is an [out, in] linear's."""
    out = []
    for n in g.nodes:
        for i, o in enumerate(n.operands[3:] if n.op == "moe" else (), start=3):
            t = g.params.get(o[1:]) if o.startswith("@") else None
            if t is not None and t.rank == 2 and t.dtype.is_float and o[1:] in g.weights and fnmatch.fnmatchcase(o[1:], layers):
                out.append((n, i, o[1:]))
    return out


def quantize_linears(g: ir.Graph, quantize: Callable[[str, np.ndarray], Quantized | None], *, desc: str,
                     layers: str = "*", head: bool = False, progress: bool = True) -> ir.Graph:
    """Rewrite the selected linear layers of a copy of `g` with `quantize`; see the module doc."""
    g = g.copy()
    targets = select_linears(g, layers, head)
    experts = select_experts(g, layers)
    _report_matmuls(g, desc)
    made: dict[str, tuple[Quantized, list[str]]] = {}  # weight name -> its parts (a shared weight once)
    rebuilt: dict[str, str] = {}  # weight name -> ref of the node that rebuilds it
    for lin, w in tqdm(targets, desc=desc, unit="layer", disable=None if progress else True, leave=False):
        if w not in made:
            q = quantize(w, np.asarray(g.weights[w], dtype=np.float32))
            made[w] = (q, _add_parts(g, w, q)) if q is not None else (None, [])
        q, refs = made[w]
        if q is None:  # the method leaves this weight as it is (e.g. a shape it has no format for)
            continue
        at = g.nodes.index(lin)
        if q.replaces_linear:
            x, bias = lin.operands[0], list(lin.operands[2:])
            attrs = ir.OPS[q.op].normalize_attrs(q.attrs)
            node = ir.Node(lin.name, q.op, (x, *refs, *bias), attrs, lin.type, lin.loc)
            node.type = ir.OPS[q.op].infer([g.types()[o] for o in node.operands], attrs)
            g.nodes[at] = node
        else:
            if w not in rebuilt:
                attrs = ir.OPS[q.op].normalize_attrs(q.attrs)
                t = ir.OPS[q.op].infer([g.params[r[1:]] for r in refs], attrs)
                dq = ir.Node(g.fresh_name(w + ".dq"), q.op, tuple(refs), attrs, t, lin.loc)
                g.nodes.insert(at, dq)
                rebuilt[w] = dq.ref
            lin.operands = (lin.operands[0], rebuilt[w], *lin.operands[2:])
        _drop_if_unused(g, w)
    _quantize_experts(g, experts, quantize, desc, made, rebuilt, progress)
    return g


def _quantize_experts(g: ir.Graph, experts: list[tuple[ir.Node, int, str]], quantize: Callable[[str, np.ndarray], Quantized | None],
                      desc: str, made: dict, rebuilt: dict[str, str], progress: bool) -> None:
    """Each expert weight of a `moe` op as a linear's: its decoder node feeds the moe operand. A method that
    replaces the whole linear (int8_linear) has no decoder for a weight alone: the experts stay as they are."""
    for moe, i, w in tqdm(experts, desc=desc + " experts", unit="weight", disable=None if progress else True, leave=False):
        if w not in made:
            q = quantize(w, np.asarray(g.weights[w], dtype=np.float32))
            if q is not None and q.replaces_linear:
                print(f"{desc}: the {len(experts)} expert weights of moe layers stay {g.params[w].dtype}: {q.op} "
                      "replaces a whole linear, and the moe op takes expert weights", file=sys.stderr)
                return
            made[w] = (q, _add_parts(g, w, q)) if q is not None else (None, [])
        q, refs = made[w]
        if q is None:
            continue
        if w not in rebuilt:
            attrs = ir.OPS[q.op].normalize_attrs(q.attrs)
            t = ir.OPS[q.op].infer([g.params[r[1:]] for r in refs], attrs)
            dq = ir.Node(g.fresh_name(w + ".dq"), q.op, tuple(refs), attrs, t, moe.loc)
            g.nodes.insert(g.nodes.index(moe), dq)
            rebuilt[w] = dq.ref
        moe.operands = tuple(rebuilt[w] if k == i else o for k, o in enumerate(moe.operands))
        _drop_if_unused(g, w)


def _report_matmuls(g: ir.Graph, desc: str) -> None:
    """GPT-2's Conv1D layers are matmuls by an [in, out] weight until fold_transposes makes them linears."""
    ws = [n.operands[1] for n in g.nodes if n.op == "matmul" and n.operands[1][0] == "@"
          and g.params[n.operands[1][1:]].rank == 2 and g.params[n.operands[1][1:]].dtype.is_float]
    if ws:
        print(f"{desc}: {len(ws)} matmul(s) by a weight ({', '.join(ws[:3])}{', ...' if len(ws) > 3 else ''}) are not "
              f"linear layers and stay unquantized; put fold_transposes before it in the pipeline", file=sys.stderr)


def _add_parts(g: ir.Graph, w: str, q: Quantized) -> list[str]:
    refs = []
    for part, (a, dt) in q.parts.items():
        name = f"{w}{PART_SEP}{part}"
        if name in g.params:
            raise ir.PassError(f"parameter @{name} already exists; was @{w} quantized twice?")
        a = np.ascontiguousarray(a, dtype=dt.np)
        g.params[name] = ir.TensorType(dt, a.shape)
        g.weights[name] = a
        refs.append("@" + name)
    return refs


def _drop_if_unused(g: ir.Graph, w: str) -> None:
    ref = "@" + w
    if ref not in g.outputs and not any(ref in n.operands for n in g.nodes):
        del g.params[w]
        g.weights.pop(w, None)


def source_weight(n: ir.Node) -> str | None:
    """The float weight a quantized node was made from (its first parameter operand, less the part)."""
    for o in n.operands:
        if o.startswith("@") and PART_SEP in o:
            return o[1:].rsplit(PART_SEP, 1)[0]
    return None


def padded_groups(W: np.ndarray, group: int, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] -> ([out, ngroups, group] padded with `fill`, mask of real entries). Group sizes
    that don't divide `in` (SmolLM2's 576 with group 128) leave a short last group, masked."""
    out, n = W.shape
    group = min(group, max(n, 1))  # a group wider than the row is the row (not padded to the group)
    ng = -(-n // group)
    Wp = np.full((out, ng * group), fill, dtype=W.dtype)
    Wp[:, :n] = W
    mask = np.zeros(ng * group, dtype=bool)
    mask[:n] = True
    return Wp.reshape(out, ng, group), np.broadcast_to(mask.reshape(ng, group), (out, ng, group))


def linear_input_stats(g: ir.Graph, calibration: list[list[np.ndarray]], names: set[str] | None,
                       stat: Callable[[np.ndarray], np.ndarray], progress: bool = True) -> dict[str, np.ndarray]:
    """The mean over the calibration tokens of `stat(X)` (a per-token sum, in float64) for the
    input X [tokens, in] of every linear layer whose weight is in `names` (None: all), keyed by
    weight name. Layers that read one value (q/k/v) share one array, computed once per sample."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    src: dict[str, str] = {}  # weight -> input ref
    seen: set[str] = set()  # input refs already counted in this sample

    def observe(n: ir.Node, ins: list[np.ndarray]) -> None:
        if n.op != "linear" or not n.operands[1].startswith("@"):
            return
        w = n.operands[1][1:]
        if names is None or w in names:
            x = src[w] = n.operands[0]
            if x not in seen:
                seen.add(x)
                X = ins[0].reshape(-1, ins[0].shape[-1])
                sums[x] = sums.get(x, 0.0) + stat(X)
                counts[x] = counts.get(x, 0) + X.shape[0]

    for xs in tqdm(calibration, desc="calibration", unit="sample", disable=None if progress else True, leave=False):
        seen.clear()
        ir.run(g, xs, observe=observe)
    means = {x: (sums[x] / counts[x]).astype(np.float32) for x in sums}
    return {w: means[x] for w, x in src.items()}


def linear_input_moments(g: ir.Graph, calibration: list[list[np.ndarray]], names: set[str] | None = None,
                         progress: bool = True) -> dict[str, np.ndarray]:
    """E[x_j^2] of every linear layer's input channel j over the calibration tokens, keyed by
    weight name (the statistic activation-aware methods weight their error with)."""
    def squares(X: np.ndarray) -> np.ndarray:
        x = X.astype(np.float64)
        return np.einsum("ij,ij->j", x, x)

    return linear_input_stats(g, calibration, names, squares, progress)
