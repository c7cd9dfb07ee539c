"""Public test kit for corral and its plugins: tiny GGUF writer, fake backend, contract suite."""

from __future__ import annotations

from corral.testing.tinymodel import CHATML_TEMPLATE, TinyModelSpec, write_tiny_gguf

__all__ = ["CHATML_TEMPLATE", "TinyModelSpec", "write_tiny_gguf"]
