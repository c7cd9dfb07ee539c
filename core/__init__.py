"""corral: a local LLM runtime that speaks the Ollama and OpenAI APIs."""

from __future__ import annotations

from corral.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
