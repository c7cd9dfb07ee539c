"""The typer app: every `corral` command, its options and help, and CorralError turned into exit codes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

# Command modules import only typer at module level; their heavy imports (litestar, uvicorn, rich
# progress, prompt_toolkit, the plugin manager) happen inside the command that needs them, so
# `corral --help` and `corral list` start fast.
from corral.cli import backends, models, ps, run, serve, worker
from corral.cli.common import UsageError
from corral.cli.report import report_error
from corral.errors import CorralError


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
