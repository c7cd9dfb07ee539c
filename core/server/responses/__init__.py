"""OpenAI's Responses API (/v1/responses): Codex, the openai SDK's responses and the Agents SDK."""
