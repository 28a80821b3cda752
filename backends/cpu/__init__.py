"""`target="cpu"`: the graph lowered to one C library with one entry (native/, the default where a C
compiler with OpenMP is present), else to a generated module of straight-line NumPy code.

    exe = CpuBackend().build(g)
    print(exe.source)            # the generated module: def forward(x0, ...)
    outs = exe([x])              # list of arrays, like ir.run(g, [x])

codegen.py writes the module from the per-op templates (templates.py) and extern kernels
(kernels.py), reusing dead buffers (memory.py). The source is compiled under the file name
`<tritium-cpu-HASH>` and registered with linecache, so tracebacks show the generated lines.
"""
from __future__ import annotations

import hashlib
import linecache
import os
import warnings
from typing import Any, Sequence

import numpy as np

import ir
from ir.errors import TritiumError
from ir.interpreter import node_error

from ..base import Backend, register_backend
from .codegen import Generated, generate, input_count_error
from . import attention_kernel, dense_kernel, gguf_kernel, lut_kernel, norm_kernel, sparse_kernel  # noqa: F401  (register their ops' kernels)
from .kernels import kernel_for, register_kernel
from . import native

MODULE_FILE = "forward.py"  # name of the generated module in `files` (tritium compile --emit DIR)


class CpuExecutable:
    """The compiled module: call it with the graph's input arrays; `.source` is its text."""

    def __init__(self, g: ir.Graph, gen: Generated) -> None:
        self.graph, self.source, self.stats = g, gen.source, gen.stats
        digest = hashlib.sha256(gen.source.encode()).hexdigest()[:16]
        self.filename = f"<tritium-cpu-{digest}>"
        code = compile(gen.source, self.filename, "exec")
        linecache.cache[self.filename] = (len(gen.source), None, gen.source.splitlines(True), self.filename)
        namespace: dict[str, Any] = {"__name__": f"tritium_cpu_{digest}", **gen.constants}
        exec(code, namespace)  # the source is generated from whitelisted pieces only (see source.py)
        self._forward = namespace["forward"]
        self._kernels = {k: v for k, v in gen.constants.items() if k.startswith("k") and callable(v)}
        self._arity = len(g.inputs)

    @property
    def files(self) -> dict[str, str]:
        """What `tritium compile --emit DIR` writes: relative path -> text: the module, and the C
        source of every generated kernel it calls (kernels/<name>.c, named as in the module)."""
        out = {MODULE_FILE: self.source}
        for name, k in sorted(self._kernels.items()):
            if getattr(k, "source", None):
                out[f"kernels/{name}.c"] = k.source
        return out

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != self._arity:
            raise input_count_error(self.graph, inputs)
        try:
            return self._forward(*inputs)
        except Exception as e:  # as the reference runtime does: a typed error naming the node
            raise self._failed(e) from None if isinstance(e, TritiumError) else e

    def _failed(self, e: Exception) -> TritiumError:
        """The typed error for what the module raised, naming the node whose lines raised it (each node's
        lines start with its comment `# %name = op -> type`, in graph order)."""
        tb, line = e.__traceback__, 0
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        k = sum(s.lstrip().startswith("# %") for s in self.source.splitlines()[:line]) - 1
        return node_error(e, self.graph.nodes[k] if 0 <= k < len(self.graph.nodes) else None, "target='cpu' (NumPy)")


@register_backend
class CpuBackend(Backend):
    name = "cpu"
    capabilities = frozenset({"symbolic_shapes", "all_ops", "codegen"})
    # spelled-out RMSNorms -> rms_norm; sdpa reads the kv heads, not repeat_kv's copies; low-bit linears ->
    # lut_linear (T-MAC tables, lut_kernel.py); linears and embeddings over GGUF blocks -> gguf_linear (integer
    # kernels, gguf_kernel.py) and gguf_embedding; q/k/v and gate/up -> one linear each; linears behind a sparsify
    # -> sparse_input_linear (sparse_kernel.py; after fuse_linears, so q/k/v sharing one sparsify select once);
    # then drop what they left unused
    lowering = "fuse_rms_norm,fold_repeat_kv,pack_lut,pack_gguf,fuse_linears,pack_sparse,dce"

    def build(self, g: ir.Graph) -> CpuExecutable | native.NativeExecutable:
        """The native step (one C library) where a C compiler with OpenMP is present and
        $TRITIUM_CPU_MODE is not "numpy"; else the NumPy module, with a warning when the compiler is missing."""
        if os.environ.get("TRITIUM_CPU_MODE", "native") != "numpy":
            if native.available():
                return native.build(g)
            warnings.warn("target='cpu': no C compiler with OpenMP (set CC); running the generated NumPy module",
                          stacklevel=2)
        return CpuExecutable(g, generate(g))


__all__ = ["CpuBackend", "CpuExecutable", "Generated", "generate", "kernel_for", "register_kernel"]
