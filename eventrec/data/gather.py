"""Gather point-in-time histories from the store into an :class:`~eventrec.data.batch.EventBatch`.

For each example and stream, the candidate events are the user's events before the example's cut
(strictly before the impression); the stream's sampling policy picks at most ``max_length`` of them.
Everything is vectorised with numpy over the whole batch; no per-example Python loop.
"""

from __future__ import annotations

import numpy as np
import torch

from eventrec.data.batch import EventBatch, StreamBatch
from eventrec.data.jagged import JaggedTensor
from eventrec.data.sampling import ranges_to_indices, select_events
from eventrec.store.reader import EventStore, Ragged, StreamData


def _ragged_rows(ragged: Ragged, rows: np.ndarray) -> JaggedTensor:
    """Select rows of a multi-valued column: values ``[sum of selected lengths]``, offsets ``[len(rows)+1]``."""
    index, lengths = ranges_to_indices(ragged.offsets[rows], ragged.offsets[rows + 1])
    return JaggedTensor.from_numpy(ragged.values[index].astype(np.int64), lengths)


def _column_tensor(values: np.ndarray) -> torch.Tensor:
    if values.dtype.kind in "iu":
        return torch.from_numpy(values.astype(np.int64))
    if values.dtype.kind == "f":
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    raise TypeError(f"unsupported column dtype {values.dtype}")


def gather_stream(data: StreamData, starts: np.ndarray, ends: np.ndarray) -> StreamBatch:
    """The selected events of one stream for a batch with candidate ranges ``[starts, ends)``."""
    index, lengths = select_events(data.sampling, starts, ends, data.max_length, data)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    batch = StreamBatch(
        offsets=torch.from_numpy(offsets),
        max_len=int(lengths.max(initial=0)),
        timestamps=torch.from_numpy(data.timestamps[index]),
    )
    for name, column in data.attributes.items():
        if isinstance(column, Ragged):
            batch.multi[name] = _ragged_rows(column, index)
        else:
            batch.attributes[name] = _column_tensor(column[index])
    for name, (key, matrix) in data.looked_up.items():
        batch.attributes[name] = torch.from_numpy(matrix[data.attributes[key][index]])
    return batch


def attribute_tensors(columns: dict, looked_up: dict, index: np.ndarray) -> dict:
    """Tensors of the rows ``index [B]`` of encoded attribute ``columns`` (item, context or records
    encoded by :meth:`~eventrec.store.encoding.AttributeEncoder.encode_records`): ``[B]`` ids or
    numbers, ``[B, dim]`` vectors, :class:`JaggedTensor` multi-valued ids; plus each side-table
    attribute of ``looked_up`` (name → (key column, matrix ``[ids, dim]``)) whose key is a column."""
    out: dict = {}
    for name, column in columns.items():
        out[name] = _ragged_rows(column, index) if isinstance(column, Ragged) else _column_tensor(column[index])
    for name, (key, matrix) in looked_up.items():
        if key in columns:
            out[name] = torch.from_numpy(matrix[columns[key][index]])
    return out


def catalogue_items(store: EventStore, example_indices: np.ndarray) -> tuple[np.ndarray, dict]:
    """Every distinct item shown in the given examples: their ids ``[C]`` (sorted, the store's raw
    item ids) and their item attribute tensors ``[C]``, each from the item's first example."""
    index = np.asarray(example_indices, dtype=np.int64)
    distinct, first = np.unique(store.item_ids[index], return_index=True)
    return distinct, attribute_tensors(store.item, _lookups_of(store, store.item), index[first])


def _lookups_of(store: EventStore, group: dict) -> dict:
    """The store's looked-up attributes (side tables) whose key is a column of ``group`` (item or context)."""
    return {k: v for k, v in store.item_looked_up.items() if v[0] in group}


def catalogue_positions(catalogue_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Position ``[B]`` of each of ``item_ids`` in the sorted ``catalogue_ids``; raises if one is absent."""
    positions = np.searchsorted(catalogue_ids, item_ids)
    found = positions < len(catalogue_ids)
    found[found] = catalogue_ids[positions[found]] == item_ids[found]
    if not found.all():
        raise KeyError(f"items not in the catalogue: {np.unique(item_ids[~found])[:5].tolist()}")
    return positions


def distinct_histories(store: EventStore, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One representative example per distinct (user row, request time), in first-seen order.

    Returns (``representatives [G]`` example indices, ``history_index [B]`` into them).
    """
    keys = np.stack([store.user_rows[index], store.timestamps[index]], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # keep first-seen order: deterministic and readable
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return index[first[order]], rank[inverse.reshape(-1)].astype(np.int64)


def make_batch(store: EventStore, example_indices: np.ndarray) -> EventBatch:
    """Gather the batch of the given example indices (``[B]`` int64) from ``store``."""
    index = np.asarray(example_indices, dtype=np.int64)
    representatives, history_index = distinct_histories(store, index)
    streams = {}
    for name, data in store.streams.items():
        starts, ends = store.history_bounds(name, representatives)
        streams[name] = gather_stream(data, starts, ends)
    return impressions_batch(store, index, representatives, history_index, streams)


def impressions_batch(store: EventStore, index: np.ndarray, representatives: np.ndarray, history_index: np.ndarray,
                      streams: dict, history_cuts: np.ndarray | None = None) -> EventBatch:
    """The :class:`EventBatch` of the examples ``index [B]`` whose gathered histories are ``streams``
    (one per representative example ``[G]``, read by ``history_index [B]``): their items, contexts,
    labels and request ids from the store."""
    return EventBatch(
        example_indices=torch.from_numpy(index),
        user_rows=torch.from_numpy(store.user_rows[index]),
        request_timestamps=torch.from_numpy(store.timestamps[index]),
        history_index=torch.from_numpy(history_index),
        history_timestamps=torch.from_numpy(store.timestamps[representatives]),
        streams=streams,
        item=attribute_tensors(store.item, _lookups_of(store, store.item), index),
        context=attribute_tensors(store.context, _lookups_of(store, store.context), index),
        labels=torch.from_numpy(store.labels[index]),
        label_names=list(store.label_names),
        request_ids=None if store.request_ids is None or store.request_ids.dtype.kind not in "iu" else torch.from_numpy(store.request_ids[index].astype(np.int64)),
        history_cuts=None if history_cuts is None else torch.from_numpy(history_cuts),
    )
