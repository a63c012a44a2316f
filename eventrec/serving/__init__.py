"""Serving: rank thousands of candidates per request over a cached user side (see docs/serving.md)."""

from eventrec.serving.core import (
    CandidateCache,
    InvalidInput,
    OutOfOrderEvents,
    RankingService,
    RankResult,
    ServingError,
    StoreUnavailable,
    TooManyCandidates,
    model_version,
)

__all__ = [
    "CandidateCache",
    "InvalidInput",
    "OutOfOrderEvents",
    "RankResult",
    "RankingService",
    "ServingError",
    "StoreUnavailable",
    "TooManyCandidates",
    "model_version",
]
