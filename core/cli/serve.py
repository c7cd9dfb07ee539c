"""`corral serve`: choose the backend (failing before any HTTP starts), then run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated

import typer

from corral.cli.common import UsageError, err_console


def _settings_help() -> str:
    from corral.config import SETTINGS

    # Typer's rich help joins single newlines into one paragraph: one paragraph per variable.
    rows = "\n\n".join(f"[bold]{s.env}[/bold]  {s.help}" + (f" [dim](default {s.default})[/dim]" if s.default
                                                               else "") for s in SETTINGS)
    return "Start the corral server.\n\n[bold]Environment variables[/bold]\n\n" + rows


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Fail with a clear line, before the app starts, when the address is taken."""
    import socket

    from corral.errors import CorralError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Same option uvicorn sets, so a port in TIME_WAIT is not reported as taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CorralError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(is another corral or ollama server running there? set CORRAL_HOST or --host)") from None


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind, [scheme://]host[:port] "
                                                  "(default: CORRAL_HOST or 127.0.0.1:11434).")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Backend to use, bypassing hardware detection (see 'corral backends'; "
             "default: CORRAL_BACKEND).")] = None,
    workers: Annotated[str | None, typer.Option(
        help="RPC workers to split models over, host:port,... (each runs 'corral worker'; "
             "default: CORRAL_WORKERS).")] = None,
) -> None:
    import msgspec

    from corral.cli.backends import candidates_table
    from corral.cli.common import load_config
    from corral.config import parse_host, parse_workers
    from corral.errors import BackendUnavailableError
    from corral.plugins import load_plugins
    from corral.selection import select_backend

    config = load_config()
    if host:
        try:
            scheme, h, port = parse_host(host)
        except ValueError as exc:
            raise UsageError(f"invalid --host {host!r}: {exc}") from None
        config = msgspec.structs.replace(config, scheme=scheme, host=h, port=port)
    if workers is not None:
        try:
            config = msgspec.structs.replace(config, workers=parse_workers(workers))
        except ValueError as exc:
            raise UsageError(f"invalid --workers: {exc}") from None
    console = err_console()
    plugins = load_plugins(config)
    try:
        chosen, candidates = select_backend(plugins, config, backend)
    except BackendUnavailableError as exc:
        from corral.selection import probe_backends

        # The message lists the candidates as text too; the table says the same, better.
        console.print(candidates_table(probe_backends(plugins, config)))
        raise UsageError(str(exc).split("\n", 1)[0]) from None
    # Runner subprocesses rebuild the config from the environment: the choice must travel with it.
    config = msgspec.structs.replace(config, backend=chosen)
    info = next((c for c in candidates if c.name == chosen), None)
    detail = f" ({info.reason})" if info is not None and info.reason else ""
    console.print(f"corral: backend [bold]{chosen}[/bold]{detail}")
    if info is not None and 0 < info.max_models < config.max_loaded_models:
        # The backend's devices hold one client's models at a time (RPC workers): load one, unload first.
        config = msgspec.structs.replace(config, max_loaded_models=info.max_models)
        console.print(f"corral: backend {chosen} holds {info.max_models} model(s) at a time; "
                      f"CORRAL_MAX_LOADED_MODELS is {info.max_models} here")

    if not _is_loopback(config.host) and not config.api_key:
        console.print(
            f"[bold yellow]WARNING: listening on {config.host}, a non-loopback address, with no "
            "CORRAL_API_KEY: anyone who can reach this machine can use and change your models. "
            "Set CORRAL_API_KEY or bind 127.0.0.1.[/bold yellow]")

    _check_port(config.host, config.port)
    import uvicorn

    from corral.server.app import create_app

    app = create_app(config)
    # Untrusted work (template renders, grammar conversion) runs on worker threads; a 1 ms GIL switch
    # interval (Python's default is 5 ms) lets the event loop answer other clients while they run.
    sys.setswitchinterval(0.001)
    where = f"[{config.host}]" if ":" in config.host else config.host
    console.print(f"corral: listening on {config.scheme}://{where}:{config.port} (models in {config.models})")
    # The app keeps its own access log (corral.server.access, with timings): uvicorn's would double it.
    uvicorn.run(app, host=config.host, port=config.port, access_log=False,
                log_level="debug" if config.debug else "info", timeout_graceful_shutdown=10)


def register(app: typer.Typer) -> None:
    app.command("serve", help=_settings_help(), rich_help_panel="Server")(serve)
    app.command("start", hidden=True, help="Alias of 'serve'.")(serve)
