"""Sampling policies: which of a user's past events (before the cut) enter a stream's history.

A policy is a named, pluggable choice declared per stream in the schema (``sampling:``). It sees
each example's candidate range ``[start, end)`` of a stream's flat, time-sorted event arrays (all
events strictly before the impression) and returns the selected global indices, time-ordered, at
most ``max_length`` per example.

Register a new policy with :func:`register_sampling_policy`; value-based sampling (issue: scaling)
plugs in here without touching the store or the batch code.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np


class SamplingPolicy(Protocol):
    def __call__(self, starts: np.ndarray, ends: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """``starts, ends [B]`` int64 → (``indices [sum(n_i)]`` int64, ``lengths [B]`` int64)."""
        ...


def ranges_to_indices(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``arange(start_i, end_i)`` for every i without a Python loop.

    Returns (``indices [sum(end_i - start_i)]``, ``lengths [B]``), both int64.
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.maximum(np.asarray(ends, dtype=np.int64) - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), lengths
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # position within its own range, plus that range's start
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    return np.repeat(starts, lengths) + within, lengths


def most_recent(starts: np.ndarray, ends: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_length`` events before the cut, in time order."""
    starts = np.maximum(np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64) - max_length)
    return ranges_to_indices(starts, ends)


SAMPLING_POLICIES: dict[str, SamplingPolicy] = {"most_recent": most_recent}


def select_events(sampling: str, starts: np.ndarray, ends: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The one place that applies a stream's sampling policy: of each history's candidate events
    ``[starts_i, ends_i)`` (everything strictly before its cut), the selected ones. ``starts, ends [B]``
    → (``indices [sum(n_i)]`` time-ordered, ``lengths [B]``), at most ``max_length`` per history. Used by
    training batches (:func:`eventrec.data.gather.gather_stream`) and by serving alike."""
    if sampling not in SAMPLING_POLICIES:
        raise ValueError(f"sampling: unknown policy {sampling!r} (registered: {sorted(SAMPLING_POLICIES)})")
    return SAMPLING_POLICIES[sampling](starts, ends, max_length)


def register_sampling_policy(name: str, policy: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]) -> None:
    """Make ``policy`` available to schemas as ``sampling: NAME``."""
    if name in SAMPLING_POLICIES:
        raise ValueError(f"sampling policy {name!r} is already registered")
    SAMPLING_POLICIES[name] = policy
