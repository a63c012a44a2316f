"""Candidate-match statistics: how often, and how recently, the user did something with *this* candidate.

The features an engineer hand-crafts first for ranking ("has this user viewed this item before,
how many times, how long ago; and items of its category?"), computed point-in-time from the store:
over the user's events strictly before the impression (the full history, not truncated to a
stream's ``max_length``), for every :class:`MatchPair` — an event attribute and a candidate item
attribute that share a vocabulary (so that equal ids mean the same thing).

Used by the engineered DLRM baseline (:mod:`eventrec.data.dlrm_features`) and by the rule baselines
(:mod:`eventrec.evaluation.rules`). Reserved ids never match: 0 (missing) always, and 1 (out of
vocabulary) for categorical attributes.

Shapes: ``example_indices [B]`` → ``counts [B, W]`` (one column per window) and
``seconds_since_last [B]`` (NaN when no event matches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eventrec.data.sampling import ranges_to_indices
from eventrec.schema import Schema
from eventrec.store.reader import EventStore, Ragged
from eventrec.store.vocab import MISSING_ID, OOV_ID

ID_KINDS = ("categorical", "hashed", "multi_categorical")


@dataclass(frozen=True)
class MatchPair:
    """Events of ``stream`` whose ``event_attribute`` equals (or, multi-valued, contains) the
    candidate's ``item_attribute``."""

    stream: str
    event_attribute: str
    item_attribute: str

    @property
    def name(self) -> str:
        return f"{self.stream}.{self.event_attribute}=={self.item_attribute}"


@dataclass
class MatchStatistics:
    """``counts [B, W]`` (matching events per window, float32) and ``seconds_since_last [B]``
    (seconds from the last matching event to the impression; NaN when there is none)."""

    counts: np.ndarray
    seconds_since_last: np.ndarray


def match_pairs(schema: Schema) -> list[MatchPair]:
    """Every (stream, event id attribute, candidate item id attribute) sharing a vocabulary, in schema order."""
    items = [a for a in schema.impressions.item_attributes if a.kind in ("categorical", "hashed")]
    pairs = []
    for stream in schema.streams:
        for event_attribute in stream.attributes:
            if event_attribute.kind not in ID_KINDS:
                continue
            for item_attribute in items:
                if item_attribute.vocabulary_name == event_attribute.vocabulary_name:
                    pairs.append(MatchPair(stream.name, event_attribute.name, item_attribute.name))
    return pairs


def reserved_ids(kind: str) -> tuple[int, ...]:
    """The ids of an attribute of ``kind`` that match nothing: missing, and out of vocabulary except for
    hashed attributes (whose unseen values keep their identity in their bucket)."""
    return (MISSING_ID, OOV_ID) if kind != "hashed" else (MISSING_ID,)


def match_statistics(store: EventStore, example_indices: np.ndarray, pair: MatchPair, windows: dict[str, int | None]) -> MatchStatistics:
    """:class:`MatchStatistics` of ``pair`` for the examples ``example_indices [B]``; ``windows``
    name → seconds (None: the whole history). An event at ``t_e`` is in a window of ``s`` seconds
    of an impression at ``T`` when ``T - s <= t_e < T``."""
    index = np.asarray(example_indices, dtype=np.int64)
    batch = len(index)
    times = store.timestamps[index]
    data = store.streams[pair.stream]
    stream = store.schema.stream(pair.stream)
    attribute = stream.attribute(pair.event_attribute)
    candidate = np.asarray(store.item[pair.item_attribute])[index].astype(np.int64)
    starts, ends = store.history_bounds(pair.stream, index)
    events, lengths = ranges_to_indices(starts, ends)
    example_of = np.repeat(np.arange(batch), lengths)
    column = data.attributes[pair.event_attribute]
    if isinstance(column, Ragged):  # an event matches when any of its values equals the candidate's
        tokens, token_lengths = ranges_to_indices(column.offsets[events], column.offsets[events + 1])
        token_owner = np.repeat(np.arange(len(events)), token_lengths)
        hit = column.values[tokens].astype(np.int64) == candidate[example_of[token_owner]]
        matched = np.zeros(len(events), dtype=bool)
        matched[token_owner[hit]] = True
    else:
        matched = column[events].astype(np.int64) == candidate[example_of]
    matched &= ~np.isin(candidate, reserved_ids(attribute.kind))[example_of]  # a reserved candidate id matches nothing
    owner, event_times = example_of[matched], data.timestamps[events[matched]]
    counts = np.zeros((batch, len(windows)), dtype=np.float32)
    for column_index, seconds in enumerate(windows.values()):
        inside = np.ones(len(owner), dtype=bool) if seconds is None else event_times >= times[owner] - seconds
        counts[:, column_index] = np.bincount(owner[inside], minlength=batch)
    last = np.full(batch, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, owner, event_times.astype(np.int64))
    seconds_since = np.where(last > np.iinfo(np.int64).min, (times - last).astype(np.float64), np.nan)
    return MatchStatistics(counts, seconds_since)


def numeric_means(store: EventStore, example_indices: np.ndarray, stream_name: str, attribute: str,
                  windows: dict[str, int | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the mean of a numeric event attribute (as stored: transformed and standardised)
    over the events of each window before the impression, ``[B, W]`` (0 where a window has no
    value), and its value on the last event ``[B]`` (0 when there is none). Missing values (NaN)
    are left out of the means; a missing last value is 0."""
    index = np.asarray(example_indices, dtype=np.int64)
    batch = len(index)
    times = store.timestamps[index]
    data = store.streams[stream_name]
    values = np.asarray(data.attributes[attribute], dtype=np.float64)
    starts, ends = store.history_bounds(stream_name, index)
    events, lengths = ranges_to_indices(starts, ends)
    example_of = np.repeat(np.arange(batch), lengths)
    event_values = values[events]
    known = ~np.isnan(event_values)
    event_times = data.timestamps[events]
    means = np.zeros((batch, len(windows)), dtype=np.float32)
    for column_index, seconds in enumerate(windows.values()):
        inside = known if seconds is None else known & (event_times >= times[example_of] - seconds)
        total = np.bincount(example_of[inside], weights=event_values[inside], minlength=batch)
        number = np.bincount(example_of[inside], minlength=batch)
        means[:, column_index] = np.where(number > 0, total / np.maximum(number, 1), 0.0)
    last = np.zeros(batch, dtype=np.float32)
    has = ends > starts
    last_values = values[np.maximum(ends - 1, 0)] if len(values) else np.zeros(batch)
    last[has] = np.nan_to_num(last_values[has], nan=0.0)
    return means, last
