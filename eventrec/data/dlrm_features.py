"""The DLRM baseline's human-engineered aggregates, computed point-in-time from the same store.

For each impression, stream and window (1 day, 7 days, 30 days, all history) over the user's events
strictly before the impression (the full history, not truncated to the stream's ``max_length``):

* sparse: for each of the stream's aggregated id attributes (``Stream.aggregated_ids``: every
  categorical, hashed or multi-categorical attribute unless the schema names ``dlrm_ids``), the
  distinct ids with their counts,
  for sum-pooled (count-weighted) embedding bags: ``ids [sum(K_i)]``, ``weights [sum(K_i)]``,
  ``offsets [B+1]``;
* dense: ``log1p(count)`` per stream and window, and per stream ``log1p(seconds since the last
  event)`` plus a 0/1 "has any event" flag (the time is 0 when there is none).

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
from eventrec.data.gather import attribute_tensors
from eventrec.data.jagged import JaggedTensor
from eventrec.data.sampling import ranges_to_indices
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


class DlrmFeatureBuilder:
    """``builder(store, example_indices) -> DlrmBatch``; usable as a loader's ``batch_fn``."""

    def __init__(self, windows: dict[str, int | None] | None = None):
        self.windows = dict(DEFAULT_WINDOWS if windows is None else windows)

    def dense_names(self, store: EventStore) -> list[str]:
        names = []
        for stream in store.streams:
            names += [f"{stream}.{w}.log_count" for w in self.windows]
            names += [f"{stream}.log_seconds_since_last", f"{stream}.has_events"]
        return names

    def sparse_keys(self, store: EventStore) -> list[str]:
        return [f"{s.name}.{a}.{w}" for s in store.schema.streams for a in s.aggregated_ids for w in self.windows]

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
        item_lookups = {k: v for k, v in store.item_looked_up.items() if v[0] in store.item}
        return DlrmBatch(
            example_indices=torch.from_numpy(index),
            sparse=sparse,
            dense=torch.from_numpy(np.stack(dense, axis=1)),
            dense_names=self.dense_names(store),
            item=attribute_tensors(store.item, item_lookups, index),
            context=attribute_tensors(store.context, {}, index),
            labels=torch.from_numpy(store.labels[index]),
            label_names=list(store.label_names),
        )
