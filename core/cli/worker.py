"""`corral worker`: llama.cpp's RPC server for this host's best device, for servers that split models."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from corral.cli.common import UsageError

DEFAULT_PORT = 50052  # rpc-server's default
# llama.cpp's RPC server says: never expose it to an open network. Ours, in our words:
INSECURE = (
    "WARNING: an RPC worker has no authentication and no encryption. Any client that can connect can "
    "crash it, read and overwrite its memory, and may run code on this machine. Run it only on a "
    "private network or behind an SSH or WireGuard tunnel, and let --allow name the clients."
)


def _ipv4(host: str) -> ipaddress.IPv4Address:
    """The address to bind; llama.cpp's client and server speak IPv4 only."""
    try:
        return ipaddress.IPv4Address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise UsageError(f"--host {host!r} must be an IPv4 address of this machine "
                         "(llama.cpp's RPC backend does not speak IPv6)") from None


def worker(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback needs --allow.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = DEFAULT_PORT,
    allow: Annotated[list[str] | None, typer.Option(
        help="Client addresses allowed to connect (CIDR, repeatable: --allow 10.0.0.0/24); others are "
             "refused before llama.cpp's server sees a byte.")] = None,
    memory: Annotated[str | None, typer.Option(
        help="Memory each device offers clients, e.g. 8GiB (default: all it has).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads (0: one per physical core).", min=0)] = 0,
    cache: Annotated[str | None, typer.Option(
        help="Folder keeping received weights, so a reconnecting client sends them once "
             "(default: CORRAL_HOME/rpc-cache).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Keep no weights on disk.")] = False,
    backend: Annotated[str | None, typer.Option(
        help="Local backend whose devices to offer (default: the best one here, as 'corral backends').")]
    = None,
) -> None:
    """Offer this machine's GPU (or CPU) to corral servers elsewhere, through llama.cpp's RPC backend.

    List it on the server: CORRAL_WORKERS=host:port, or 'corral serve --workers host:port'.
    """
    import logging
    import os
    import signal
    import threading
    from pathlib import Path

    from corral.cli.common import err_console, load_config
    from corral.config import parse_size
    from corral.plugins import load_plugins
    from corral.rpcgate import AllowList, Gate, free_loopback_port
    from corral.selection import BackendHooks, select_worker_backend

    config = load_config()
    console = err_console()
    address = _ipv4(host)
    try:
        allowed = AllowList.parse(allow or [])
        limit = parse_size(memory) if memory else 0
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if memory and limit <= 0:
        raise UsageError("--memory must be more than 0")
    if not address.is_loopback:
        console.print(f"[bold yellow]{INSECURE}[/bold yellow]")
        if not allowed.networks:
            raise UsageError(f"--host {host} is reachable from other machines: say which clients may "
                             "connect with --allow (e.g. --allow 10.0.0.0/24)")
    cache_dir = None
    if not no_cache:
        folder = Path(cache).expanduser() if cache else config.home / "rpc-cache"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UsageError(f"cannot use {folder} as the weights cache: {exc.strerror or exc}") from None
        cache_dir = str(folder.resolve())

    logging.basicConfig(level=logging.DEBUG if config.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.debug:
        logging.getLogger("corral.llama").setLevel(logging.WARNING)
    host_plugins = load_plugins(config)
    name = select_worker_backend(host_plugins, config, backend)
    # With an allow-list, llama.cpp listens on a private loopback port and the gate owns the public one.
    gate = None
    if allowed.networks:
        private = free_loopback_port()
        try:
            gate = Gate((str(address), port), ("127.0.0.1", private), allowed)
        except OSError as exc:
            raise UsageError(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
        endpoint = f"127.0.0.1:{private}"
    else:
        endpoint = f"{address}:{port}"
    info = BackendHooks(host_plugins, name).start_worker(endpoint, cache_dir=cache_dir, threads=threads,
                                               memory_limit=limit)
    offered = ", ".join(f"{d.name} ({d.description}, {d.memory_free / 2**20:.0f} MiB free of "
                        f"{d.memory_total / 2**20:.0f} MiB)" for d in info.devices)
    console.print(f"corral worker: backend [bold]{name}[/bold] offers {offered}")
    console.print(f"corral worker: listening on {address}:{port}"
                  + (f", clients allowed from {allowed}" if gate else "")
                  + (f"; weights cache {cache_dir}" if cache_dir else "; no weights cache"))

    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()
        if gate is not None:
            gate.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if gate is not None:
        threading.Thread(target=gate.serve_forever, name="corral-gate-accept", daemon=True).start()
    while not done.wait(0.5):
        pass
    console.print("corral worker: stopped")
    # llama.cpp's server thread has no stop and sits in accept(): leave without waiting for it.
    logging.shutdown()
    os._exit(0)


def register(app: typer.Typer) -> None:
    app.command("worker", rich_help_panel="Server")(worker)
