"""Prometheus metrics of the HTTP service, with the standard ``prometheus_client`` (one registry per app).

* ``eventrec_requests_total{endpoint,status}`` and the ``eventrec_request_latency_seconds{endpoint}``
  histogram: ``endpoint`` is the *route template* (``/rank``), never the raw path, and every path no
  route matches is the one label ``"<unmatched>"``, so clients cannot grow the exposition; every
  status is counted, 500 included (:class:`ObserveRequests` wraps the whole app). Label values are
  escaped by ``prometheus_client``.
* the service's own counters and gauges (:meth:`RankingService.stats`), read at each scrape.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import Match

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"
COUNTERS = {  # exposed name (without _total) → key of RankingService.stats(), or a sum of keys
    "user_cache_hits": ("user_hit", "user_prefix"), "user_cache_misses": ("user_miss",), "user_cache_incremental": ("user_incremental",),
    "cold_start": ("cold_start",), "events_appended": ("events_appended",), "user_cache_evictions": ("user_cache_evictions",),
    "candidate_cache_hits": ("candidate_cache_hits",), "candidate_cache_misses": ("candidate_cache_misses",),
    "user_store_corrupt": ("user_store_corrupt",), "user_store_errors": ("user_store_errors",),
    "user_store_local_hits": ("user_store_local_hits",),
}
GAUGES = ("user_cache_entries", "user_cache_bytes", "user_store_local_bytes", "candidate_cache_entries", "candidate_cache_bytes")
log = logging.getLogger("eventrec.serving")


class ServiceCollector:
    """The service's counters and gauges, read from ``stats()`` at each scrape."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        for name, keys in COUNTERS.items():
            yield CounterMetricFamily(f"eventrec_{name}", name.replace("_", " "), value=sum(stats[k] for k in keys))
        for name in GAUGES:
            yield GaugeMetricFamily(f"eventrec_{name}", name.replace("_", " "), value=stats[name])


class Metrics:
    """One registry: request counts and latencies by route template and status, plus the service's stats."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, stats: Callable[[], dict]):
        self.registry = CollectorRegistry()
        self.requests = Counter("eventrec_requests", "HTTP requests by endpoint (route template) and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("eventrec_request_latency_seconds", "Request latency by endpoint (route template).",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ServiceCollector(stats))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: dict, routes: list | None = None) -> str:
    """The matched route's path template (the router's, or found among ``routes`` for a request
    answered before routing, e.g. a 413), or :data:`UNMATCHED`."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes or [] if r.matches(scope)[0] != Match.NONE), None)
    return getattr(route, "path", None) or UNMATCHED


class ObserveRequests:
    """ASGI middleware: counts and times every HTTP request by route template and status; an exception
    that escapes the app is logged and answered with a JSON 500 (counted), keeping the connection."""

    def __init__(self, app: Any, metrics: Metrics, routes: list | None = None):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), {"code": None}

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:  # noqa: BLE001 - the last line of defence: a 500 answer, never a dropped connection
            log.exception("unhandled error on %s %s", scope.get("method"), route_template(scope, self.routes))
            if status["code"] is None:
                status["code"] = 500
                body = b'{"detail":[{"loc":[],"msg":"internal server error","type":"InternalError"}]}'
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(route_template(scope, self.routes), status["code"] or 500, time.perf_counter() - started)
