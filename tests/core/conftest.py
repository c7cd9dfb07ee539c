"""Fixtures for the core's own tests: the session-wide tiny GGUF from corral.testing."""

from __future__ import annotations

from corral.testing.fixtures import tiny_gguf, tiny_gguf_spec

__all__ = ["tiny_gguf", "tiny_gguf_spec"]
