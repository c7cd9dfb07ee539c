"""The fast entry point: `corral --help`, `list` and `ps` answer without typer and print what the typer
app prints; every other command line still goes to the typer app."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from corral.cli import fast
from corral.cli.main import app

from .conftest import LiveServer

HEAVY = ("typer", "click", "rich", "pydantic", "litestar", "httpx", "pluggy", "uvicorn", "prompt_toolkit")


def test_help_lists_exactly_the_typer_apps_commands() -> None:
    group = typer.main.get_command(app)
    shown = {(panel, name, text) for panel, commands in fast.PANELS for name, text in commands}
    registered = {(getattr(cmd, "rich_help_panel", None), name, (cmd.help or "").strip().splitlines()[0])
                  for name, cmd in group.commands.items() if not cmd.hidden}
    assert shown == registered
    assert fast.SUMMARY == (group.help or "").strip()
    assert {opt for param in group.params for opt in param.opts} == {"--version", "-v"}


def test_fast_commands_import_nothing_heavy(live_server: LiveServer) -> None:
    code = ("import sys\nfrom corral.cli.fast import run_fast\n"
            "codes = [run_fast(a) for a in ([], ['--help'], ['list'], ['ls', '--json'], ['ps'])]\n"
            f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
            "print(codes, heavy, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **live_server.env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[0, 0, 0, 0, 0] []"


def _timeless(table: str) -> str:
    """A table with its relative times (MODIFIED, UNTIL) blanked: the two runs are a moment apart, and a
    model made seconds ago is "9 seconds ago" in one and "10 seconds ago" (a wider column) in the other."""
    table = re.sub(r"(Less than a second|\d+ [a-z]+) (ago|from now)", r"<\2>", table)
    return re.sub(r" {2,}", "  ", table)


@pytest.mark.parametrize("args", [["list"], ["ls"], ["list", "--json"], ["ps"], ["ps", "--json"]])
def test_fast_and_typer_paths_print_the_same(cli_env: LiveServer, tiny_model: str, args: list[str]) -> None:
    fast_run = subprocess.run([sys.executable, "-m", "corral.cli", *args], env=dict(os.environ),
                              capture_output=True, text=True, timeout=120)
    typer_run = CliRunner().invoke(app, args)
    assert fast_run.returncode == typer_run.exit_code == 0, fast_run.stderr + typer_run.output
    assert _timeless(fast_run.stdout) == _timeless(typer_run.stdout)
    if args[0] != "ps":
        assert tiny_model in fast_run.stdout


@pytest.mark.parametrize("args", [["list", "--help"], ["list", "-x"], ["ps", "x"], ["run", "m"],
                                  ["--version"]])
def test_everything_else_goes_to_typer(args: list[str]) -> None:
    assert fast.run_fast(args) is None


def test_bare_corral_prints_the_help_and_succeeds() -> None:
    proc = subprocess.run([sys.executable, "-m", "corral.cli"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout == fast.help_text()
    assert "Usage: corral" in proc.stdout and "  pull      Pull a model from a registry." in proc.stdout
