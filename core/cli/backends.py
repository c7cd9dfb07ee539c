"""`corral backends`: probe every backend plugin in this process and show what each can do here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from corral.types import BackendInfo


def _devices(info: BackendInfo) -> str:
    from corral.cli.common import human_size

    parts = []
    for d in info.devices:
        mem = f" {human_size(d.memory_free)} free / {human_size(d.memory_total)}" if d.memory_total else ""
        parts.append(f"{d.name} ({d.type}){mem}")
    return "\n".join(parts) or "-"


def candidates_table(infos: list[BackendInfo]) -> Table:
    """The backend table, highest priority first (the order selection uses)."""
    from rich.table import Table

    table = Table(title="backends", title_justify="left", show_lines=False)
    for col in ("NAME", "USABLE", "PRIORITY", "DEVICES", "REASON", "PLUGIN"):
        table.add_column(col, overflow="fold")
    for i in infos:
        usable = "[green]yes[/green]" if i.usable else "[red]no[/red]"
        plugin = f"{i.plugin} {i.version}".strip() or "-"
        table.add_row(i.name, usable, str(i.priority), _devices(i), i.reason or "-", plugin)
    return table


def backends(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the backend plugins, whether each is usable on this machine, and why."""
    import msgspec

    from corral.cli.common import load_config, out_console, print_json
    from corral.plugins import load_plugins
    from corral.selection import probe_backends, select_backend

    config = load_config()
    host = load_plugins(config)
    infos = probe_backends(host, config)
    try:
        chosen: str | None = select_backend(host, config)[0]
    except Exception:  # no usable backend: the table shows why; the error is for `serve`
        chosen = None
    if as_json:
        print_json({"selected": chosen, "backends": msgspec.to_builtins(infos)})
        return
    console = out_console()
    console.print(candidates_table(infos))
    if chosen:
        console.print(f"selected: [bold]{chosen}[/bold]"
                      + (f" (CORRAL_BACKEND={config.backend})" if config.backend else " (by priority)"))
    else:
        console.print("[red]no usable backend: 'corral serve' cannot run models here[/red]")


def register(app: typer.Typer) -> None:
    app.command("backends", rich_help_panel="Server")(backends)
