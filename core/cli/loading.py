"""Load a model before its first answer and show the load's progress, as a pull's is shown."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from corral.cli.common import human_size


def load_model(client: Any, model: str, extras: dict[str, Any] | None = None) -> None:
    """Ask the server to load ``model`` (a chat with no messages) and draw its progress on stderr.

    A model already loaded answers at once and nothing is drawn. ``extras`` (keep_alive, options)
    must match the chat that follows, or that chat would load the model again with other options.
    """
    stream = client.stream("POST", "/api/chat", {"model": model, "messages": [], "stream": True,
                                                 **(extras or {})})
    try:
        follow_load(stream, model)
    except KeyboardInterrupt:
        stream.close()  # the server stops loading the model
        raise


def follow_load(lines: Iterable[dict[str, Any]], model: str, *, fancy: bool | None = None) -> None:
    """Draw a load's progress lines (``status``, ``completed``, ``total``) until its final line."""
    if fancy is None:
        fancy = sys.stderr.isatty()
    if fancy:
        _follow_bar(lines, model)
        return
    reported = 0  # quarters printed, to keep logs short
    for line in lines:
        total, done = line.get("total") or 0, line.get("completed") or 0
        if line.get("done") or not total:
            continue
        quarter = min(3, 4 * done // total)
        if quarter >= reported:
            reported = quarter + 1
            print(f"loading {model}: {human_size(done)}/{human_size(total)} ({100 * done // total}%)",
                  file=sys.stderr, flush=True)


def _follow_bar(lines: Iterable[dict[str, Any]], model: str) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

    from corral.cli.common import err_console

    # A spinner until the first weights are loaded (a load that is not needed ends before it shows),
    # then a bar; it disappears when the model is ready, as Ollama's spinner does.
    with Progress(SpinnerColumn(), TextColumn(escape(f"loading {model}")), BarColumn(), TaskProgressColumn(),
                  console=err_console(), transient=True) as bar:
        task = bar.add_task("load", total=None)
        for line in lines:
            total = line.get("total") or 0
            if total and not line.get("done"):
                bar.update(task, completed=line.get("completed") or 0, total=total)
