"""The user side of serving: which events a request reads, and when a cached user state is reused,
grown or recomputed. The model computes; this module only decides and caches.

When is a cached user side reused? (See ``docs/serving.md``.) A model that reads the request time
(:attr:`SequenceRanker.reads_request_time`: the recency embedding ``bucket(T - t_i)`` of every event,
or the attention bias between each event and the summary token, whose time is ``T``) gives a state
that is exact for a new request only if the window of events is the same and every event's recency
bucket is unchanged (buckets are log2 of the gap: the state of a user whose last event is an hour old
stays valid for about an hour). Otherwise the user side is recomputed (one encoder pass).

For :attr:`SequenceRanker.extendable` models (causal, not reading the request time) the state is
exactly incremental: the per-layer keys/values are kept, appended events are encoded by
:meth:`SequenceRanker.extend_user` against them, and a request at an earlier time reads a prefix.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from eventrec.data.batch import EventBatch
from eventrec.data.gather import gather_stream
from eventrec.data.sampling import select_events
from eventrec.model.candidate_search import UserSearchIndex
from eventrec.model.sequence_ranker import SequenceRanker, UserSide
from eventrec.store.point_in_time import cut_before
from eventrec.serving.state import EncodedState, UserEvents, UserStateStore
from eventrec.serving.state_precision import check_kv_cache_precision, check_state_precision, decompress
from eventrec.store.reader import StreamData

Window = tuple[tuple[int, int], ...]  # per stream (start, end) of the events a request reads
Status = Literal["hit", "miss", "incremental", "prefix"]


def request_window(events: UserEvents, timestamp: int) -> Window:
    """Per stream the events a request at ``timestamp`` reads: the store's point-in-time cut
    (:func:`~eventrec.store.point_in_time.cut_before`) and the stream's sampling policy
    (:func:`~eventrec.data.sampling.select_events`), as in training batches, so that scores equal
    ``eventrec evaluate``'s. Serving keeps windows as one ``[start, end)`` range per stream: the
    selected events when they are contiguous (always with ``most_recent``), else (a value policy
    keeping older events over newer ones) the candidate range ``[0, cut)``, from which
    :func:`window_events` picks the same events again (the policy is deterministic and reads only
    the candidates)."""
    window = []
    for data in events.streams.values():
        cut = cut_before(data.timestamps, timestamp)
        index, _ = select_events(data.sampling, np.array([0]), np.array([cut]), data.max_length, data)
        start, end = (int(index[0]), int(index[-1]) + 1) if len(index) else (cut, cut)
        window.append((start, end) if end - start == len(index) else (0, cut))
    return tuple(window)


def window_events(data: StreamData, window: tuple[int, int]) -> np.ndarray:
    """Indices ``[n]`` of the events one stream's window reads: the policy applied to ``[start, end)``
    (the identity on a contiguous selection: every policy keeps all events within ``max_length``),
    exactly what :func:`window_batch` gathers through :func:`~eventrec.data.gather.gather_stream`."""
    index, _ = select_events(data.sampling, np.array([window[0]]), np.array([window[1]]), data.max_length, data)
    return index


def window_batch(events: UserEvents, window: Window, timestamp: int, num_tasks: int, task_names: list[str]) -> EventBatch:
    """A one-history :class:`EventBatch` of the window's events for a request at ``timestamp``."""
    streams = {name: gather_stream(data, np.array([s]), np.array([e])) for (name, data), (s, e) in zip(events.streams.items(), window)}
    one = torch.zeros(1, dtype=torch.int64)
    return EventBatch(one, one, torch.tensor([timestamp]), one, torch.tensor([timestamp]), streams, {}, {},
                      torch.zeros(1, num_tasks), list(task_names))


def state_side(state: EncodedState, positions: int | None = None, with_layer_kv: bool = False) -> UserSide:
    """The cached state as the model's :class:`UserSide` (its first ``positions`` positions: a prefix),
    in float32 whatever its ``state_precision`` (:func:`~eventrec.serving.state_precision.decompress`).
    The layers' keys/values (what an append reads, never a request's scoring) only ``with_layer_kv``."""
    n = state.positions
    layer_kv = None if state.layer_kv is None or not with_layer_kv else [tuple(decompress(t) for t in layer) for layer in state.layer_kv]
    side = UserSide(torch.tensor([0, n]), n, decompress(state.encoded), decompress(state.keys), decompress(state.values), state.timestamps, layer_kv,
                    match_ids=state.match_ids, match_keys=decompress(state.match_keys))
    if positions is not None and positions != n:
        return side.prefix(positions)
    if state.match_ids is not None:  # candidate search: the index of the whole state, built once
        if state.search_index is None:
            state.search_index = UserSearchIndex.build(state.match_ids)
        side.search_index = state.search_index
    return side


class UserStates:
    """Computes, reuses and grows one model's user states in a :class:`UserStateStore`, kept at
    ``precision`` (``fp32``, ``bf16``, ``int8``) with the encoder layers' keys/values at ``kv_precision``
    (those or ``int4``; None: ``precision``; :mod:`eventrec.serving.state_precision`); the caller
    holds the service's lock. A request reads the kept state, also right after computing it, so that
    its scores do not depend on whether the state was cached."""

    def __init__(self, model: SequenceRanker, states: UserStateStore, task_names: list[str], precision: str = "fp32",
                 kv_precision: str | None = None):
        self.model, self.states, self.task_names = model, states, task_names
        self.precision = check_state_precision(precision)
        self.kv_precision = check_kv_cache_precision(kv_precision or precision, model.config.model_dim // model.config.num_heads)

    def batch(self, events: UserEvents, window: Window, timestamp: int) -> EventBatch:
        return window_batch(events, window, timestamp, len(self.task_names), self.task_names)

    def signature(self, events: UserEvents, window: Window, timestamp: int) -> bytes | None:
        """The recency buckets of the window's events at ``timestamp`` (None: the model does not read the time)."""
        times = np.concatenate([d.timestamps[window_events(d, w)] for d, w in zip(events.streams.values(), window)] + [np.zeros(0, dtype=np.int64)])
        signature = self.model.request_time_signature(torch.from_numpy(times), timestamp)
        return None if signature is None else signature.numpy().tobytes()

    @torch.no_grad()
    def compute(self, events: UserEvents, window: Window, timestamp: int, capture: bool) -> EncodedState:
        """The model's user side of the window (with each layer's keys/values when ``capture``)."""
        side = self.model.encode_user(self.batch(events, window, timestamp), capture_kv=capture)
        return EncodedState.kept(window, self.signature(events, window, timestamp), side, events.version, self.precision, self.model.reads_encoded,
                                 self.kv_precision)

    @torch.no_grad()
    def extend(self, state: EncodedState, events: UserEvents, window: Window, timestamp: int) -> EncodedState:
        """``state`` grown by the window's events after it (exact: :meth:`SequenceRanker.extend_user`)."""
        new_window = tuple((old_end, end) for (_, old_end), (_, end) in zip(state.window, window))
        side = self.model.extend_user(state_side(state, with_layer_kv=True), self.batch(events, new_window, timestamp))
        return EncodedState.kept(window, None, side, events.version, self.precision, self.model.reads_encoded, self.kv_precision, grown_from=state)

    def prefix_ok(self, events: UserEvents, window: Window) -> bool:
        """Whether this window can be served from a grown or longer state (extendable model, every
        window starting at the stream's first event, within the model's history cap)."""
        total = sum(e for _, e in window)
        return self.model.extendable and all(s == 0 for s, _ in window) and total <= self.model.event_model.max_positions and \
            all(d.sampling == "most_recent" for d in events.streams.values())

    def get(self, key: tuple[str, str], events: UserEvents, timestamp: int) -> tuple[UserSide, Status]:
        """The user side for a request at ``timestamp`` (seconds, :meth:`UserSide.at`) and how it was obtained."""
        side, status = self._get(key, events, timestamp)
        return side.at(timestamp), status

    def _get(self, key: tuple[str, str], events: UserEvents, timestamp: int) -> tuple[UserSide, Status]:
        window = request_window(events, timestamp)
        state = self.states.get(key)
        if self.prefix_ok(events, window):
            return self._incremental(key, state, events, window, timestamp)
        signature = self.signature(events, window, timestamp)
        if state is not None and state.layer_kv is None and state.events_version == events.version and state.window == window and state.signature == signature:
            return state_side(state), "hit"
        state = self.compute(events, window, timestamp, capture=False)
        self.states.put(key, state)
        return state_side(state), "miss"

    def _incremental(self, key, state: EncodedState | None, events: UserEvents, window: Window, timestamp: int) -> tuple[UserSide, Status]:
        covered = [e for _, e in state.window] if state is not None and state.layer_kv is not None else None
        wanted = [e for _, e in window]
        status: Status = "miss"
        if covered is not None and covered == wanted:
            status = "hit"
        elif covered is not None and all(c <= w for c, w in zip(covered, wanted)):
            state, status = self.extend(state, events, window, timestamp), "incremental"
            self.states.put(key, state)
        elif covered is not None and all(c >= w for c, w in zip(covered, wanted)):
            status = "prefix"
        else:
            state = self.compute(events, window, timestamp, capture=True)
            self.states.put(key, state)
        positions = sum(wanted) + (1 if self.model.config.summary_token else 0)
        return state_side(state, positions), status
