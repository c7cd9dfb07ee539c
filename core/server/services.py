"""What the route handlers use, kept on ``app.state``: the engine, the store, metrics and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request

from corral.config import Config
from corral.engine import Engine
from corral.server.metrics import ServerMetrics
from corral.store import Store


@dataclass
class Services:
    """The engine (generation), the store (models on disk), metrics and the config."""

    config: Config
    engine: Engine
    store: Store
    metrics: ServerMetrics


def services(request: Request[Any, Any, Any]) -> Services:
    """The services of the app serving ``request``."""
    return request.app.state.services  # type: ignore[no-any-return]
