"""How a failed command reads: one red line with the error, dimmed detail lines, then a hint."""

from __future__ import annotations

import os
import sys

from corral.cli.common import err_console
from corral.errors import CorralError, ModelNotFoundError, ServerUnavailableError


def _debug() -> bool:
    from corral.config import parse_bool

    return parse_bool(os.environ.get("CORRAL_DEBUG"))


def _hint(exc: CorralError) -> str:
    if isinstance(exc, ServerUnavailableError):
        return ("check that 'corral serve' runs (or CORRAL_HOST points at one); "
                "CORRAL_DEBUG=1 shows the traceback")
    if isinstance(exc, ModelNotFoundError):
        if str(exc).startswith("couldn't find model"):
            return "see the loaded models with 'corral ps'"
        return "see the models you have with 'corral list', or get one with 'corral pull NAME'"
    if "manifest: cannot reach" in str(exc):  # RegistryUnreachableError, also when it came in-band
        return ""  # the message says why already: no network is one line, not a debugging session
    if getattr(exc, "status", None) in (401, 403):
        return "the server wants an API key: set CORRAL_API_KEY to the key it was started with"
    return "set CORRAL_DEBUG=1 for the traceback"


def report_error(exc: CorralError) -> None:
    """One red line (the message), any detail lines dimmed, then a hint."""
    from rich.markup import escape

    console = err_console()
    first, _, rest = str(exc).partition("\n")
    console.print(f"[bold red]Error:[/bold red] [red]{escape(first)}[/red]")
    if rest:
        console.print(f"[dim]{escape(rest)}[/dim]")
    if _debug():
        import traceback

        sys.stderr.write("".join(traceback.format_exception(exc)))
    elif hint := _hint(exc):
        console.print(f"[dim]hint: {escape(hint)}[/dim]")
