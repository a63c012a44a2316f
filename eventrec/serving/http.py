"""The HTTP service (FastAPI): ``POST /rank``, ``POST /events``, ``GET /health``, ``GET /metrics``.

``create_app(service)`` wraps a :class:`~eventrec.serving.core.RankingService`; ``eventrec serve``
runs it with uvicorn on 127.0.0.1. The OpenAPI schema is at ``/openapi.json`` (docs at ``/docs``).
Errors: 413 above the candidate limit, 422 with the offending field (``detail[0].loc``) for malformed
payloads, 409 for events older than the user's last event.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventrec.serving.core import RankingService, ServingError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int | str
    candidates: list[dict[str, Any]] | dict[str, list[Any]] = Field(
        ..., description="ad attribute records (the impressions' item columns), or the same as columns: {column: [values]}, "
        "every list of one length (cheaper to send and parse)")
    context: dict[str, Any] = Field(default_factory=dict, description="the impressions' context columns")
    top_k: int | None = Field(None, ge=1)
    timestamp: int | None = Field(None, ge=0, description="request time in the impressions' unit; default: now")

    @field_validator("candidates", mode="wrap")
    @classmethod
    def _records_or_columns(cls, value: Any, handler):
        """One error at ``candidates`` for a payload that is neither form (not one per union member)."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("must be a list of records or {column: [values]}") from None


class RankedCandidate(BaseModel):
    index: int
    scores: dict[str, float]


class RankResponse(BaseModel):
    user_id: int | str
    model_version: str
    user_state: str
    ranked: list[RankedCandidate]


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int | str
    events: list[dict[str, Any]] = Field(..., min_length=1, description="raw event records (the events file's columns)")


class Metrics:
    """Prometheus text exposition, no client library: counters and latency histograms per endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            counts = self.latency.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))] += 1
            self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds

    def render(self, stats: dict) -> str:
        lines = ["# HELP eventrec_requests_total HTTP requests by endpoint and status.", "# TYPE eventrec_requests_total counter"]
        with self.lock:
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'eventrec_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += ["# HELP eventrec_request_latency_seconds Request latency.", "# TYPE eventrec_request_latency_seconds histogram"]
            for endpoint, counts in sorted(self.latency.items()):
                running = 0
                for bound, n in zip(LATENCY_BUCKETS, counts):
                    running += n
                    lines.append(f'eventrec_request_latency_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {running}')
                running += counts[-1]
                lines.append(f'eventrec_request_latency_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}} {running}')
                lines.append(f'eventrec_request_latency_seconds_sum{{endpoint="{endpoint}"}} {self.latency_sum[endpoint]:.6f}')
                lines.append(f'eventrec_request_latency_seconds_count{{endpoint="{endpoint}"}} {running}')
        counters = {
            "user_cache_hits_total": stats["user_hit"] + stats["user_prefix"],
            "user_cache_misses_total": stats["user_miss"],
            "user_cache_incremental_total": stats["user_incremental"],
            "cold_start_total": stats["cold_start"],
            "events_appended_total": stats["events_appended"],
            "user_cache_evictions_total": stats["user_cache_evictions"],
            "candidate_cache_hits_total": stats["candidate_cache_hits"],
            "candidate_cache_misses_total": stats["candidate_cache_misses"],
            "user_store_corrupt_total": stats["user_store_corrupt"],
            "user_store_errors_total": stats["user_store_errors"],
        }
        gauges = {k: stats[k] for k in ("user_cache_entries", "user_cache_bytes", "candidate_cache_entries", "candidate_cache_bytes")}
        for name, value in counters.items():
            lines += [f"# TYPE eventrec_{name} counter", f"eventrec_{name} {value}"]
        for name, value in gauges.items():
            lines += [f"# TYPE eventrec_{name} gauge", f"eventrec_{name} {value}"]
        return "\n".join(lines) + "\n"


def create_app(service: RankingService) -> FastAPI:
    app = FastAPI(title="eventrec ranking service", version=service.version)
    metrics = Metrics()
    app.state.service, app.state.metrics = service, metrics

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - started)
        return response

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, error: ServingError):
        detail = [{"loc": ["body", *(error.field or "").replace("[", ".").replace("]", "").split(".")] if error.field else ["body"],
                   "msg": error.message, "type": type(error).__name__}]
        return JSONResponse(status_code=error.status, content={"detail": detail})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": service.version, "precision": service.precision, "users_cached": len(service.users)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.render(service.stats())

    @app.post("/rank", response_model=RankResponse)
    def rank(request: RankRequest) -> RankResponse:
        result = service.rank(request.user_id, request.candidates, request.context, request.timestamp, request.top_k)
        ranked = [RankedCandidate(index=int(i), scores={t: float(result.scores[i, j]) for j, t in enumerate(result.task_names)}) for i in result.order]
        return RankResponse(user_id=request.user_id, model_version=service.version, user_state=result.user_state, ranked=ranked)

    @app.post("/events")
    def events(request: EventsRequest) -> dict:
        return service.append_events(request.user_id, request.events)

    return app


def serve(service: RankingService, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
