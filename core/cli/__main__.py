"""`python -m corral.cli`: how the CLI starts a background server with the same interpreter."""

from __future__ import annotations

from corral.cli.main import main

main()
