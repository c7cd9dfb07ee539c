"""OpenAI-compatible API (/v1/*): wire structs, conversion to core jobs, route handlers."""
