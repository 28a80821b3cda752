"""Extern kernels: the CPU backend's escape hatch for ops without a NumPy template.

    @register_kernel("lut_linear")
    def lut_linear(node: ir.Node, graph: ir.Graph) -> Callable[..., np.ndarray]:
        table = pack(graph.weights[...], node.attrs)     # once, at build time
        return lambda x, *weights: run_c_kernel(table, x)

A factory is called once per node when the graph is built, so it can precompute or pack from the
node's attrs and the graph's weights; the callable it returns runs on every call. Generated code
calls it with the node's operand arrays in order (`v9 = k2(v7, w4, w5)`), bound as a module global,
so every extern call is visible in the source. When the node's attributes hold symbolic dims the
call also passes `syms=(n0, ...)`: the values of `kernel_symbols(node)`, in that order.

A registered kernel takes precedence over a template; its factory may decline a node by returning
None (e.g. a dtype it has no code for), and the op's template (else its reference) runs it. A kernel must not modify its arguments and
must not keep them across calls (their buffers are reused); it may return a cached array (the
generated code never writes into a kernel's result, and copies it when it is a graph output).

Ops with neither a template nor a kernel run their NumPy reference (`kernel_for`), which is the
spec: this is how the quantized-weight ops run until native kernels are registered for them.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import ir
from ir.errors import UnsupportedOpError
from ir.ops import OpDef
from ir.interpreter import eval_attrs
from ir.shapes import symbols

Kernel = Callable[..., np.ndarray]
KernelFactory = Callable[[ir.Node, ir.Graph], Kernel]

KERNELS: dict[str, KernelFactory] = {}


def register_kernel(op_name: str) -> Callable[[KernelFactory], KernelFactory]:
    """Decorator: `factory(node, graph) -> callable` builds the kernel of every `op_name` node."""
    def deco(factory: KernelFactory) -> KernelFactory:
        KERNELS[op_name] = factory
        return factory
    return deco


def has_reference(op: OpDef) -> bool:
    return type(op).reference is not OpDef.reference


def kernel_symbols(node: ir.Node) -> list[str]:
    """Symbols in the node's dim attributes, sorted: what `syms=` carries, in this order."""
    op = ir.OPS[node.op]
    found: set[str] = set()
    for k, spec in op.attrs.items():
        if k in node.attrs and spec.kind in ("dim", "dims"):
            for d in (node.attrs[k] if spec.kind == "dims" else [node.attrs[k]]):
                found |= symbols(d)
    return sorted(found)


def reference_kernel(node: ir.Node) -> Kernel:
    """The op's NumPy reference as a kernel (attrs with static dims evaluated once)."""
    op = ir.OPS[node.op]
    names = kernel_symbols(node)
    if not names:
        attrs = eval_attrs(op, node.attrs, {})
        return lambda *args: op.reference(list(args), attrs)

    def run(*args: np.ndarray, syms: tuple[int, ...]) -> np.ndarray:
        return op.reference(list(args), eval_attrs(op, node.attrs, dict(zip(names, syms))))
    return run


def kernel_for(node: ir.Node, graph: ir.Graph) -> Kernel:
    """The registered kernel of the node's op (unless it declines), else its NumPy reference; UnsupportedOpError if neither."""
    k = KERNELS[node.op](node, graph) if node.op in KERNELS else None
    if k is not None:
        return k
    op = ir.OPS.get(node.op)
    if op is None or not has_reference(op):
        why = "is not a registered op" if op is None else "has no reference implementation"
        raise UnsupportedOpError(
            f"target='cpu' cannot run op {node.op!r} (node %{node.name}): it has no NumPy template "
            f"(backends/cpu/templates.py), no registered kernel (backends.cpu.kernels.register_kernel) and {why}")
    return reference_kernel(node)


__all__ = ["KERNELS", "Kernel", "KernelFactory", "register_kernel", "kernel_for", "kernel_symbols", "has_reference"]
