"""Show pull/push/create progress: rich bars per layer on a terminal, plain status lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from corral.cli.common import err_console, human_size


def follow(events: Iterable[dict[str, Any]], *, fancy: bool | None = None) -> dict[str, Any] | None:
    """Consume a progress stream, drawing it on stderr. Returns the last event (``success`` normally)."""
    if fancy is None:
        fancy = sys.stderr.isatty()
    return _follow_rich(events) if fancy else _follow_plain(events)


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _follow_plain(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    last: dict[str, Any] | None = None
    last_status = None
    reported: dict[str, int] = {}  # digest -> last quarter reported, to keep logs short
    for ev in events:
        last = ev
        status = ev.get("status", "")
        digest = ev.get("digest")
        total, done = ev.get("total") or 0, ev.get("completed") or 0
        if digest and total:
            quarter = min(4, int(4 * done / total)) if total else 4
            if reported.get(digest, -1) < quarter:
                reported[digest] = quarter
                print(f"{status} {human_size(done)}/{human_size(total)} ({100 * done // total}%)",
                      file=sys.stderr, flush=True)
            continue
        if status != last_status:
            print(status, file=sys.stderr, flush=True)
        last_status = status
    return last


def _follow_rich(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = err_console()
    last: dict[str, Any] | None = None
    last_status = None
    bars: dict[str, TaskID] = {}
    # One bar per layer (size, speed, time left); statuses without sizes (parsing, writing
    # manifest, success) are printed as lines above the bars.
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        for ev in events:
            last = ev
            status = ev.get("status", "")
            digest = ev.get("digest")
            total, done = ev.get("total"), ev.get("completed") or 0
            if digest and total:
                task = bars.get(digest)
                if task is None:
                    label = f"{status.split(' ')[0]} {_short(digest)}"
                    task = bars[digest] = bar.add_task(escape(label), total=total)
                bar.update(task, completed=done, total=total)
            elif status != last_status:
                bar.console.print(escape(status), highlight=False)
            last_status = status
    return last
