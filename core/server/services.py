"""What the route handlers use, kept on ``app.state``: the engine, the store, metrics and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Request

from corral.config import Config
from corral.server.metrics import Metrics

if TYPE_CHECKING:
    from corral.store import Store


@dataclass
class Services:
    """The engine (generation), the store (models on disk), metrics and the config."""

    config: Config
    engine: Any  # corral.engine.Engine; typed loosely so the server imports without it
    store: Store
    metrics: Metrics


def services(request: Request[Any, Any, Any]) -> Services:
    """The services of the app serving ``request``."""
    return request.app.state.services  # type: ignore[no-any-return]
