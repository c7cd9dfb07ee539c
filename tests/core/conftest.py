"""Fixtures for the core's own tests: the session-wide tiny GGUF from corral.testing."""

from __future__ import annotations

from corral.testing.fixtures import sample_images, tiny_gguf, tiny_gguf_spec, tiny_projector

__all__ = ["sample_images", "tiny_gguf", "tiny_gguf_spec", "tiny_projector"]
