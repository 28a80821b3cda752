"""The reference runtime: runs any graph with each op's NumPy reference implementation."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .errors import RuntimeShapeError, TritiumError, VerifyError
from .graph import Graph, Node
from .shapes import evaluate, fmt_shape

__all__ = ["RuntimeShapeError", "bind_inputs", "eval_attrs", "node_error", "run"]


def bind_inputs(g: Graph, args: Sequence[np.ndarray]) -> dict[str, int]:
    """Check inputs against the declared types; return the value of every symbol."""
    if len(args) != len(g.inputs):
        raise RuntimeShapeError(f"graph @{g.name} takes {len(g.inputs)} inputs ({', '.join('%' + n for n, _ in g.inputs)}), got {len(args)}")
    env: dict[str, int] = {}
    for (name, t), a in zip(g.inputs, args):
        if a.ndim != t.rank:
            raise RuntimeShapeError(f"input %{name} must be {t}, got rank {a.ndim} shape {list(a.shape)}")
        if a.dtype != t.dtype.np:
            raise RuntimeShapeError(f"input %{name} must be {t}, got dtype {a.dtype}")
        for d, s in zip(t.shape, a.shape):
            if isinstance(d, str) and d.isidentifier() and d not in env:
                env[d] = int(s)
    for (name, t), a in zip(g.inputs, args):
        want = [evaluate(d, env) for d in t.shape]
        if list(a.shape) != want:
            raise RuntimeShapeError(f"input %{name} must be {t} (= {want} here), got shape {list(a.shape)}")
    return env


def node_error(e: BaseException, n: Node | None, runtime: str) -> TritiumError:
    """The typed error for an exception raised while `runtime` ran node n (None: unknown), naming it: a
    RuntimeShapeError for what these inputs' values caused (an index out of range), else a TritiumError that
    names the op and the original error (a bug in that runtime, or in the op's kernel)."""
    where = f"%{n.name} = {n.op}: " if n is not None else ""
    if isinstance(e, RuntimeShapeError):
        return RuntimeShapeError(f"{where}{e}")
    if isinstance(e, IndexError):
        return RuntimeShapeError(f"{where}an index is out of range ({e}; {runtime})")
    if isinstance(e, TritiumError):
        return e
    return TritiumError(f"{runtime} {n.op if n else 'graph'} failed{f' at %{n.name}' if n else ''}: {type(e).__name__}: {e}")


def eval_attrs(op: Any, attrs: dict[str, Any], env: dict[str, int]) -> dict[str, Any]:
    """The node's attrs with symbolic dims evaluated for the symbol values in `env`."""
    out = dict(attrs)
    for k, spec in op.attrs.items():
        if spec.kind == "dim" and k in out:
            out[k] = evaluate(out[k], env)
        elif spec.kind == "dims" and k in out:
            out[k] = [evaluate(d, env) for d in out[k]]
    return out


def run(g: Graph, args: Sequence[np.ndarray], check: bool = True,
        observe: Callable[[Node, list[np.ndarray]], None] | None = None) -> list[np.ndarray]:
    """Run `g` on NumPy inputs. With `check`, every result is checked against its declared type.
    `observe(node, operand_values)` is called before each node runs (calibration statistics)."""
    from .ops import OPS

    env = bind_inputs(g, args)
    missing = [p for p in g.params if p not in g.weights]
    if missing:
        raise VerifyError(f"parameter(s) {', '.join('@' + m for m in missing[:5])} have no weights bound; "
                          "load them (compiler.load) or set graph.weights")
    values: dict[str, np.ndarray] = {"%" + n: a for (n, _), a in zip(g.inputs, args)}
    values.update({"@" + k: v for k, v in g.weights.items()})
    last_use = {o: i for i, n in enumerate(g.nodes) for o in n.operands}
    keep = set(g.outputs)
    with np.errstate(all="ignore"):  # IEEE semantics: inf/nan propagate as in torch
        for i, n in enumerate(g.nodes):
            op = OPS[n.op]
            if observe is not None:
                observe(n, [values[o] for o in n.operands])
            try:
                out = op.reference([values[o] for o in n.operands], eval_attrs(op, n.attrs, env))
            except RuntimeShapeError as e:  # these inputs, not the reference: say which node refused them
                raise node_error(e, n, "reference") from None
            except Exception as e:  # name the node; the reference is the spec, so anything else is a bug
                raise node_error(e, n, "reference") from e
            out = np.asarray(out)
            if check:
                want = [evaluate(d, env) for d in n.type.shape]
                if list(out.shape) != want or out.dtype != n.type.dtype.np:
                    raise TritiumError(f"%{n.name} = {n.op}: reference gave {out.dtype}{list(out.shape)}, "
                                       f"declared {n.type} (= {fmt_shape(want)})")
            values[n.ref] = out
            for o in n.operands:
                if last_use.get(o) == i and o.startswith("%") and o not in keep:
                    values.pop(o, None)
    return [values[o] for o in g.outputs]
