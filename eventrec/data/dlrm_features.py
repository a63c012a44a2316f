"""The DLRM baseline's human-engineered aggregates, computed point-in-time from the same store.

For each impression, stream and window (1 day, 7 days, 30 days, all history) over the user's events
strictly before the impression (the full history, not truncated to the stream's ``max_length``):

* sparse: for each of the stream's aggregated id attributes (``Stream.aggregated_ids``: every
  categorical, hashed or multi-categorical attribute unless the schema names ``dlrm_ids``), the
  distinct ids with their counts,
  for sum-pooled (count-weighted) embedding bags: ``ids [sum(K_i)]``, ``weights [sum(K_i)]``,
  ``offsets [B+1]``;
* dense: ``log1p(count)`` per stream and window, and per stream ``log1p(seconds since the last
  event)`` plus a 0/1 "has any event" flag (the time is 0 when there is none);
* with ``engineered`` (the default baseline, ``DlrmConfig.features: engineered``), also what an
  engineer hand-crafts for ranking: per candidate-match pair (an event attribute sharing a
  vocabulary with a candidate attribute, :func:`~eventrec.data.candidate_match.match_pairs`: "this
  item", "this item's category") ``log1p`` of the matching events per window, ``log1p(seconds since
  the last match)`` and a "has matched" flag; and per stream numeric attribute its mean per window
  and its last value (as stored: transformed, standardised). ``features: id_bags`` is the
  baseline before these (bags and counts only).

The shapes of the batch::

    sparse["{stream}.{attribute}.{window}"]   KeyedBag(ids [sum K_i] int64, weights [sum K_i] float32, offsets [B+1])
    dense                         [B, F] float32 with names ``dense_names``
    item, context, labels         as in :class:`~eventrec.data.batch.EventBatch`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eventrec.data.batch import _Movable
from eventrec.data.candidate_match import match_pairs, match_statistics, numeric_means
from eventrec.data.gather import attribute_tensors
from eventrec.data.item_counters import item_counters_of
from eventrec.data.jagged import JaggedTensor
from eventrec.data.sampling import ranges_to_indices
from eventrec.schema import Schema
from eventrec.store.reader import EventStore, Ragged

DAY = 86_400
DEFAULT_WINDOWS: dict[str, int | None] = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "all": None}


@dataclass
class KeyedBag(_Movable):
    """Distinct ids with counts per row: ``ids [sum K_i]``, ``weights [sum K_i]``, ``offsets [B+1]``."""

    ids: torch.Tensor
    weights: torch.Tensor
    offsets: torch.Tensor

    def jagged(self) -> JaggedTensor:
        lengths = self.offsets[1:] - self.offsets[:-1]
        return JaggedTensor(self.ids, self.offsets, int(lengths.max()) if len(lengths) else 0)


@dataclass
class DlrmBatch(_Movable):
    example_indices: torch.Tensor
    sparse: dict[str, KeyedBag]
    dense: torch.Tensor
    dense_names: list[str]
    item: dict
    context: dict
    labels: torch.Tensor
    label_names: list[str]

    @property
    def batch_size(self) -> int:
        return len(self.example_indices)


def distinct_counts(example_of: np.ndarray, ids: np.ndarray, batch_size: int) -> KeyedBag:
    """Distinct ``ids`` per example with counts; ``example_of, ids [n]`` → a :class:`KeyedBag`."""
    if len(ids) == 0:
        return KeyedBag(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(batch_size + 1, dtype=torch.int64))
    span = int(ids.max()) + 1
    pairs, counts = np.unique(example_of.astype(np.int64) * span + ids.astype(np.int64), return_counts=True)
    rows = pairs // span
    offsets = np.zeros(batch_size + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=batch_size), out=offsets[1:])
    return KeyedBag(torch.from_numpy(pairs % span), torch.from_numpy(counts.astype(np.float32)), torch.from_numpy(offsets))


def dense_names(schema: Schema, windows: dict[str, int | None], engineered: bool, item_counters: bool = False) -> list[str]:
    """Names of the dense features, in the order of :attr:`DlrmBatch.dense` (``[B, F]``)."""
    names = []
    for stream in schema.streams:
        names += [f"{stream.name}.{w}.log_count" for w in windows]
        names += [f"{stream.name}.log_seconds_since_last", f"{stream.name}.has_events"]
    if engineered:
        for pair in match_pairs(schema):
            names += [f"{pair.name}.{w}.log_count" for w in windows]
            names += [f"{pair.name}.log_seconds_since_last", f"{pair.name}.has_match"]
        for stream, attribute in numeric_attributes(schema):
            names += [f"{stream}.{attribute}.{w}.mean" for w in windows] + [f"{stream}.{attribute}.last"]
    if item_counters:
        names += [f"{pair.name}.{w}.log_item_count" for pair in match_pairs(schema) for w in windows]
    return names


def numeric_attributes(schema: Schema) -> list[tuple[str, str]]:
    """(stream, attribute) of every numeric event attribute, in schema order."""
    return [(s.name, a.name) for s in schema.streams for a in s.attributes if a.kind == "numeric"]


class DlrmFeatureBuilder:
    """``builder(store, example_indices) -> DlrmBatch``; usable as a loader's ``batch_fn``.
    ``engineered``: add the candidate-match and numeric-aggregate features (see the module);
    ``item_counters``: with them, the item counters per pair and window (:mod:`eventrec.data.item_counters`)."""

    def __init__(self, windows: dict[str, int | None] | None = None, engineered: bool = True, item_counters: bool = False):
        if item_counters and not engineered:
            raise ValueError("item_counters: engineered features only")
        self.windows = dict(DEFAULT_WINDOWS if windows is None else windows)
        self.engineered, self.item_counters = engineered, item_counters

    def dense_names(self, store: EventStore) -> list[str]:
        return dense_names(store.schema, self.windows, self.engineered, self.item_counters)

    def sparse_keys(self, store: EventStore) -> list[str]:
        return [f"{s.name}.{a}.{w}" for s in store.schema.streams for a in s.aggregated_ids for w in self.windows]

    def engineered_features(self, store: EventStore, index: np.ndarray) -> list[np.ndarray]:
        """The candidate-match and numeric-aggregate columns ``[B]`` each, in :func:`dense_names` order."""
        columns: list[np.ndarray] = []
        for pair in match_pairs(store.schema):
            stats = match_statistics(store, index, pair, self.windows)
            columns += list(np.log1p(stats.counts).T)
            has = ~np.isnan(stats.seconds_since_last)
            columns += [np.log1p(np.where(has, np.maximum(stats.seconds_since_last, 0), 0)).astype(np.float32), has.astype(np.float32)]
        for stream, attribute in numeric_attributes(store.schema):
            means, last = numeric_means(store, index, stream, attribute, self.windows)
            columns += list(means.T) + [last]
        if self.item_counters:  # counts per pair: the whole history, then the finite windows; here in the windows' order
            finite = [s for s in self.windows.values() if s is not None]
            counts = np.log1p(item_counters_of(store).counts_of_examples(store, index, finite))
            column_of = {seconds: 1 + i for i, seconds in enumerate(finite)} | {None: 0}
            width = 1 + len(finite)
            for p in range(counts.shape[1] // width):
                columns += [counts[:, p * width + column_of[seconds]] for seconds in self.windows.values()]
        return columns

    def __call__(self, store: EventStore, example_indices: np.ndarray) -> DlrmBatch:
        index = np.asarray(example_indices, dtype=np.int64)
        batch_size = len(index)
        times = store.timestamps[index]
        rows = store.user_rows[index]
        sparse: dict[str, KeyedBag] = {}
        dense: list[np.ndarray] = []
        for stream in store.schema.streams:
            data = store.streams[stream.name]
            starts, ends = store.history_bounds(stream.name, index)
            for window, seconds in self.windows.items():
                lower = starts if seconds is None else np.maximum(starts, data.time_index.position_before(rows, times - seconds))
                dense.append(np.log1p(ends - lower).astype(np.float32))
                events, lengths = ranges_to_indices(lower, ends)
                example_of = np.repeat(np.arange(batch_size), lengths)
                for id_name in stream.aggregated_ids:
                    column = data.attributes[id_name]
                    if isinstance(column, Ragged):
                        tokens, token_lengths = ranges_to_indices(column.offsets[events], column.offsets[events + 1])
                        ids, owners = column.values[tokens], np.repeat(example_of, token_lengths)
                    else:
                        ids, owners = column[events], example_of
                    sparse[f"{stream.name}.{id_name}.{window}"] = distinct_counts(owners, ids, batch_size)
            has = ends > starts
            last = data.timestamps[np.maximum(ends - 1, 0)] if data.num_events else np.zeros(batch_size, dtype=np.int64)
            since = np.where(has, np.maximum(times - last, 0), 0)
            dense += [np.log1p(since).astype(np.float32), has.astype(np.float32)]
        if self.engineered:
            dense += self.engineered_features(store, index)
        item_lookups = {k: v for k, v in store.item_looked_up.items() if v[0] in store.item}
        return DlrmBatch(
            example_indices=torch.from_numpy(index),
            sparse=sparse,
            dense=torch.from_numpy(np.stack(dense, axis=1).astype(np.float32)),
            dense_names=self.dense_names(store),
            item=attribute_tensors(store.item, item_lookups, index),
            context=attribute_tensors(store.context, {}, index),
            labels=torch.from_numpy(store.labels[index]),
            label_names=list(store.label_names),
        )
