"""The requests the service refuses, each with its HTTP status and the offending field."""

from __future__ import annotations


class ServingError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``field`` the offending field."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


class InvalidInput(ServingError):
    status = 422


class TooManyCandidates(ServingError):
    status = 413


class OutOfOrderEvents(ServingError):
    status = 409


class StoreUnavailable(ServingError):
    """The shared user-state store (Redis) cannot be read or written: HTTP 503."""

    status = 503
