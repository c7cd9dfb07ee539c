"""Ollama native API (/api/*): wire structs, conversion to core jobs, route handlers."""
