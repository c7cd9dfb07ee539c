"""`corral create -f Modelfile`: parse locally, upload local files as blobs, then POST /api/create."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def create(
    model: Annotated[str, typer.Argument(help="Name for the new model.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Modelfile to read.")] = Path("Modelfile"),
    quantize: Annotated[str | None, typer.Option(
        "--quantize", "-q", help="Quantize an F16/F32 model: q4_K_M, q4_K_S, q8_0.")] = None,
) -> None:
    """Create a model from a Modelfile."""
    raise NotImplementedError
