"""Backends turn final IR into something that runs. Importing this registers the built-in ones."""
from . import cpu, reference, triton  # noqa: F401  (registration side effect)
from .base import BACKENDS, Backend, Executable, get_backend, register_backend

__all__ = ["BACKENDS", "Backend", "Executable", "get_backend", "register_backend"]
