"""The HTTP service (FastAPI): ``POST /rank``, ``POST /events``, ``GET /health``, ``GET /metrics``, and
the loopback-only operator endpoint ``POST /admin/drop-events``.

``create_app(service)`` wraps a :class:`~eventrec.serving.core.RankingService`; ``eventrec serve``
runs it with uvicorn on 127.0.0.1. The OpenAPI schema is at ``/openapi.json`` (docs at ``/docs``).
Errors: 413 above the candidate limit or the body size limit (checked before parsing:
:mod:`eventrec.serving.body_limit`), 422 with the offending field (``detail[0].loc``) for malformed
payloads and bad values, 409 for events older than the user's last event, 403 for the admin endpoint
from another host, 500 (counted, connection kept) for anything unforeseen.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventrec.serving.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from eventrec.serving.core import RankingService, ServingError
from eventrec.serving.metrics import Metrics, ObserveRequests
from eventrec.store.raw_logs import MAX_TIMESTAMP_SECONDS

LOOPBACK = ("127.0.0.1", "::1", "localhost")


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


class DropEventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int | str
    after: int = Field(..., ge=0, lt=MAX_TIMESTAMP_SECONDS, description="drop the user's appended events later than this (seconds since 1970)")


def _error_body(errors: list[dict]) -> dict:
    """A 422 body that always serialises: loc, msg and type of each error (not the offending input,
    which may be NaN, huge or not JSON at all)."""
    return {"detail": [{"loc": [x if isinstance(x, (int, str)) else str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                        "type": str(e.get("type", ""))} for e in errors]}


def create_app(service: RankingService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The app; request bodies above ``max_body_bytes`` are refused (413) before parsing."""
    app = FastAPI(title="eventrec ranking service", version=service.version)
    metrics = Metrics(service.stats)
    app.state.service, app.state.metrics = service, metrics
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(ObserveRequests, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, error: ServingError):
        loc = ["body", *(error.field or "").replace("[", ".").replace("]", "").split(".")] if error.field else ["body"]
        return JSONResponse(status_code=error.status, content=_error_body([{"loc": loc, "msg": error.message, "type": type(error).__name__}]))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        return JSONResponse(status_code=422, content=_error_body(list(error.errors())))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": service.version, "precision": service.precision, "table_precision": service.table_precision,
                "state_precision": service.state_precision, "users_cached": len(service.users)}

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/rank", response_model=RankResponse)
    def rank(request: RankRequest) -> RankResponse:
        result = service.rank(request.user_id, request.candidates, request.context, request.timestamp, request.top_k)
        ranked = [RankedCandidate(index=int(i), scores={t: float(result.scores[i, j]) for j, t in enumerate(result.task_names)}) for i in result.order]
        return RankResponse(user_id=request.user_id, model_version=service.version, user_state=result.user_state, ranked=ranked)

    @app.post("/events")
    def events(request: EventsRequest) -> dict:
        return service.append_events(request.user_id, request.events)

    @app.post("/admin/drop-events")
    def drop_events(body: DropEventsRequest, request: Request) -> dict:
        """Operator repair (loopback clients only): drop a user's appended events later than ``after``."""
        if request.client is None or request.client.host not in LOOPBACK:
            return JSONResponse(status_code=403, content=_error_body([{"loc": ["client"], "msg": "admin endpoints answer loopback clients only",
                                                                       "type": "Forbidden"}]))
        return service.drop_appended_events(body.user_id, body.after)

    return app


def serve(service: RankingService, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    import uvicorn

    uvicorn.run(create_app(service, max_body_bytes), host=host, port=port, log_level="info")
