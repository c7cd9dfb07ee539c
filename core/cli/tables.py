"""`corral list` and `corral ps` as tables (or JSON): plain functions, free of typer, so that the fast
entry point (corral.cli.fast) and the typer commands print exactly the same thing."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from corral.cli.common import connect, human_size, print_json, time_ago, time_until


def print_columns(header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> None:
    """Ollama's tab-aligned table: columns padded to the widest cell, three spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        line = "   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        sys.stdout.write(line + "\n")


def list_models(as_json: bool = False) -> None:
    """The models in the store (NAME, ID, SIZE, MODIFIED), newest first."""
    data = connect().request("GET", "/api/tags") or {}
    models = data.get("models") or []
    if as_json:
        print_json(models)
        return
    rows = [(m.get("name", ""), (m.get("digest") or "")[:12], human_size(m.get("size")),
             time_ago(m.get("modified_at"))) for m in models]
    print_columns(("NAME", "ID", "SIZE", "MODIFIED"), rows)


def processor(m: dict[str, Any]) -> str:
    """``100% CPU``, ``100% GPU`` or ``48%/52% CPU/GPU``, from size and size_vram."""
    size, vram = m.get("size") or 0, m.get("size_vram") or 0
    if not size or vram <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    gpu = round(100 * vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def list_loaded(as_json: bool = False) -> None:
    """The models loaded in memory now (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    data = connect().request("GET", "/api/ps") or {}
    models = data.get("models") or []
    if as_json:
        print_json(models)
        return
    rows = [(m.get("name", ""), (m.get("digest") or "")[:12], human_size(m.get("size")), processor(m),
             str(m.get("context_length") or ""), time_until(m.get("expires_at"))) for m in models]
    print_columns(("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"), rows)
