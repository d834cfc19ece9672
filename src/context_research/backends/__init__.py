"""Serving backends: the real vLLM server (default) and an opt-in simulated one."""

from .base import ServingBackend, make_backend

__all__ = ["ServingBackend", "make_backend"]
