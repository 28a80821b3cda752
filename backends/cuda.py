"""`target="cuda"`: the Triton GPU backend is not built yet; say so clearly instead of guessing."""
from __future__ import annotations

from ir.errors import CompileError

from .base import Backend, register_backend


@register_backend
class CudaBackend(Backend):
    name = "cuda"

    def __init__(self) -> None:  # fail at compile(), not at the first call
        raise CompileError(
            "target='cuda' needs the Triton GPU backend, which is not implemented yet. "
            "Use target='reference' (NumPy reference runtime) or target='cpu' for now; once the "
            "Triton backend lands, its kernels can run without a GPU under TRITON_INTERPRET=1.")
