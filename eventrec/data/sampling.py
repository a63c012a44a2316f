"""Sampling policies: which of a user's past events (before the cut) enter a stream's history.

A policy is a named, pluggable choice declared per stream in the schema (``sampling:``). It sees
each example's candidate range ``[start, end)`` of a stream's flat, time-sorted event arrays (all
events strictly before the impression) and returns the selected global indices, time-ordered, at
most ``max_length`` per example (exactly ``min(max_length, end - start)``: a policy only chooses
*which* events when there are too many).

Two policies are registered:

* ``most_recent`` (``sampling: most_recent``, the default): the last ``max_length`` events.
* ``value`` (``sampling: {policy: value, event_type_values: {...}, attribute: ..., recency_half_life: 7d}``,
  :class:`eventrec.schema.ValueSampling`): the ``max_length`` events of highest
  ``value · 2^(-age / half_life)``, see :func:`value_based`.

Register a new policy with :func:`register_sampling_policy`; it plugs in here without touching the
store, the batch code or serving (all of them call :func:`select_events`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np


class StreamEvents(Protocol):
    """What a policy may read of a stream's flat events (all users, sorted by user row then time):
    :class:`eventrec.store.reader.StreamData` is one, so is serving's one-user copy of it."""

    timestamps: np.ndarray  # [E] int64
    sampling_values: np.ndarray | None  # [E] float32: each event's declared value (value policies only)


class SamplingPolicy(Protocol):
    def __call__(self, starts: np.ndarray, ends: np.ndarray, max_length: int, events: StreamEvents | None = None,
                 parameters: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``starts, ends [B]`` int64 → (``indices [sum(n_i)]`` int64, ``lengths [B]`` int64).

        ``events``: the stream's events the indices refer to; ``parameters``: the stream's
        ``sampling`` declaration when it is a mapping (e.g. :class:`eventrec.schema.ValueSampling`),
        else None."""
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


def most_recent(starts: np.ndarray, ends: np.ndarray, max_length: int, events: StreamEvents | None = None,
                parameters: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_length`` events before the cut, in time order."""
    starts = np.maximum(np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64) - max_length)
    return ranges_to_indices(starts, ends)


def value_scores(timestamps: np.ndarray, values: np.ndarray, reference: np.ndarray, half_life_seconds: int) -> np.ndarray:
    """``half_life · log2(value_i · 2^(-age_i / half_life))`` = ``half_life · log2(value_i) - age_i``,
    float64 ``[N]`` for events ``timestamps, values [N]`` with ``age_i = reference_i - t_i`` (seconds).

    The same order as ``value · 2^(-age / half_life)`` (a monotone transform of it) in units of seconds:
    doubling an event's value is worth one half-life of recency. Two choices make it exact where it
    matters: the log never underflows (``2^(-age / half_life)`` is 0.0 after ~1074 half-lives, 45 days
    at a one-hour half-life, which would turn old events into ties), and ages stay integers (no
    division), so equal scores are computed as equal floats whenever the values' logs are integers
    (e.g. values 1, 2, 4 and a purchase worth 4 one day before a cart worth 2, at a one-day
    half-life: a true tie, resolved by recency as documented, not by a rounding error)."""
    age = (np.asarray(reference, dtype=np.int64) - np.asarray(timestamps, dtype=np.int64)).astype(np.float64)
    return np.log2(np.asarray(values, dtype=np.float64)) * float(half_life_seconds) - age


def value_based(starts: np.ndarray, ends: np.ndarray, max_length: int, events: StreamEvents | None = None,
                parameters: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Of each candidate range, the ``max_length`` events of highest score, returned in time order.

    The score of event i is ``value_i · 2^(-age_i / half_life)`` (compared as
    ``half_life · log2(value_i) - age_i``, :func:`value_scores`). ``value_i`` is the event's declared
    value (``events.sampling_values``, derived at build time from its event type and attribute by
    :func:`eventrec.store.sampling_values.sampling_values`); ``half_life`` is
    ``parameters.half_life_seconds``. Ties (equal scores) go to the more recent event (the later
    index: events are sorted by time, then file row).

    **The age's reference time**: age is measured from the user's *latest candidate event* (the last
    event before the cut), not from the impression time. The choice does not change what is kept:
    ``2^(-(T - t_i) / h) = 2^(-T / h) · 2^(t_i / h)`` and the factor ``2^(-T / h)`` is the same for
    every event of one history, so any reference time ranks the events alike. The latest event keeps
    the numbers small (exact integer ages) and makes the selection a function of the candidate events
    alone, independent of the request time: serving can reuse a state while the user's events before
    the request do not change. Point-in-time: the candidates
    are the events strictly before the impression (the cut), and both the values (a function of each
    event's own raw row) and the reference (the last candidate) are read from them only.

    With all values equal, the score is a non-decreasing function of time (the same constant minus an
    exact integer age) and ties go to the later index: exactly :func:`most_recent`.

    Cost: only histories longer than ``max_length`` are scored. For those, a few vectorised passes
    over all their candidate events, O(H) with H = the sum of those candidate counts (the whole
    history before the cut, not ``max_length``), then a ``lexsort`` of the events that can still make
    the top ``max_length`` (see :func:`_top_by_value`: those younger than about
    ``log2(max value / min value)`` half-lives beyond the ``max_length``-th most recent event), against
    O(selected) for ``most_recent``. A half-life much longer than the histories prunes nothing: then
    O(H log H).
    """
    if events is None or getattr(events, "sampling_values", None) is None:
        raise ValueError("sampling: the value policy needs the stream's per-event values (StreamData.sampling_values); "
                         "the store was built without them: rebuild it with this schema")
    if parameters is None or not hasattr(parameters, "half_life_seconds"):
        raise ValueError("sampling: the value policy needs its parameters (the schema's ValueSampling: recency_half_life ...)")
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    lengths = np.maximum(ends - starts, 0)
    kept = np.minimum(lengths, max_length)
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int64)

    over = lengths > max_length
    # histories within the budget: every candidate, in time order
    index, _ = ranges_to_indices(starts[~over], ends[~over])
    positions, _ = ranges_to_indices(offsets[:-1][~over], offsets[:-1][~over] + kept[~over])
    out[positions] = index
    if over.any():
        chosen = _top_by_value(events, starts[over], ends[over], max_length, parameters.half_life_seconds)
        positions, _ = ranges_to_indices(offsets[:-1][over], offsets[:-1][over] + max_length)
        out[positions] = chosen
    return out, kept


def _top_by_value(events: StreamEvents, starts: np.ndarray, ends: np.ndarray, k: int, half_life: int) -> np.ndarray:
    """The top ``k`` events by score of each range ``[starts_i, ends_i)`` (every range longer than
    ``k``), time-ordered within each: ``[G·k]`` global indices, range after range.

    Pruning before the sort (exact): the ``k`` most recent events of a range bound its ``k``-th best
    score from below (``floor``, the lowest of their scores); an event whose score could not reach it
    even with the range's highest value (``half_life · log2(max value) - age < floor``) is beaten by
    those ``k`` and dropped. The bound and the final order use the same float scores, so the result
    is the one a sort of every candidate gives; only the survivors (the events younger than the
    oldest age a maximal value could make up for) are sorted.
    """
    index, counts = ranges_to_indices(starts, ends)
    first = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    segment = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    latest = events.timestamps[ends - 1]  # the reference time: the latest candidate event
    values = events.sampling_values[index]
    age = latest[segment] - events.timestamps[index]
    # floor: the lowest score among each range's k most recent events
    recent, _ = ranges_to_indices(ends - k, ends)
    recent_scores = value_scores(events.timestamps[recent], events.sampling_values[recent], np.repeat(latest, k), half_life)
    floor = recent_scores.reshape(-1, k).min(axis=1)
    ceiling = np.log2(np.maximum.reduceat(values, first[:-1]).astype(np.float64)) * float(half_life)
    survive = ceiling[segment] - age.astype(np.float64) >= floor[segment]
    index, segment, age, values = index[survive], segment[survive], age[survive], values[survive]
    score = np.log2(values.astype(np.float64)) * float(half_life) - age.astype(np.float64)  # = value_scores(...)
    # by range, then score (highest first), then index (latest first): deterministic
    order = np.lexsort((-index, -score, segment))
    counts = np.bincount(segment, minlength=len(counts))
    first[1:] = np.cumsum(counts)
    rank = np.arange(len(order), dtype=np.int64) - np.repeat(first[:-1], counts)
    chosen = order[rank < k]  # the top k of each range (order is grouped by range; every range keeps >= k)
    return index[chosen[np.lexsort((index[chosen], segment[chosen]))]]  # back to time order within each range


SAMPLING_POLICIES: dict[str, SamplingPolicy] = {"most_recent": most_recent, "value": value_based}


def policy_name(sampling: Any) -> str:
    """The registered name of a stream's ``sampling`` declaration: the string itself, or a mapping
    form's ``policy`` (e.g. :class:`eventrec.schema.ValueSampling`)."""
    return sampling if isinstance(sampling, str) else str(getattr(sampling, "policy", sampling))


def select_events(sampling: Any, starts: np.ndarray, ends: np.ndarray, max_length: int,
                  events: StreamEvents | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The one place that applies a stream's sampling policy: of each history's candidate events
    ``[starts_i, ends_i)`` (everything strictly before its cut), the selected ones. ``starts, ends [B]``
    → (``indices [sum(n_i)]`` time-ordered, ``lengths [B]`` = ``min(max_length, ends_i - starts_i)``).
    ``sampling``: the stream's declaration (a policy name, or a mapping form such as
    :class:`eventrec.schema.ValueSampling`); ``events``: the stream's events the ranges index (its
    :class:`~eventrec.store.reader.StreamData`), which value policies read. Used by training batches
    (:func:`eventrec.data.gather.gather_stream`) and by serving
    (:func:`eventrec.serving.user_states.request_window`) alike."""
    name = policy_name(sampling)
    if name not in SAMPLING_POLICIES:
        raise ValueError(f"sampling: unknown policy {name!r} (registered: {sorted(SAMPLING_POLICIES)})")
    return SAMPLING_POLICIES[name](starts, ends, max_length, events, None if isinstance(sampling, str) else sampling)


def register_sampling_policy(name: str, policy: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """Make ``policy`` (a :class:`SamplingPolicy`: ``(starts, ends, max_length, events, parameters)``)
    available to schemas as ``sampling: NAME``."""
    if name in SAMPLING_POLICIES:
        raise ValueError(f"sampling policy {name!r} is already registered")
    SAMPLING_POLICIES[name] = policy
