"""Prompt assembly: chat templates (Jinja and Go), JSON schema to GBNF, tool-call and thinking parsers."""
