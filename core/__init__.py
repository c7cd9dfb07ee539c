"""corral: a local LLM runtime that speaks the Ollama and OpenAI APIs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
# The Ollama API version corral's /api/version reports: the one whose routes and fields it implements
# (clients gate on it: Codex's --oss mode refuses servers below 0.13.4, where /v1/responses arrived).
OLLAMA_API_VERSION = "0.13.4"

__all__ = ["OLLAMA_API_VERSION", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``corral.hookimpl`` for plugins, imported on first use: a CLI command that loads no plugin
    (``corral list``) should not pay for pluggy."""
    if name == "hookimpl":
        from corral.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
