"""The command lines that must answer at once: `corral`, `corral --help`, `corral list`/`ls` and
`corral ps` (each with at most `--json`). They run here without typer, click or rich, whose imports
alone cost more than the whole answer; anything else returns None and goes to the typer app.

The help below is the typer app's own table of commands written out (a test keeps them equal)."""

from __future__ import annotations

import sys
from collections.abc import Callable

SUMMARY = "corral: large language models on your machine, with the Ollama and OpenAI APIs."
OPTIONS = (("-v, --version", "Show the client and server versions and exit."),
           ("-h, --help", "Show this message and exit."))
# (panel, ((command, first line of its help), ...)) in the order `corral --help` shows them
PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Server", (
        ("serve", "Start the corral server."),
        ("backends", "List the backend plugins, whether each is usable on this machine, and why."),
        ("worker", "Offer this machine's GPU (or CPU) to corral servers elsewhere, through llama.cpp's RPC "
                   "backend."),
    )),
    ("Running", (
        ("run", "Run a model: answer PROMPT and exit, or chat interactively."),
        ("ps", "List the models loaded in memory now."),
        ("stop", "Unload a running model now (its memory is freed; the model stays in the store)."),
    )),
    ("Models", (
        ("list", "List the models in the store (NAME, ID, SIZE, MODIFIED), newest first."),
        ("show", "Show information about a model."),
        ("pull", "Pull a model from a registry."),
        ("push", "Push a model to a registry."),
        ("create", "Create a model from a Modelfile."),
        ("cp", "Copy a model under a new name (the blobs are shared)."),
        ("rm", "Delete one or more models."),
    )),
)


def help_text() -> str:
    width = max(len(name) for _, commands in PANELS for name, _ in commands)
    opt_width = max(len(flags) for flags, _ in OPTIONS)
    lines = ["Usage: corral [OPTIONS] COMMAND [ARGS]...", "", SUMMARY, "", "Options:"]
    lines += [f"  {flags.ljust(opt_width)}  {text}" for flags, text in OPTIONS]
    for panel, commands in PANELS:
        lines += ["", f"{panel}:"]
        lines += [f"  {name.ljust(width)}  {text}" for name, text in commands]
    lines += ["", "'corral COMMAND --help' shows a command's arguments and options."]
    return "\n".join(lines) + "\n"


def _tables() -> dict[str, Callable[[bool], None]]:
    from corral.cli import tables

    return {"list": tables.list_models, "ls": tables.list_models, "ps": tables.list_loaded}


def run_fast(args: list[str]) -> int | None:
    """The exit status of a command line answered here, or None when the typer app must take it."""
    if not args or args in (["--help"], ["-h"]):
        sys.stdout.write(help_text())
        return 0
    if args[0] not in ("list", "ls", "ps") or len(args) > 2 or any(a != "--json" for a in args[1:]):
        return None
    from corral.cli.common import UsageError
    from corral.errors import CorralError

    try:
        _tables()[args[0]](len(args) == 2)
    except CorralError as exc:
        from corral.cli.report import report_error

        report_error(exc)
        return 2 if isinstance(exc, UsageError) else 1
    return 0
