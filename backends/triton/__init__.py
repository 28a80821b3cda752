"""`target="cuda"`: the graph lowered to generated Triton kernels and a host function that launches them.

    exe = TritonBackend().build(g)   # needs a CUDA GPU, or TRITON_INTERPRET=1 (kernels run on CPU)
    print(exe.source)                # the generated module: kernels k0, k1, ... and def forward(...)
    outs = exe([x])                  # NumPy in, NumPy out, like ir.run(g, [x])

fusion.py decides what is computed inside whose kernel, exprs.py writes pointwise ops as Triton
expressions, kernels.py holds the templates (reductions, norms, matmul, attention, ...), codegen.py
prints the module and aot.py compiles every kernel to cubin for real GPUs without one.
"""
from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
from typing import Any, Iterator, Sequence

import numpy as np

import ir
from ir.errors import CompileError, RuntimeShapeError
from ir.interpreter import bind_inputs, node_error
from ir.ops.shape import check_ids
from ir.shapes import evaluate

from ..base import Backend, register_backend
from .codegen import Generated, generate
from .kernels import GPU_TILES, INTERPRETER_TILES

TILES = {"gpu": GPU_TILES, "interpreter": INTERPRETER_TILES}

MODULE_FILE = "forward.py"
NO_GPU = ("target='cuda' found no CUDA GPU (torch.cuda.is_available() is False). To run the generated Triton "
          "kernels on the CPU, in Triton's interpreter (slow, for testing), set TRITON_INTERPRET=1 in the "
          "environment before starting Python; or compile with target='cpu'.")


def _triton() -> Any:
    try:
        import triton
    except ImportError as e:
        raise CompileError(f"target='cuda' needs Triton, which is not installed ({e}); `pip install triton` "
                           "(Linux), or compile with target='cpu'") from None
    return triton


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device() -> str:
    """Where the kernels run: the GPU, or the CPU under TRITON_INTERPRET=1; else a clear error."""
    import torch

    if interpreting():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    raise CompileError(NO_GPU)


def to_torch(a: np.ndarray, dev: str) -> Any:
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: same bits as torch's
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.clone() if dev == "cpu" else t.to(dev)  # never share memory with the caller's array


def to_numpy(t: Any, dt: ir.DType) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(dt.np)
    return t.numpy()


def load_module(source: str, bindings: dict[str, Any], jit: Any) -> dict[str, Any]:
    """Execute the generated module with its globals bound; registered with linecache so that
    tracebacks and Triton (which reads kernel source through inspect) see the generated lines."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = f"<tritium-triton-{digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns: dict[str, Any] = {"__name__": f"tritium_triton_{digest}", "_jit": jit, **bindings}
    exec(compile(source, filename, "exec"), ns)  # generated from whitelisted pieces only (codegen.py)
    return ns


class TritonExecutable:
    """The compiled module: call it with the graph's input arrays; `.source` is its text."""

    def __init__(self, g: ir.Graph, gen: Generated, tiles: str | None = None) -> None:
        """tiles: "gpu" or "interpreter" (larger tiles: fewer interpreted programs); by default the
        interpreter's when TRITON_INTERPRET=1."""
        triton = _triton()
        self.graph, self.source, self.kernels, self.launches = g, gen.source, gen.kernels, gen.launches
        self.device = device()
        tiles = tiles or ("interpreter" if interpreting() else "gpu")
        if tiles not in TILES:
            raise CompileError(f"tiles must be one of {sorted(TILES)}, got {tiles!r}")
        weights = {w: to_torch(g.weights[p], self.device) for w, p in gen.weights.items()}
        weights.update({name: to_torch(a, self.device) for name, a in gen.derived.items()})
        ns = load_module(gen.source, {"_dev": self.device, "_T": TILES[tiles], **weights}, triton.jit)
        self._ns, self._forward = ns, ns["forward"]
        self._stub = ir.Graph(g.name, list(g.inputs))
        self._out_types = [g.types()[o] for o in g.outputs]
        self._ids = embedding_ids(g)

    @property
    def files(self) -> dict[str, str]:
        """What `tritium compile --emit DIR` writes: the module (kernels and host code)."""
        return {MODULE_FILE: self.source}

    @contextlib.contextmanager
    def recording(self, dry: bool = False) -> Iterator[set]:
        """Within it, every kernel launch records its argument types and constexprs (aot.LaunchKey)
        into the yielded set: what aot.compile_launches compiles for real GPUs. Launches use the GPU's
        tiles meanwhile (what a GPU would run). `dry`: launch nothing (the host code still runs:
        results are garbage, the launches are exact)."""
        from .aot import Recorder

        sink: set = set()
        saved = {k: self._ns[k] for k in [*self.kernels, "_T"]}
        self._ns.update({k: Recorder(k, self._ns[k], sink, run=not dry) for k in self.kernels})
        self._ns["_T"] = TILES["gpu"]
        try:
            yield sink
        finally:
            self._ns.update(saved)

    def forward_torch(self, *inputs: Any) -> list[Any]:
        """Run on torch tensors already on the kernels' device (contiguous, the graph's dtypes and
        shapes: unchecked), returning device tensors: what benchmarks time."""
        return self._forward(*inputs)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        env = bind_inputs(self._stub, list(inputs))  # the reference runtime's checks and messages
        for i, rows, n in self._ids:  # ids are checked here, once per call: a kernel would read past the table
            try:
                check_ids(inputs[i], evaluate(rows, env))
            except RuntimeShapeError as e:
                raise node_error(e, n, "target='cuda'") from None
        outs = self._forward(*(to_torch(np.asarray(a), self.device) for a in inputs))
        return [to_numpy(o, t.dtype) for o, t in zip(outs, self._out_types)]


def embedding_ids(g: ir.Graph) -> list[tuple[int, ir.Dim, ir.Node]]:
    """(input position, table rows, node) for each embedding whose ids are a graph input: the inputs that
    `TritonExecutable` checks on the host before it launches anything (a computed id that is out of range is
    clamped by the kernel: exprs.py's _wrap)."""
    pos = {"%" + name: i for i, (name, _) in enumerate(g.inputs)}
    types = g.types()
    return [(pos[n.operands[1]], types[n.operands[0]].shape[0], n) for n in g.nodes
            if n.op in ("embedding", "gguf_embedding") and n.operands[1] in pos]


@register_backend
class TritonBackend(Backend):
    name = "cuda"
    capabilities = frozenset({"symbolic_shapes", "codegen"})
    lowering = "fuse_rms_norm,fold_repeat_kv,dce"

    def __init__(self) -> None:  # fail at compile(), not at the first call
        _triton()
        device()

    def build(self, g: ir.Graph, tiles: str | None = None) -> TritonExecutable:
        return TritonExecutable(g, generate(g), tiles)


__all__ = ["TritonBackend", "TritonExecutable", "generate", "interpreting", "device"]
