"""Per-user event histories for serving, and the bounded LRU of derived (encoded) user states.

Two kinds of per-user data, kept apart on purpose:

* :class:`UserEvents`: the user's encoded events per stream (the store's segment plus events appended
  through :meth:`RankingService.append_events`). This is *data*: it is never evicted.
* :class:`EncodedState` (in :class:`LruByBytes`): what the model derived from those events for one
  model version: the encoder's per-layer keys/values, the keyed pooling's keys/values (the KV cache).
  This is a *cache*: evicting it costs one recompute, never a wrong answer.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Hashable

import numpy as np
import torch

from eventrec.serving.state_precision import GroupwiseInt4, RowwiseInt8, Stored, append_rows, compress, precision_of, stored_bytes
from eventrec.store.reader import EventStore, Ragged, StreamData


def _slice_column(column: np.ndarray | Ragged, start: int, end: int) -> np.ndarray | Ragged:
    if isinstance(column, Ragged):
        lo, hi = int(column.offsets[start]), int(column.offsets[end])
        return Ragged(column.values[lo:hi].copy(), column.offsets[start : end + 1] - lo)
    return column[start:end].copy()


def _concat_column(a: np.ndarray | Ragged, b: np.ndarray | Ragged) -> np.ndarray | Ragged:
    if isinstance(a, Ragged):
        assert isinstance(b, Ragged)
        return Ragged(np.concatenate([a.values, b.values.astype(a.values.dtype)]), np.concatenate([a.offsets, b.offsets[1:] + a.offsets[-1]]))
    return np.concatenate([a, np.asarray(b).astype(a.dtype, copy=False)])


@dataclass(frozen=True)
class UserEvents:
    """One user's events: per stream a one-user :class:`StreamData` (``user_offsets = [0, n]``).

    Immutable: an append builds a new object, so a failing request never leaves half an append.
    ``version`` counts appends (0 = the store's history)."""

    streams: dict[str, StreamData]
    version: int = 0

    @classmethod
    def from_store(cls, store: EventStore, user_row: int | None) -> "UserEvents":
        streams = {}
        for name, data in store.streams.items():
            if user_row is None:
                start = end = 0
            else:
                start, end = int(data.user_offsets[user_row]), int(data.user_offsets[user_row + 1])
            streams[name] = StreamData(
                name, data.max_length, data.sampling, np.array([0, end - start], dtype=np.int64), data.timestamps[start:end].copy(),
                {a: _slice_column(c, start, end) for a, c in data.attributes.items()}, dict(data.looked_up),
                None if data.sampling_values is None else data.sampling_values[start:end].copy(),
            )
        return cls(streams)

    def last_timestamp(self) -> int | None:
        last = [int(d.timestamps[-1]) for d in self.streams.values() if len(d.timestamps)]
        return max(last) if last else None

    def counts(self) -> dict[str, int]:
        return {name: len(d.timestamps) for name, d in self.streams.items()}

    def appended(self, name: str, timestamps: np.ndarray, attributes: dict[str, np.ndarray | Ragged],
                 sampling_values: np.ndarray | None = None) -> "UserEvents":
        """The events with ``timestamps [n]`` and encoded ``attributes`` appended to stream ``name``;
        ``sampling_values [n]`` float32: their values, required when the stream has a value policy."""
        data = self.streams[name]
        if (data.sampling_values is None) != (sampling_values is None):
            raise ValueError(f"stream {name!r}: per-event sampling values are {'required' if sampling_values is None else 'not expected'}")
        new = replace(
            data,
            user_offsets=np.array([0, len(data.timestamps) + len(timestamps)], dtype=np.int64),
            timestamps=np.concatenate([data.timestamps, timestamps.astype(np.int64)]),
            attributes={a: _concat_column(c, attributes[a]) for a, c in data.attributes.items()},
            sampling_values=None if sampling_values is None else np.concatenate([data.sampling_values, sampling_values.astype(np.float32)]),
        )
        return UserEvents({**self.streams, name: new}, self.version)

    def truncated(self, counts: dict[str, int], version: int) -> "UserEvents":
        """The first ``counts[stream]`` events of each stream, as ``version`` (new objects)."""
        streams = {}
        for name, data in self.streams.items():
            n = counts[name]
            streams[name] = replace(data, user_offsets=np.array([0, n], dtype=np.int64), timestamps=data.timestamps[:n].copy(),
                                    attributes={a: _slice_column(c, 0, n) for a, c in data.attributes.items()},
                                    sampling_values=None if data.sampling_values is None else data.sampling_values[:n].copy())
        return UserEvents(streams, version)

    def nbytes(self) -> int:
        total = 0
        for d in self.streams.values():
            total += d.timestamps.nbytes + (0 if d.sampling_values is None else d.sampling_values.nbytes)
            for c in d.attributes.values():
                total += c.values.nbytes + c.offsets.nbytes if isinstance(c, Ragged) else c.nbytes
        return total


def tensor_bytes(*items: Any) -> int:
    total = 0
    for item in items:
        if isinstance(item, (torch.Tensor, RowwiseInt8, GroupwiseInt4)):
            total += stored_bytes(item)
        elif isinstance(item, (list, tuple)):
            total += tensor_bytes(*item)
    return total


@dataclass
class EncodedState:
    """The model's derived state of one history window of one user, for one model version.

    ``window``: per stream ``(start, end)`` of the events it covers; ``signature``: the recency buckets
    it was computed with (None when the model does not read the request time). ``layer_kv``: per
    encoder layer ``(k, v)`` ``[P, H, d]`` (kept only in the exact-incremental mode), ``keys/values``:
    the keyed pooling's ``[P, H, d]`` and ``match_keys [P, V·E]`` (with match attention; once, not per
    head), ``encoded [P, D]`` (only for a model that reads it: :attr:`SequenceRanker.reads_encoded`;
    else None), ``timestamps [P]`` (P = positions, the
    summary token included); ``match_ids [P, V]`` with ``candidate_search`` or ``match_features`` (the positions' ids
    the search reads; its index, ``search_index``, is built on first use and never stored). The float tensors are kept at the service's ``state_precision``: float32,
    bfloat16 or :class:`~eventrec.serving.state_precision.RowwiseInt8` (:meth:`kept`); ``nbytes`` is
    what they hold."""

    window: tuple[tuple[int, int], ...]
    signature: bytes | None
    encoded: Stored | None
    keys: Stored
    values: Stored
    timestamps: torch.Tensor
    layer_kv: list[tuple[Stored, ...]] | None = None
    events_version: int = 0
    match_ids: torch.Tensor | None = None
    match_keys: Stored | None = None
    nbytes: int = field(init=False)
    search_index: Any = field(default=None, init=False, compare=False, repr=False)  # built from match_ids on first use, never stored

    def __post_init__(self) -> None:
        self.nbytes = tensor_bytes(self.encoded, self.keys, self.values, self.match_keys, self.timestamps, self.layer_kv or [], self.match_ids)

    @property
    def positions(self) -> int:
        return len(self.timestamps)

    @classmethod
    def kept(cls, window: tuple[tuple[int, int], ...], signature: bytes | None, side: Any, events_version: int,
             precision: str = "fp32", keep_encoded: bool = False, kv_precision: str | None = None,
             grown_from: "EncodedState | None" = None) -> "EncodedState":
        """The state of a model's user side (``keys``, ``values``, ``match_keys``, ``timestamps``,
        ``layer_kv``; ``encoded`` only with ``keep_encoded``) with its float tensors at ``precision``
        and each layer's keys/values at ``kv_precision`` (None: ``precision``;
        :func:`~eventrec.serving.state_precision.compress`); a recurrent encoder's fixed per-layer state
        (``(state [1, H, d, d],)``: one tensor per layer, not one row per position) stays float32: it is
        small and every later event reads it. ``grown_from``: the kept state that ``side`` grew from
        (:meth:`SequenceRanker.extend_user`): its positions keep their stored rows and only the new
        positions are compressed (:func:`~eventrec.serving.state_precision.append_rows`)."""
        kv_precision = kv_precision or precision
        old = grown_from.positions if grown_from is not None else 0

        def keep(previous: Stored | None, rows: torch.Tensor | None, at: str) -> Stored | None:
            if grown_from is None or previous is None or rows is None:
                return compress(rows, at)
            return append_rows(previous, rows[old:], at)

        def layer_part(i: int, j: int) -> Stored | None:
            return grown_from.layer_kv[i][j] if grown_from is not None and grown_from.layer_kv is not None else None

        layer_kv = None if side.layer_kv is None else [
            tuple(keep(layer_part(i, j), t, kv_precision) for j, t in enumerate(layer)) if len(layer) == 2 else tuple(layer)
            for i, layer in enumerate(side.layer_kv)]
        part = lambda name: getattr(grown_from, name) if grown_from is not None else None  # noqa: E731
        return cls(window, signature, keep(part("encoded"), side.encoded, precision) if keep_encoded else None,
                   keep(part("keys"), side.keys, precision), keep(part("values"), side.values, precision), side.timestamps, layer_kv,
                   events_version, side.match_ids, keep(part("match_keys"), side.match_keys, precision))

    @property
    def precision(self) -> str:
        """The precision its tensors are kept at (``fp32``, ``bf16``, ``int8``)."""
        return precision_of(self.keys)

    @property
    def kv_precision(self) -> str | None:
        """The precision of its layers' keys/values (``fp32``, ``bf16``, ``int8``, ``int4``; None without them,
        ``fp32`` for a recurrent encoder's state)."""
        return None if not self.layer_kv else precision_of(self.layer_kv[0][0])


class UserStateStore(ABC):
    """Where derived user states (:class:`EncodedState`) live, keyed by ``(user key, model version)``.

    A cache: ``get`` may return None for any reason (evicted, expired, unreadable) and the caller
    recomputes. Implementations: :class:`LruByBytes` (in-process, the embedded default) and
    :class:`eventrec.serving.redis_store.RedisStateStore` (shared by several replicas)."""

    evictions: int = 0

    @abstractmethod
    def get(self, key: tuple[str, str]) -> "EncodedState | None": ...

    @abstractmethod
    def put(self, key: tuple[str, str], item: "EncodedState") -> None: ...

    @abstractmethod
    def pop(self, key: tuple[str, str]) -> None: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def nbytes(self) -> int: ...


class EventLog(ABC):
    """Users' events that differ from the store (appended through the service), by user key.

    *Data*, never evicted. ``replace`` is a compare-and-set on :attr:`UserEvents.version`, so that
    replicas appending for the same user at once cannot lose an append."""

    @abstractmethod
    def get(self, user: str) -> UserEvents | None: ...

    @abstractmethod
    def replace(self, user: str, expected_version: int, events: UserEvents) -> bool:
        """Store ``events`` if the user's current version is ``expected_version`` (0: no appends yet)."""

    @abstractmethod
    def __contains__(self, user: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...


class LocalEventLog(EventLog):
    """The in-process event log (one replica): a dict under a lock."""

    def __init__(self) -> None:
        self.entries: dict[str, UserEvents] = {}
        self._lock = threading.Lock()

    def get(self, user: str) -> UserEvents | None:
        return self.entries.get(user)

    def replace(self, user: str, expected_version: int, events: UserEvents) -> bool:
        with self._lock:
            current = self.entries.get(user)
            if (current.version if current is not None else 0) != expected_version:
                return False
            self.entries[user] = events
            return True

    def __contains__(self, user: object) -> bool:
        return user in self.entries

    def __len__(self) -> int:
        return len(self.entries)


class LruByBytes(UserStateStore):
    """A thread-safe LRU whose bound is the sum of its entries' ``nbytes`` (not their count)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Hashable, item: Any) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if item.nbytes > self.max_bytes:
                return  # larger than the whole cache: serve it, do not keep it
            self._items[key] = item
            self._bytes += item.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1

    def pop(self, key: Hashable) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
