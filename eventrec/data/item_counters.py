"""Item counters: how often *anyone* did something with the candidate before the request.

The item-side counting features of production rankers ("this item's purchases over the last 7
days", "this category's views"), point-in-time from the store: for every
:class:`~eventrec.data.candidate_match.MatchPair` (a stream's id attribute and a candidate attribute
sharing a vocabulary), the number of events of **all users** in that stream whose id equals the
candidate's, before the request time ``T``. An event at ``t_e`` counts in the whole-history column
when ``t_e < T`` and in a window of ``s`` seconds when ``T - s <= t_e < T`` (the rule of
:func:`~eventrec.data.candidate_match.match_statistics`, whose counts are the same user's only).
A multi-valued attribute counts an event once per value equal to the candidate's. Reserved ids
count nothing: a missing (or, categorical, out-of-vocabulary) candidate gets zeros, and events'
reserved ids are not indexed.

Where a user's history says what *this user* did with the item, these say what everybody did: the
signal of the "item popularity" rule (:mod:`eventrec.evaluation.rules`), which the history cannot
carry when items are rarely repeated by one user. The sequence model reads them with
``item_counters`` (on by default; ``log1p`` of the counts beside its match features).

Shapes: ``item_ids {attribute: [B]}``, ``times [B]`` → ``counts [B, P·(1 + W)]`` float32, pair by
pair (the schema's order of :func:`~eventrec.data.candidate_match.match_pairs`), each pair's
whole-history count first, then its windows in the order given.

Serving builds the counters once from the store it loads (:meth:`ItemCounters.from_store`): events
appended to a running service are not counted (rebuild the store to refresh them), as batch-updated
counters of a feature store lag the live log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from eventrec.data.candidate_match import MatchPair, match_pairs, reserved_ids
from eventrec.schema import Schema
from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.store.reader import EventStore, Ragged


@dataclass
class PairIndex:
    """One pair's events of all users sorted by (id, time): ``index`` answers "events of id ``i``
    before ``t``" by binary search (ids ``>= num_ids`` have no event)."""

    num_ids: int
    index: SegmentedTimeIndex

    @classmethod
    def build(cls, ids: np.ndarray, times: np.ndarray, reserved: Sequence[int]) -> "PairIndex":
        """``ids, times [E]`` (one row per event, or per value of a multi-valued event)."""
        ids, times = np.asarray(ids, dtype=np.int64), np.asarray(times, dtype=np.int64)
        keep = ~np.isin(ids, np.asarray(reserved, dtype=np.int64)) & (ids >= 0)
        ids, times = ids[keep], times[keep]
        order = np.lexsort((times, ids))
        num_ids = int(ids.max()) + 1 if len(ids) else 0
        offsets = np.zeros(num_ids + 1, dtype=np.int64)
        np.cumsum(np.bincount(ids, minlength=num_ids), out=offsets[1:])
        return cls(num_ids, SegmentedTimeIndex(offsets, times[order]))

    def count_before(self, ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``[Q]`` int64: events of ``ids[q]`` strictly before ``times[q]``."""
        ids, times = np.asarray(ids, dtype=np.int64), np.asarray(times, dtype=np.int64)
        out = np.zeros(len(ids), dtype=np.int64)
        known = (ids >= 0) & (ids < self.num_ids)
        if known.any():
            rows, at = ids[known], times[known]
            order = np.lexsort((at, rows)) if len(rows) > 256 else None  # sorted queries: a faster search on large inputs
            out[known] = self.index.count_before(rows, at, order)
        return out


class ItemCounters:
    """The item counters of a store's streams (module doc), one :class:`PairIndex` per match pair."""

    def __init__(self, pairs: list[MatchPair], indexes: list[PairIndex], candidate_reserved: list[tuple[int, ...]]):
        self.pairs, self.indexes, self.candidate_reserved = pairs, indexes, candidate_reserved

    @classmethod
    def from_store(cls, store: EventStore) -> "ItemCounters":
        """Index every match pair's events over all users of ``store`` (all of its time: each query
        counts only what came before its own request time)."""
        schema = store.schema
        pairs = match_pairs(schema)
        indexes = []
        for pair in pairs:
            data = store.streams[pair.stream]
            column = data.attributes[pair.event_attribute]
            if isinstance(column, Ragged):  # one row per value, at its event's time
                ids, times = column.values, np.repeat(data.timestamps, np.diff(column.offsets))
            else:
                ids, times = column, data.timestamps
            indexes.append(PairIndex.build(ids, times, reserved_ids(schema.stream(pair.stream).attribute(pair.event_attribute).kind)))
        return cls(pairs, indexes, [reserved_ids(schema.impressions.item_attribute(p.item_attribute).kind) for p in pairs])

    def counts(self, item_ids: dict[str, np.ndarray], times: np.ndarray, windows: Sequence[int]) -> np.ndarray:
        """``[B, P·(1 + W)]`` float32 counts of the candidates ``item_ids {attribute: [B]}`` at the
        request times ``times [B]`` (seconds): per pair, the whole history, then each window."""
        times = np.asarray(times, dtype=np.int64)
        bounds = np.concatenate([times] + [times - seconds for seconds in windows])  # [(1 + W)·B]: T, then each window's start
        columns = []
        for pair, index, reserved in zip(self.pairs, self.indexes, self.candidate_reserved):
            ids = np.asarray(item_ids[pair.item_attribute], dtype=np.int64)
            ids = np.where(np.isin(ids, np.asarray(reserved, dtype=np.int64)), -1, ids)
            before = index.count_before(np.tile(ids, 1 + len(windows)), bounds).reshape(1 + len(windows), len(times))  # one search
            columns += [before[0]] + [before[0] - before[w] for w in range(1, 1 + len(windows))]
        if not columns:
            return np.zeros((len(times), 0), dtype=np.float32)
        return np.stack(columns, axis=1).astype(np.float32)

    def counts_of_examples(self, store: EventStore, example_indices: np.ndarray, windows: Sequence[int]) -> np.ndarray:
        """:meth:`counts` of the store's impressions ``example_indices [B]``."""
        index = np.asarray(example_indices, dtype=np.int64)
        item_ids = {pair.item_attribute: np.asarray(store.item[pair.item_attribute])[index] for pair in self.pairs}
        return self.counts(item_ids, store.timestamps[index], windows)


def item_counters_of(store: EventStore) -> ItemCounters:
    """The store's :class:`ItemCounters`, built on first use and kept on the store (a view made by
    ``copy.copy`` after that, e.g. :func:`~eventrec.data.requests.store_for_requests`, shares them:
    its streams hold the same events)."""
    counters = store.__dict__.get("_item_counters")
    if counters is None:
        counters = ItemCounters.from_store(store)
        store.__dict__["_item_counters"] = counters
    return counters


def item_counts_reference(store: EventStore, example_indices: np.ndarray, windows: Sequence[int]) -> np.ndarray:
    """Obvious per-impression reference of :meth:`ItemCounters.counts_of_examples` (for tests)."""
    schema = store.schema
    rows = []
    for example in np.asarray(example_indices, dtype=np.int64):
        t = int(store.timestamps[example])
        row = []
        for pair in match_pairs(schema):
            candidate = int(np.asarray(store.item[pair.item_attribute])[example])
            data = store.streams[pair.stream]
            column = data.attributes[pair.event_attribute]
            skip = candidate in reserved_ids(schema.impressions.item_attribute(pair.item_attribute).kind)
            event_reserved = reserved_ids(schema.stream(pair.stream).attribute(pair.event_attribute).kind)
            hits = []  # the time of every matching value of every event
            for e in range(data.num_events):
                values = column.values[column.offsets[e] : column.offsets[e + 1]] if isinstance(column, Ragged) else [column[e]]
                hits += [int(data.timestamps[e])] * sum(1 for v in values if int(v) == candidate and int(v) not in event_reserved)
            hits_array = np.asarray(hits, dtype=np.int64)
            row.append(0 if skip else int((hits_array < t).sum()))
            row += [0 if skip else int(((hits_array >= t - s) & (hits_array < t)).sum()) for s in windows]
        rows.append(row)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


class WithItemCounts:
    """A batch function that adds ``item_counts [B, P·(1 + W)]`` (:meth:`ItemCounters.counts_of_examples`)
    to the :class:`~eventrec.data.batch.EventBatch` of another (``make_batch``, ``make_user_batch``)."""

    def __init__(self, batch_fn: Callable, windows: Sequence[int]):
        self.batch_fn, self.windows = batch_fn, tuple(windows)

    def __call__(self, store: EventStore, example_indices: np.ndarray):
        batch = self.batch_fn(store, example_indices)
        counts = item_counters_of(store).counts_of_examples(store, batch.example_indices.numpy(), self.windows)
        batch.item_counts = torch.from_numpy(counts)
        return batch
