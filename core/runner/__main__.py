"""Entry point of a runner subprocess: ``python -m corral.runner --fd N``."""

from __future__ import annotations

import sys

from corral.runner.child import main

if __name__ == "__main__":
    sys.exit(main())
