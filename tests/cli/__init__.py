"""Tests of the corral command line (typer CliRunner, a live server, a real pseudo-terminal)."""
