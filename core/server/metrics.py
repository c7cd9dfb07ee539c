"""Prometheus metrics: request counts, tokens, latency histograms, queue depth and loaded models."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from corral.errors import InvalidRequestError
from corral.jobs import Chunk, Metrics
from corral.names import parse_name
from corral.server.common import END_USER
from corral.server.streaming import close_quietly

log = logging.getLogger("corral.server.access")

# Seconds. Time to first token spans a cached hit (ms) to a long prompt on CPU (tens of seconds).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 1.0)
REQUEST_BUCKETS = (0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    """A monotonically increasing value per label set."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(tuple(zip(self.label_names, key, strict=True)))} {_num(v)}"


class Histogram:
    """Observations counted into cumulative buckets, with sum and count."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, v: float) -> None:
        with self._lock:
            i = next((i for i, b in enumerate(self.buckets) if v <= b), len(self.buckets))
            self._counts[i] += 1
            self._sum += v

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        acc = 0
        for b, c in zip((*self.buckets, math.inf), self._counts, strict=True):
            acc += c
            yield f'{self.name}_bucket{{le="{_num(b)}"}} {acc}'
        yield f"{self.name}_sum {_num(self._sum)}"
        yield f"{self.name}_count {acc}"


class ServerMetrics:
    """Every metric the server exports. ``gauges`` supplies values read at scrape time (queue, models)."""

    def __init__(self) -> None:
        self.requests = Counter("corral_http_requests_total", "HTTP requests by route, method and status",
                                ("route", "method", "status"))
        self.request_seconds = Histogram("corral_http_request_duration_seconds",
                                         "HTTP request duration (until the last byte)", REQUEST_BUCKETS)
        self.tokens_in = Counter("corral_prompt_tokens_total", "Prompt tokens evaluated (cached included)",
                                 ("model",))
        self.tokens_out = Counter("corral_generated_tokens_total", "Tokens generated", ("model",))
        self.drafted = Counter("corral_draft_tokens_total", "Tokens guessed by speculative decoding",
                               ("model",))
        self.accepted = Counter("corral_draft_accepted_tokens_total",
                                "Guessed tokens the model agreed with (each saved a decode step)",
                                ("model",))
        self.ttft = Histogram("corral_time_to_first_token_seconds",
                              "From request arrival to the first generated text", TTFT_BUCKETS)
        self.token_latency = Histogram("corral_time_per_output_token_seconds",
                                       "Mean decode time per generated token, per request", TOKEN_BUCKETS)
        self.in_flight = 0
        # name -> callable returning [(labels, value)] evaluated at scrape time.
        self.gauges: dict[str, tuple[str, Callable[[], list[tuple[dict[str, str], float]]]]] = {}

    def gauge(self, name: str, help: str, fn: Callable[[], list[tuple[dict[str, str], float]]]) -> None:
        self.gauges[name] = (help, fn)

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.request_seconds, self.tokens_in, self.tokens_out, self.drafted,
                  self.accepted, self.ttft, self.token_latency):
            lines.extend(m.render())
        lines += ["# HELP corral_http_requests_in_flight Requests being served now",
                  "# TYPE corral_http_requests_in_flight gauge",
                  f"corral_http_requests_in_flight {self.in_flight}"]
        for name, (help, fn) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
            for labels, value in fn():
                lines.append(f"{name}{_labels(tuple(sorted(labels.items())))} {_num(value)}")
        return "\n".join(lines) + "\n"

    async def observe(self, model: str, started: float, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """Pass a core stream through, recording time to first token, tokens and per-token latency."""
        first = True
        try:
            async for chunk in chunks:
                if first and (chunk.content or chunk.thinking or chunk.tool_calls):
                    self.ttft.observe(time.perf_counter() - started)
                    first = False
                if chunk.done and chunk.metrics is not None:
                    self.record_done(model, chunk.metrics)
                yield chunk
        finally:
            await close_quietly(chunks)

    def record_done(self, model: str, m: Metrics) -> None:
        model = canonical_model(model)
        self.tokens_in.inc(model, amount=m.prompt_eval_count)
        self.tokens_out.inc(model, amount=m.eval_count)
        self.drafted.inc(model, amount=getattr(m, "draft_count", 0))
        self.accepted.inc(model, amount=getattr(m, "draft_accepted", 0))
        if m.eval_count > 0 and m.eval_duration > 0:
            self.token_latency.observe(m.eval_duration / 1e9 / m.eval_count)


def canonical_model(name: str) -> str:
    """One label per stored model however a client spells it (`GEMMA3:270m`, the full registry form),
    so the series a client can open are bounded by the store; only finished requests get here."""
    try:
        return parse_name(name).display.lower()
    except InvalidRequestError:
        return "invalid"


class AccessLog:
    """ASGI middleware: one log line per request (method, path, status, duration) and request metrics."""

    def __init__(self, app: Any, metrics: ServerMetrics, debug: bool = False) -> None:
        self.app, self.metrics, self.debug = app, metrics, debug

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        self.metrics.in_flight += 1

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            elapsed = time.perf_counter() - started
            # The route template keeps label cardinality bounded (/api/blobs/{digest}, not each digest).
            # Requests refused before routing (Host, key, CSRF, size) have no template: one label for all.
            route = scope.get("path_template") or "unmatched"
            self.metrics.requests.inc(route, scope["method"], str(status))
            self.metrics.request_seconds.observe(elapsed)
            qs = scope.get("query_string") or b""
            query = f"?{qs.decode('latin-1')}" if self.debug and qs else ""
            user = (scope.get("state") or {}).get(END_USER)
            who = f" user={user!r}" if user else ""
            log.info('%s %s%s %d %.1fms%s', scope["method"], scope["path"], query, status, elapsed * 1000,
                     who)
