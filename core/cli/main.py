"""The `corral` entry point: the commands a user expects at once (top-level help, list, ps) answer
without loading typer; every other command line goes to the typer app (corral.cli.app)."""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from corral.cli.fast import run_fast

    try:
        code = run_fast(sys.argv[1:] if argv is None else argv)
        if code is not None:
            sys.exit(code)
        from corral.cli.app import app

        app(args=argv, prog_name="corral")
    except KeyboardInterrupt:  # outside a command (e.g. while parsing): leave quietly
        sys.exit(130)


def __getattr__(name: str) -> Any:
    """``corral.cli.main.app`` (what tests hand to typer's CliRunner) loads the typer app on first use."""
    if name == "app":
        from corral.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
