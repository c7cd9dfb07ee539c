"""The HTTP server: Ollama (/api) and OpenAI (/v1) wire layers over the engine, on Litestar."""

from __future__ import annotations

from corral.server.app import create_app

__all__ = ["create_app"]
