"""The `corral` command: the typer app, its commands, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

# Command modules import only typer at module level; their heavy imports (litestar, uvicorn, rich
# progress, prompt_toolkit, the plugin manager) happen inside the command that needs them, so
# `corral --help` and `corral list` start fast.
from corral.cli import backends, models, ps, run, serve, worker
from corral.cli.common import UsageError, err_console
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


class CorralGroup(TyperGroup):
    """Turns CorralError into a red line and an exit status (2 for usage, 1 otherwise)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, run.normalize_think(args))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            report_error(exc)
            raise typer.Exit(2) from None
        except CorralError as exc:
            report_error(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=CorralGroup,
    name="corral",
    help="corral: large language models on your machine, with the Ollama and OpenAI APIs.",
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if not value:
        return
    from corral import __version__
    from corral.cli.client import Client
    from corral.cli.common import load_config

    client = Client.from_config(load_config())
    server_version = api_version = None
    try:
        if client.ping(timeout=1.0):
            answer = client.request("GET", "/api/version") or {}
            # corral's own version; "version" is the Ollama API version it implements
            server_version = answer.get("corral_version") or answer.get("version")
            api_version = answer.get("version") if answer.get("corral_version") else None
    except CorralError:
        server_version = None
    if server_version:
        suffix = f" (Ollama API {api_version})" if api_version else ""
        typer.echo(f"corral version is {server_version}{suffix}")
        if server_version != __version__:
            typer.echo(f"Warning: client version is {__version__}")
    else:
        typer.echo("Warning: could not connect to a running corral server")
        typer.echo(f"Warning: client version is {__version__}")
    raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", "-v", callback=_version, is_eager=True,
                                          help="Show the client and server versions and exit.")] = False,
) -> None:
    """corral: large language models on your machine, with the Ollama and OpenAI APIs."""
    if ctx.invoked_subcommand is None:  # bare `corral`: the help, and success, as `ollama` does
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


serve.register(app)
run.register(app)
models.register(app)
ps.register(app)
backends.register(app)
worker.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, prog_name="corral")
    except KeyboardInterrupt:  # outside a command (e.g. while parsing): leave quietly
        sys.exit(130)


if __name__ == "__main__":
    main()
