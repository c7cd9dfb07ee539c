"""The Litestar application: routes of both APIs, error handlers, middleware, metrics and lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, get
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin

import corral
from corral.config import Config
from corral.engine import Engine
from corral.runner import runner_quantizer, subprocess_runners
from corral.server.anthropic.routes import ROUTES as ANTHROPIC_ROUTES
from corral.server.errors import AnthropicErrorBody, ErrorBody, OpenAIErrorBody, plain_error
from corral.server.llamaserver.routes import ROUTES as LLAMA_SERVER_ROUTES
from corral.server.metrics import AccessLog, ServerMetrics
from corral.server.ollama.routes import ROUTES as OLLAMA_ROUTES
from corral.server.openai.routes import ROUTES as OPENAI_ROUTES
from corral.server.responses.routes import ROUTES as RESPONSES_ROUTES
from corral.server.security import SecurityMiddleware
from corral.server.services import Services, services
from corral.store import Store

if TYPE_CHECKING:
    from corral.selection import BackendHooks
    from corral.types import ModelHandle

log = logging.getLogger("corral.server")

# How long in-flight generations may run on after SIGTERM before their runners are stopped.
DRAIN_TIMEOUT = 30.0


@get("/metrics", media_type="text/plain; version=0.0.4", operation_id="metrics",
     tags=["operations"], include_in_schema=True)
async def metrics_route(request: Request[Any, Any, Any]) -> str:
    """Prometheus text exposition of every server metric."""
    return services(request).metrics.render()


def _configure_logging(debug: bool) -> None:
    """Make corral's own log lines (the request log above all) visible under uvicorn, once per process."""
    root = logging.getLogger("corral")
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def _register_gauges(metrics: ServerMetrics, engine: Engine) -> None:
    def depth() -> list[tuple[dict[str, str], float]]:
        return [({}, float(engine.scheduler.pending))]

    metrics.gauge("corral_queue_depth", "Requests waiting for a model load or a decode slot", depth)

    def loaded() -> list[tuple[dict[str, str], float]]:
        return [({"model": r.name}, 1.0) for r in engine.running()]

    def memory() -> list[tuple[dict[str, str], float]]:
        out = []
        for r in engine.running():
            out.append(({"model": r.name, "kind": "total"}, float(r.size)))
            out.append(({"model": r.name, "kind": "vram"}, float(r.size_vram)))
        return out

    metrics.gauge("corral_loaded_models", "Models loaded now (1 per loaded model)", loaded)
    metrics.gauge("corral_model_memory_bytes", "Memory held by each loaded model", memory)


# Every error either API can answer, documented with the envelope it really has (Litestar would
# otherwise describe its own validation body, which corral never sends).
_ERROR_STATUSES = (400, 401, 403, 404, 413, 415, 500, 502, 503, 507)


def _document_errors(handlers: list[Any], body: type) -> None:
    spec = ResponseSpec(data_container=body, description="Error", generate_examples=False)
    for handler in handlers:
        handler.responses = {**{status: spec for status in _ERROR_STATUSES}, **(handler.responses or {})}


def _explainer(config: Config) -> Callable[[ModelHandle], str | None] | None:
    """Asks the selected backend why a model's runner stopped (an RPC worker lost, say); the plugins
    are loaded in this process on the first such stop only."""
    if not config.backend:
        return None
    hooks: list[BackendHooks] = []

    def explain(handle: ModelHandle) -> str | None:
        from corral.plugins import load_plugins
        from corral.selection import BackendHooks

        if not hooks:
            hooks.append(BackendHooks(load_plugins(config), str(config.backend)))
        return hooks[0].explain_stop(handle)

    return explain


def create_app(config: Config, *, engine: Engine | None = None, store: Store | None = None) -> Litestar:
    """The corral server app.

    Args:
        config: resolved settings (bind address, origins, API key, body limit, ...).
        engine: a ``corral.engine.Engine``; built from ``config`` (subprocess runners) when None.
        store: a ``corral.store.Store``; built from ``config`` when None, quantizing (create's
            ``quantize``) in runner processes of ``config.backend``.

    Returns:
        The Litestar app; its lifespan stops every runner (draining in-flight work) on shutdown.
    """
    runners = subprocess_runners(config, backend=config.backend, explain=_explainer(config))
    store = store if store is not None else Store.from_config(config, quantizer=runner_quantizer(runners))
    engine = engine if engine is not None else Engine(config, store, runner_factory=runners)
    _configure_logging(config.debug)
    metrics = ServerMetrics()
    _register_gauges(metrics, engine)
    svc = Services(config=config, engine=engine, store=store, metrics=metrics)
    the_store, the_engine = store, engine  # the lifespan closes over these (never None)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # compat(ollama): unreferenced blobs are pruned at startup (CORRAL_NOPRUNE keeps them); in a
        # thread, since a big store means many stat() calls, and never fatal to serving.
        try:
            removed = await asyncio.to_thread(the_store.gc)
            if removed:
                log.info("pruned %d unused blob(s)", len(removed))
        except Exception as exc:
            log.warning("startup pruning skipped: %s", exc)
        try:
            yield
        finally:
            log.info("shutting down: draining in-flight requests and stopping runners")
            await the_engine.shutdown(DRAIN_TIMEOUT)

    def security(app: Any) -> Any:
        return SecurityMiddleware(app, config)

    def access_log(app: Any) -> Any:
        return AccessLog(app, metrics, debug=config.debug)

    _document_errors([*OLLAMA_ROUTES, metrics_route], ErrorBody)
    _document_errors([*OPENAI_ROUTES, *RESPONSES_ROUTES, *LLAMA_SERVER_ROUTES], OpenAIErrorBody)
    _document_errors(ANTHROPIC_ROUTES, AnthropicErrorBody)
    app = Litestar(
        route_handlers=[*OLLAMA_ROUTES, *OPENAI_ROUTES, *RESPONSES_ROUTES, *ANTHROPIC_ROUTES,
                        *LLAMA_SERVER_ROUTES, metrics_route],
        exception_handlers={Exception: plain_error},
        # Outermost first: every request is logged and counted, refused ones included.
        middleware=[access_log, security],
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(title="corral", version=corral.__version__, path="/openapi",
                                     render_plugins=[JsonRenderPlugin()]),
        # The JSON limit is enforced per route by SecurityMiddleware (blob uploads are exempt).
        request_max_body_size=None,
        debug=config.debug,
    )
    app.state.services = svc
    return app

