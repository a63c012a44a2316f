"""Impressions grouped by user: one history per user, each impression reading a prefix of it.

:func:`~eventrec.data.gather.make_batch` gathers one history per distinct (user, request time), so a
user with R requests in a batch has its events gathered and encoded R times, each history up to
``max_length`` events: at thousands of events per user most of a training step re-encodes the same
events. :func:`make_user_batch` gathers each user's events once, up to the user's latest impression
in the batch, and gives each impression ``history_cuts[b]``: the number of its user's events it reads
(those strictly before the impression: the first ``history_cuts[b]`` of the user's history, whose
events are in time order across streams). A model whose
encoding of an event depends only on the events before it (:attr:`SequenceRanker.extendable`) then
encodes each user once per batch, and an impression's logits equal those of
:func:`make_batch`'s per-impression history within float rounding (``tests/test_user_batches.py``).

That equality needs each impression's history to *be* a prefix of its user's, so this batch is
refused (a ValueError naming the stream) unless, for every stream, the user's history before its
latest impression in the batch fits in the stream's ``max_length`` (the per-impression window then
starts at the user's first event) and the stream samples ``most_recent`` (a value-based policy picks
another subset at every cut).

Shapes, beside :class:`~eventrec.data.batch.EventBatch`'s (G = users in the batch)::

    history_index     [B] int64   the user's history row (0..G-1)
    history_cuts      [B] int64   events of that history the impression reads (a prefix)
    request_timestamps [B] int64  each impression's own time (what its recency and match features read)
"""

from __future__ import annotations

import numpy as np

from eventrec.data.batch import EventBatch
from eventrec.data.gather import gather_stream, impressions_batch
from eventrec.store.reader import EventStore


def latest_per_user(store: EventStore, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One representative per user of the examples ``index [B]``: the user's latest example (in
    first-seen order of the users). Returns (``representatives [G]`` example indices, ``history_index
    [B]`` into them)."""
    users = store.user_rows[index]
    distinct, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    history_index = rank[inverse.reshape(-1)].astype(np.int64)
    latest = np.full(len(distinct), -1, dtype=np.int64)
    times = store.timestamps[index]
    by_time = np.lexsort((np.arange(len(index)), times))  # ties: the later position in the batch wins
    latest[history_index[by_time]] = by_time  # the last write per user is its latest example
    return index[latest], history_index


def make_user_batch(store: EventStore, example_indices: np.ndarray) -> EventBatch:
    """The batch of the given example indices ``[B]`` with one history per user and
    ``history_cuts [B]`` (see the module's doc)."""
    index = np.asarray(example_indices, dtype=np.int64)
    representatives, history_index = latest_per_user(store, index)
    streams = {}
    before = np.zeros(len(index), dtype=np.int64)
    for name, data in store.streams.items():
        starts, ends = store.history_bounds(name, representatives)
        if data.sampling != "most_recent":
            raise ValueError(f"streams.{name}: user batches need most_recent sampling (a {data.sampling!r} history is not a prefix of a later one)")
        too_long = ends - starts > data.max_length
        if too_long.any():
            raise ValueError(f"streams.{name}: a user has {int((ends - starts)[too_long].max())} events before its latest impression, more "
                             f"than max_length {data.max_length}: its earlier impressions' windows would not start at its first event")
        own_starts, own_ends = store.history_bounds(name, index)
        before += own_ends - own_starts
        streams[name] = gather_stream(data, starts, ends)
    return impressions_batch(store, index, representatives, history_index, streams, before)
