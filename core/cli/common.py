"""Shared CLI plumbing: settings, the server client (autostarted), consoles and human-readable numbers."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError

if TYPE_CHECKING:
    from rich.console import Console

    from corral.cli.client import Client
    from corral.config import Config


class UsageError(CorralError):
    """A command line that can never work as written; the CLI exits with status 2."""


def load_config() -> Config:
    from corral.config import Config

    try:
        return Config.from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def connect(*, autostart: bool = True, backend: str | None = None) -> Client:
    """A client for the server at CORRAL_HOST, starting a background server first if none answers."""
    from corral.cli.client import Client

    config = load_config()
    client = Client.from_config(config)
    if autostart:
        from corral.cli.autostart import ensure_server

        if ensure_server(client, config, backend=backend):
            err_console().print(f"[dim]started a corral server at {config.base_url} "
                                f"(log: {config.home / 'logs' / 'server.log'})[/dim]")
        elif backend:
            # The backend is chosen when a server starts; a running one keeps its own.
            err_console().print(f"[yellow]warning: a server already runs at {config.base_url}; "
                                f"--backend {backend} applies only to a server this command starts "
                                "(stop it, or run 'corral serve --backend ...')[/yellow]")
    return client


_consoles: dict[bool, Console] = {}


def err_console() -> Console:
    return _console(stderr=True)


def out_console() -> Console:
    return _console(stderr=False)


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    cached = _consoles.get(stderr)
    # CliRunner swaps sys.stdout per invocation; a console bound to an old stream would print nowhere.
    if cached is None or cached.file is not stream:
        cached = Console(file=stream, stderr=stderr, highlight=False, soft_wrap=True)
        _consoles[stderr] = cached
    return cached


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def human_size(n: int | float | None) -> str:
    """Ollama's sizes: decimal units, e.g. ``291 MB``, ``1.6 GB``."""
    if not n:
        return "0 B"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit in ("B", "KB", "MB"):
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    # Go writes nanoseconds; Python's parser takes at most microseconds.
    if "." in t:
        head, _, rest = t.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        t = f"{head}.{digits[:6]}{tz}"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    for size, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute"), (1, "second")):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "less than a second"


def time_ago(text: str | None, now: datetime | None = None) -> str:
    """``4 minutes ago``, as Ollama's MODIFIED column."""
    dt = parse_time(text)
    if dt is None:
        return "unknown"
    now = now or datetime.now(timezone.utc)
    delta = (now - dt).total_seconds()
    if delta < 1:
        return "Less than a second ago"
    return f"{_span(delta)} ago"


def time_until(text: str | None, now: datetime | None = None) -> str:
    """``4 minutes from now`` / ``Forever`` / ``Stopping...``, as Ollama's UNTIL column."""
    dt = parse_time(text)
    if dt is None:
        return "Forever"
    if dt.year > 2200:  # keep_alive < 0: the server writes a far-future time
        return "Forever"
    now = now or datetime.now(timezone.utc)
    delta = (dt - now).total_seconds()
    if delta <= 0:
        return "Stopping..."
    return f"{_span(delta)} from now"


def format_duration(ns: int) -> str:
    """A Go-style duration from nanoseconds: ``1.234567s``, ``523.1ms``, ``84µs``."""
    if ns >= 1_000_000_000:
        s = ns / 1e9
        if s >= 60:
            m, sec = divmod(s, 60)
            return f"{int(m)}m" + f"{sec:.6f}".rstrip("0").rstrip(".") + "s"
        return f"{s:.6f}".rstrip("0").rstrip(".") + "s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.6f}".rstrip("0").rstrip(".") + "ms"
    if ns >= 1000:
        return f"{ns / 1e3:.3f}".rstrip("0").rstrip(".") + "µs"
    return f"{ns}ns"


def metrics_summary(m: dict[str, Any]) -> str:
    """The `--verbose` block Ollama prints after an answer (`api.Metrics.Summary`)."""
    lines = []
    if m.get("total_duration"):
        lines.append(f"total duration:       {format_duration(m['total_duration'])}")
    if m.get("load_duration"):
        lines.append(f"load duration:        {format_duration(m['load_duration'])}")
    if m.get("prompt_eval_count"):
        lines.append(f"prompt eval count:    {m['prompt_eval_count']} token(s)")
    if m.get("prompt_eval_duration"):
        lines.append(f"prompt eval duration: {format_duration(m['prompt_eval_duration'])}")
        rate = m.get("prompt_eval_count", 0) / (m["prompt_eval_duration"] / 1e9)
        lines.append(f"prompt eval rate:     {rate:.2f} tokens/s")
    if m.get("eval_count"):
        lines.append(f"eval count:           {m['eval_count']} token(s)")
    if m.get("eval_duration"):
        lines.append(f"eval duration:        {format_duration(m['eval_duration'])}")
        rate = m.get("eval_count", 0) / (m["eval_duration"] / 1e9)
        lines.append(f"eval rate:            {rate:.2f} tokens/s")
    return "\n".join(lines)
