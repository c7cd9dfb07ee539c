"""`corral ps` (loaded models: PROCESSOR, CONTEXT, UNTIL) and `corral stop` (unload one now)."""

from __future__ import annotations

from typing import Annotated

import typer

from corral.cli import tables
from corral.cli.common import connect


def ps(
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON for scripts.")] = False,
) -> None:
    """List the models loaded in memory now."""
    tables.list_loaded(as_json)


def _same(a: str, b: str) -> bool:
    def norm(n: str) -> str:
        n = n.lower()
        return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"

    return norm(a) == norm(b)


def stop(model: Annotated[str, typer.Argument(help="Model to unload, e.g. gemma3:270m.")]) -> None:
    """Unload a running model now (its memory is freed; the model stays in the store)."""
    from corral.errors import ModelNotFoundError

    # Never start a server just to stop a model: with none running, nothing is loaded.
    client = connect(autostart=False)
    if not client.ping():
        raise ModelNotFoundError(f"couldn't find model \"{model}\" to stop: no corral server is running")
    loaded = (client.request("GET", "/api/ps") or {}).get("models") or []
    match = next((m for m in loaded
                  if _same(m.get("name", ""), model) or _same(m.get("model", ""), model)), None)
    if match is None:
        raise ModelNotFoundError(f"couldn't find model \"{model}\" to stop")
    # As Ollama does: an empty generate with keep_alive 0 unloads the model.
    client.request("POST", "/api/generate", {"model": match.get("model") or model, "keep_alive": 0,
                                              "stream": False})
    typer.echo(f"stopped '{match.get('name') or model}'")


def register(app: typer.Typer) -> None:
    app.command("ps", rich_help_panel="Running")(ps)
    app.command("stop", rich_help_panel="Running")(stop)
