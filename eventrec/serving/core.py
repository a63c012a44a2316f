"""The serving core: rank thousands of candidate ads for one user with a cached user side.

``RankingService.load(checkpoint, store)`` loads a trained sequence model (safetensors + JSON only)
and an event store. ``rank(user_id, candidates, context, timestamp)`` returns per-task probabilities:

1. the user's events strictly before the request time, per stream the most recent ``max_length``
   (the store's point-in-time rule, so scores equal ``eventrec evaluate``'s);
2. the user side (event model, encoder, the keyed pooling's keys/values) from the per-user cache, or
   computed once and cached (:class:`~eventrec.serving.state.LruByBytes`, bounded in bytes);
3. the candidate side for all candidates in one pass per chunk (``candidate_chunk`` rows): item
   embeddings from the per-model-version candidate cache, keyed pooling over the cached keys/values,
   interaction and heads.

When is a cached user side reused? (See ``docs/serving.md``.) The default model reads the request time
``T`` through the recency embedding ``bucket(T - t_i)`` of every event and through the attention bias
between each event and the summary token (whose time is ``T``); the order embedding counts positions
from the most recent event. So an appended event changes the input of every earlier event, and the
state is exact for a new request only if the window of events is the same and every event's recency
bucket is unchanged (buckets are log2 of the gap: the state of a user whose last event is an hour old
stays valid for about an hour). Otherwise the user side is recomputed (one encoder pass; measured in
``bench/results/serving_latency.md``).

For models that do not read the request time in the encoder (``causal: true``, ``timestamp_encoding:
false``, and not both ``time_bias`` and ``summary_token``), the state is exactly incremental: the
per-layer keys/values of the causal encoder are cached, appended events are encoded by running only
the new positions through each layer against the cached keys/values, and a request at an earlier time
reads a prefix. Tests check both against a full recompute.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from eventrec.data.batch import EventBatch
from eventrec.data.gather import attribute_tensors, gather_stream
from eventrec.data.jagged import JaggedTensor
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.model.sequence_ranker import SequenceRanker, UserSide
from eventrec.ops import jagged_self_attention, time_gap_bucket
from eventrec.store.raw_logs import ROW, TIMESTAMP_SCALE, DataError, RawTable
from eventrec.schema import EmbeddingAttribute
from eventrec.serving.scoring import CandidateScorer, Precision, Workspace, precision_dtype, score_candidates, warn_if_slow_bf16
from eventrec.serving.state import EncodedState, EventLog, LocalEventLog, LruByBytes, UserEvents, UserStateStore
from eventrec.store.reader import EventStore, Ragged
from eventrec.store.encoding import AttributeEncoder, BuildReport

CONTEXT_CACHE_ENTRIES = 4096  # distinct request contexts whose encoded vector is kept


class ServingError(Exception):
    """A request the service refuses; ``status`` is the HTTP status, ``field`` the offending field."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


class InvalidInput(ServingError):
    status = 422


class TooManyCandidates(ServingError):
    status = 413


class OutOfOrderEvents(ServingError):
    status = 409


class StoreUnavailable(ServingError):
    """The shared user-state store (Redis) cannot be read or written: HTTP 503."""

    status = 503


@dataclass
class RankResult:
    scores: np.ndarray  # [C, T] probabilities, in the candidates' order
    task_names: list[str]
    order: np.ndarray  # candidate indices, best first (by the first task), top_k of them
    user_state: str  # "hit" | "miss" | "incremental" | "prefix"
    candidate_hits: int = 0
    candidate_misses: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def model_version(checkpoint: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the checkpoint's weights file."""
    digest = hashlib.sha256()
    with open(Path(checkpoint) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _layer_forward(layer, x: torch.Tensor, offsets: torch.Tensor, max_len: int, timestamps: torch.Tensor):
    """``EncoderLayer.forward`` (eval mode) that also returns the layer's keys and values ``[N, H, d]``."""
    n, d = x.shape
    q, k, v = layer.qkv(layer.norm_attention(x)).view(n, 3, layer.num_heads, d // layer.num_heads).unbind(1)
    attended = jagged_self_attention(q, k, v, offsets, max_len=max_len, causal=layer.causal, time_bias=layer.time_bias,
                                     timestamps=timestamps if layer.time_bias is not None else None)
    x = x + layer.out(attended.reshape(n, d))
    return x + layer.ffn(layer.norm_ffn(x)), k, v


def _layer_step(layer, x: torch.Tensor, t_new: torch.Tensor, k_old: torch.Tensor, v_old: torch.Tensor, t_old: torch.Tensor):
    """New positions of a causal layer against the cached keys/values of the earlier positions."""
    n, d = x.shape
    heads = layer.num_heads
    q, k, v = layer.qkv(layer.norm_attention(x)).view(n, 3, heads, d // heads).unbind(1)
    keys, values, times = torch.cat([k_old, k]), torch.cat([v_old, v]), torch.cat([t_old, t_new])
    scores = torch.einsum("ihd,jhd->hij", q, keys) * (d // heads) ** -0.5  # [H, n, P]
    if layer.time_bias is not None:
        bucket = time_gap_bucket(t_new[:, None] - times[None, :], layer.time_bias.shape[1])
        scores = scores + layer.time_bias[:, bucket]
    old = len(k_old)
    future = torch.arange(len(keys))[None, :] > (old + torch.arange(n))[:, None]
    scores = scores.masked_fill(future, float("-inf"))
    attended = torch.einsum("hij,jhd->ihd", torch.softmax(scores, dim=-1), values)
    x = x + layer.out(attended.reshape(n, d))
    return x + layer.ffn(layer.norm_ffn(x)), k, v


class CandidateCache:
    """Item embeddings ``[Q_item]`` and match queries per distinct candidate record, for one model version.

    Keys are 64-bit hashes of the candidate's raw item-attribute values (``polars.DataFrame.hash_rows``,
    fixed seeds), looked up with one ``searchsorted`` per request. Bounded by ``max_entries``: when
    full, it is cleared (simple, and a miss only costs one embedding lookup)."""

    def __init__(self, max_entries: int = 1_000_000):
        self.max_entries = max_entries
        self.keys = np.zeros(0, dtype=np.uint64)
        self.rows = torch.zeros(0, 0)
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, positions in ``rows``)."""
        if not len(self.keys):
            return np.zeros(len(hashes), dtype=bool), np.zeros(len(hashes), dtype=np.int64)
        pos = np.searchsorted(self.keys, hashes).clip(max=len(self.keys) - 1)
        return self.keys[pos] == hashes, pos

    def insert(self, hashes: np.ndarray, rows: torch.Tensor) -> None:
        hashes, first = np.unique(hashes, return_index=True)
        rows = rows[torch.from_numpy(first)]
        if len(self.keys) + len(hashes) > self.max_entries or self.rows.shape[-1] != rows.shape[-1]:
            self.keys, self.rows = np.zeros(0, dtype=np.uint64), rows[:0]
        keys = np.concatenate([self.keys, hashes])
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], torch.cat([self.rows, rows])[torch.from_numpy(order)]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.rows.numel() * self.rows.element_size()


def scoring_device_of(name: str) -> torch.device:
    """``RankingService(scoring_device=)`` parsed and checked: a ValueError naming the field for a device
    this process cannot use."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"scoring_device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"scoring_device: {name!r} but torch.cuda.is_available() is False (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"scoring_device: 'cpu' or 'cuda[:index]', got {name!r}")
    return device


class RankingService:
    """Load once, then ``rank`` and ``append_events`` from any thread: user states and appends under one
    lock, candidate scoring in up to ``scoring_slots`` requests at once (the model is only read)."""

    def __init__(self, model: SequenceRanker, store: EventStore, version: str, max_candidates: int = 10_000,
                 user_cache_bytes: int = 512 << 20, candidate_cache_entries: int = 1_000_000, candidate_chunk: int = 2048,
                 attention_chunk: int | None = None, state_store: UserStateStore | None = None, event_log: EventLog | None = None,
                 precision: Precision = "fp32", scoring_slots: int = 1, scoring_device: str = "cpu"):
        """``candidate_chunk``: candidates per pass of the model's own pooling (naive baseline, other
        poolings); ``attention_chunk``: candidates per attention block of the restructured keyed
        pooling (its logits ``[H, chunk·M, N]`` should stay in cache; None: about 4 MiB of logits).
        ``state_store`` / ``event_log``: where user states and appended events live (default: in this
        process, an LRU of ``user_cache_bytes`` and a dict; for several replicas,
        :func:`eventrec.serving.redis_store.redis_stores`). ``precision``: ``"fp32"`` (scores equal
        ``eventrec evaluate``'s within 1e-5) or ``"bf16"`` (the candidate side of the serving path in
        bfloat16 on a copy of its modules; faster where the hardware has bf16, scores within ~1e-2:
        ``docs/serving.md``). ``scoring_slots``: requests whose candidates are scored at the same time
        (each with its own attention buffers; torch's intra-op threads are shared by all, so on a few
        cores 1 is usually best: ``bench/serving_http_load.py --scoring-slots``); the user side is
        computed under one lock either way. ``scoring_device``: where the candidates are scored (e.g.
        ``"cuda"``): a copy of the candidate side lives there, and each request's prepared user, candidate
        rows and context are copied there; the user side (encoding) and the caches stay on the CPU."""
        if scoring_slots < 1:
            raise ValueError(f"scoring_slots: must be >= 1, got {scoring_slots}")
        device = scoring_device_of(scoring_device)
        if not isinstance(model, SequenceRanker):
            raise TypeError("serving needs the event-sequence model (the DLRM has no cached user side)")
        dtype = precision_dtype(precision)
        if dtype != torch.float32 and not isinstance(model.pooling, KeyedAttentionPooling):
            raise ValueError(f"precision: {precision!r} applies to the keyed-attention pooling's serving path; this model pools by mean (use 'fp32')")
        if device.type != "cpu" and not isinstance(model.pooling, KeyedAttentionPooling):
            raise ValueError(f"scoring_device: {scoring_device!r} applies to the keyed-attention pooling's serving path; this model pools by mean")
        self.model, self.store, self.version = model.eval(), store, version
        self.config = model.config
        self.schema = store.schema
        self.task_names = list(store.label_names)
        self.max_candidates, self.candidate_chunk, self.attention_chunk = max_candidates, candidate_chunk, attention_chunk
        self.workspaces: queue.LifoQueue[Workspace] = queue.LifoQueue()  # attention buffers, one per scoring slot
        for _ in range(scoring_slots):
            self.workspaces.put(Workspace())
        self.restructured_pooling = True  # False: score with the model's own keyed pooling (benchmarks)
        self.precision = precision
        self.reference_scorer = CandidateScorer(model)  # the model's own modules (float32)
        self.scorer = CandidateScorer(model, dtype, device)  # the serving path's: a copy in bf16 and / or on scoring_device
        self.scoring_device = device
        if dtype != torch.float32:
            warn_if_slow_bf16(device)
        self.users: UserStateStore = state_store if state_store is not None else LruByBytes(user_cache_bytes)
        self.candidates = CandidateCache(candidate_cache_entries)
        self.events: EventLog = event_log if event_log is not None else LocalEventLog()  # appended events (data)
        self.encoder = AttributeEncoder.fitted(self.schema, store.manifest["splits"]["train_end"], store.vocabularies, store.statistics)
        self.lock = threading.RLock()
        self.counters = {"user_hit": 0, "user_miss": 0, "user_incremental": 0, "user_prefix": 0, "cold_start": 0, "events_appended": 0}
        c = self.config
        self.time_invariant = c.causal and not c.timestamp_encoding and not (c.time_bias and c.summary_token)
        self.stream_index = {name: i for i, name in enumerate(store.streams)}
        self._user_rows = {self._user_key(u): i for i, u in enumerate(store.user_ids.tolist())}
        imp = self.schema.impressions
        self.item_columns = [a.source_column for a in imp.item_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
        self.context_columns = [a.source_column for a in imp.context_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
        self.context_vectors: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # LRU of encoded contexts (about 1 ms each)
        self.context_lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: Path | str, store: Path | str | EventStore, **options) -> "RankingService":
        from eventrec.training.factory import load_trained_model

        model, _, _, _ = load_trained_model(Path(checkpoint))
        store = store if isinstance(store, EventStore) else EventStore.open(store)
        return cls(model, store, model_version(Path(checkpoint)), **options)

    # -- users and events ------------------------------------------------------------------------
    @staticmethod
    def _user_key(user_id: Any) -> str:
        return str(user_id)

    def user_events(self, user_id: Any) -> UserEvents:
        key = self._user_key(user_id)
        events = self.events.get(key)
        if events is None:
            events = UserEvents.from_store(self.store, self._user_rows.get(key))
        return events

    def is_known(self, user_id: Any) -> bool:
        key = self._user_key(user_id)
        return key in self._user_rows or key in self.events

    def append_events(self, user_id: Any, events: list[dict]) -> dict:
        """Append a user's new events (raw records: the events file's columns, incl. the type column).

        Rule: events are sorted by time (stable) and must not be older than the user's last event
        (equal times are accepted and go after the existing ones); otherwise the whole call is refused
        (:class:`OutOfOrderEvents`, HTTP 409) and nothing is appended. All-or-nothing, also on bad input.
        """
        if not events:
            return {"appended": 0}
        source = self.schema.events
        per_stream: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            name = event.get("stream")
            if name is None:
                kind = event.get(source.type_column) if source and source.type_column else None
                name = next((s.name for s in self.schema.streams if s.event_types and kind is not None and str(kind) in s.event_types), None)
                if name is None:
                    raise InvalidInput(f"event {i}: no stream reads event type {kind!r}", f"events[{i}].{source.type_column if source else 'stream'}")
            elif name not in self.stream_index:
                raise InvalidInput(f"event {i}: unknown stream {name!r}", f"events[{i}].stream")
            per_stream.setdefault(name, []).append(i)
        with self.lock:
            for _ in range(10):  # compare-and-set: another replica may append for this user at the same time
                current = self.user_events(user_id)
                updated = self._appended(current, per_stream, events, source)
                if self.events.replace(self._user_key(user_id), current.version, UserEvents(updated.streams, current.version + 1)):
                    break
            else:
                raise StoreUnavailable(f"user {user_id!r}: events changed concurrently 10 times; retry")
            self.counters["events_appended"] += len(events)
            self._check_prefix_states(user_id, current, updated)
        return {"appended": len(events), "events": sum(updated.counts().values())}

    def _appended(self, current: UserEvents, per_stream: dict[str, list[int]], events: list[dict], source) -> UserEvents:
        """``current`` with the validated, encoded ``events`` appended (new objects; raises on bad input)."""
        last = current.last_timestamp()
        updated = current
        for name, rows in per_stream.items():
            stream = next(s for s in self.schema.streams if s.name == name)
            src = stream.source or source
            ts_column = src.timestamp_column
            for i in rows:
                if ts_column not in events[i] or not isinstance(events[i][ts_column], (int, float)) or isinstance(events[i][ts_column], bool):
                    raise InvalidInput(f"event {i}: missing or non-numeric {ts_column!r}", f"events[{i}].{ts_column}")
                for a in stream.attributes:
                    if not (isinstance(a, EmbeddingAttribute) and a.table) and a.source_column not in events[i]:
                        raise InvalidInput(f"event {i}: missing attribute {a.source_column!r}", f"events[{i}].{a.source_column}")
            try:
                frame = pl.DataFrame([events[i] for i in rows], infer_schema_length=None)
                times = frame[ts_column].cast(pl.Int64).to_numpy() // TIMESTAMP_SCALE[src.timestamp_unit]
                order = np.argsort(times, kind="stable")
                frame, times = frame[order.tolist()], times[order]
                encoded = self._encode(f"streams.{name}", stream.attributes, frame)
            except (DataError, pl.exceptions.PolarsError, TypeError, ValueError) as error:
                raise InvalidInput(f"events of stream {name!r}: {error}", "events") from error
            if last is not None and int(times[0]) < last:
                raise OutOfOrderEvents(f"event at {int(times[0])} is older than the user's last event ({last}); "
                                       "events must arrive in time order (equal times are accepted)", "events")
            updated = updated.appended(name, times, encoded)
        return updated

    def _check_prefix_states(self, user_id: Any, before: UserEvents, after: UserEvents) -> None:
        """An appended event that ties the last event's time but sorts before it (lower stream index)
        is not an append in the merged timeline: drop the incremental state of that user."""
        last = before.last_timestamp()
        if last is None:
            return
        added = [(int(t), self.stream_index[name]) for name, data in after.streams.items()
                 for t in data.timestamps[len(before.streams[name].timestamps):]]
        last_streams = [self.stream_index[n] for n, d in before.streams.items() if len(d.timestamps) and int(d.timestamps[-1]) == last]
        if any(t == last and s < max(last_streams) for t, s in added):
            self.users.pop((self._user_key(user_id), self.version))

    # -- encoding raw records ----------------------------------------------------------------------
    def _encode(self, place: str, attributes: list, frame: pl.DataFrame) -> dict[str, np.ndarray | Ragged]:
        frame = frame.with_row_index(ROW) if ROW not in frame.columns else frame
        table = RawTable(frame.lazy(), Path("<request>"))  # type: ignore[arg-type]
        out: dict[str, np.ndarray | Ragged] = {}
        for attribute in attributes:
            encoded = self.encoder.encode(place, attribute, frame, BuildReport(), table)
            if encoded:
                out[attribute.name] = Ragged(encoded["values"].astype(np.int64), encoded["offsets"]) if "offsets" in encoded else encoded["values"]
        return out

    def _group(self, attributes: list, frame: pl.DataFrame) -> dict:
        columns = self._encode("impressions", attributes, frame)
        lookups = {k: v for k, v in self.store.item_looked_up.items() if v[0] in columns}
        return attribute_tensors(columns, lookups, np.arange(frame.height))

    def candidate_frame(self, candidates: list[dict] | dict[str, list] | pl.DataFrame) -> pl.DataFrame:
        """The candidates' item columns as a frame, from records, columns (``{column: [values]}``, one
        list per item column, all of one length: cheaper to send and to parse than records) or a frame."""
        if isinstance(candidates, dict):
            missing = [c for c in self.item_columns if c not in candidates]
            if missing:
                raise InvalidInput(f"candidates: missing column(s) {missing}", f"candidates.{missing[0]}")
            lengths = {c: len(candidates[c]) if isinstance(candidates[c], list) else None for c in self.item_columns}
            for column, length in lengths.items():
                if length is None or length != lengths[self.item_columns[0]]:
                    raise InvalidInput(f"candidates.{column}: every column must be a list of the same length "
                                       f"({self.item_columns[0]}: {lengths[self.item_columns[0]]}, {column}: {length})", f"candidates.{column}")
            try:
                return pl.DataFrame({c: candidates[c] for c in self.item_columns})
            except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
                raise InvalidInput(f"candidates: {error}", "candidates") from error
        if isinstance(candidates, pl.DataFrame):
            missing = [c for c in self.item_columns if c not in candidates.columns]
            if missing:
                raise InvalidInput(f"candidates: missing column(s) {missing}", f"candidates.{missing[0]}")
            return candidates.select(self.item_columns)
        for column in self.item_columns:
            for i, record in enumerate(candidates):
                if column not in record:
                    raise InvalidInput(f"candidate {i}: missing attribute {column!r}", f"candidates[{i}].{column}")
        try:
            return pl.DataFrame(candidates, infer_schema_length=None).select(self.item_columns)
        except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
            raise InvalidInput(f"candidates: {error}", "candidates") from error

    # -- the user side -----------------------------------------------------------------------------
    def _window(self, events: UserEvents, timestamp: int) -> tuple[tuple[int, int], ...]:
        window = []
        for data in events.streams.values():
            end = int(np.searchsorted(data.timestamps, timestamp, side="left"))  # strictly before
            window.append((max(0, end - data.max_length), end))
        return tuple(window)

    def _batch(self, events: UserEvents, window, timestamp: int) -> EventBatch:
        streams = {name: gather_stream(data, np.array([s]), np.array([e])) for (name, data), (s, e) in zip(events.streams.items(), window)}
        one = torch.zeros(1, dtype=torch.int64)
        return EventBatch(one, one, torch.tensor([timestamp]), one, torch.tensor([timestamp]), streams, {}, {},
                          torch.zeros(1, len(self.task_names)), list(self.task_names))

    def _signature(self, events: UserEvents, window, timestamp: int) -> bytes | None:
        if self.time_invariant:
            return None
        times = np.concatenate([d.timestamps[s:e] for d, (s, e) in zip(events.streams.values(), window)] + [np.zeros(0, dtype=np.int64)])
        return time_gap_bucket(torch.from_numpy(timestamp - times), self.config.time_buckets).numpy().astype(np.int8).tobytes()

    @torch.no_grad()
    def _compute(self, events: UserEvents, window, timestamp: int, capture: bool) -> EncodedState:
        model = self.model
        jagged, t, match = model.event_model(self._batch(events, window, timestamp))
        x, layer_kv = jagged.values, [] if capture else None
        if capture:
            for layer in model.encoder.layers:
                if len(x):
                    x, k, v = _layer_forward(layer, x, jagged.offsets, jagged.max_len, t)
                else:
                    k = v = x.new_zeros(0, layer.num_heads, x.shape[1] // layer.num_heads)
                layer_kv.append((k, v))
            encoded = JaggedTensor(model.encoder.norm(x), jagged.offsets, jagged.max_len)
        else:
            encoded = model.encoder(jagged, t)
        keys = values = None
        if isinstance(model.pooling, KeyedAttentionPooling):
            keys, values = model.pooling.keys_values(encoded, match)
        return EncodedState(window, self._signature(events, window, timestamp), encoded.values, keys, values, t, layer_kv, events.version)

    @torch.no_grad()
    def _extend(self, state: EncodedState, events: UserEvents, window, timestamp: int) -> EncodedState:
        """Exact incremental append (time-invariant causal models): run only the new positions."""
        model = self.model
        new_window = tuple((old_end, end) for (_, old_end), (_, end) in zip(state.window, window))
        jagged, t, match = model.event_model(self._batch(events, new_window, timestamp))
        skip = 1 if self.config.summary_token else 0  # the new events' batch has its own summary token
        x, t = jagged.values[skip:], t[skip:]
        match = match[skip:] if match is not None else None
        layer_kv = []
        for layer, (k_old, v_old) in zip(model.encoder.layers, state.layer_kv or []):
            x, k, v = _layer_step(layer, x, t, k_old, v_old, state.timestamps)
            layer_kv.append((torch.cat([k_old, k]), torch.cat([v_old, v])))
        n = len(x)
        encoded = model.encoder.norm(x)
        keys, values = state.keys, state.values
        if isinstance(model.pooling, KeyedAttentionPooling):
            k_new, v_new = model.pooling.keys_values(JaggedTensor(encoded, torch.tensor([0, n]), n), match)
            keys, values = torch.cat([state.keys, k_new]), torch.cat([state.values, v_new])
        return EncodedState(window, None, torch.cat([state.encoded, encoded]), keys, values, torch.cat([state.timestamps, t]), layer_kv, events.version)

    def _prefix_ok(self, events: UserEvents, window) -> bool:
        total = sum(e for _, e in window)
        return self.time_invariant and all(s == 0 for s, _ in window) and total <= self.model.event_model.max_positions and \
            all(d.sampling == "most_recent" for d in events.streams.values())

    def user_side(self, user_id: Any, timestamp: int) -> tuple[UserSide, str]:
        """The user side for a request at ``timestamp`` (seconds) and how it was obtained."""
        with self.lock:
            if not self.is_known(user_id):
                self.counters["cold_start"] += 1
            events = self.user_events(user_id)
            window = self._window(events, timestamp)
            key = (self._user_key(user_id), self.version)
            state = self.users.get(key)
            status = "miss"
            if self._prefix_ok(events, window):
                covered = [e for _, e in state.window] if state is not None and state.layer_kv is not None else None
                wanted = [e for _, e in window]
                if covered is not None and covered == wanted:
                    status = "hit"
                elif covered is not None and all(c <= w for c, w in zip(covered, wanted)):
                    state = self._extend(state, events, window, timestamp)
                    self.users.put(key, state)
                    status = "incremental"
                elif covered is not None and all(c >= w for c, w in zip(covered, wanted)):
                    status = "prefix"
                else:
                    state = self._compute(events, window, timestamp, capture=True)
                    self.users.put(key, state)
                positions = sum(wanted) + (1 if self.config.summary_token else 0)
                side = UserSide(torch.tensor([0, positions]), positions, state.encoded[:positions],
                                None if state.keys is None else state.keys[:positions], None if state.values is None else state.values[:positions])
            else:
                signature = self._signature(events, window, timestamp)
                if state is not None and state.layer_kv is None and state.events_version == events.version and state.window == window and state.signature == signature:
                    status = "hit"
                else:
                    state = self._compute(events, window, timestamp, capture=False)
                    self.users.put(key, state)
                n = len(state.encoded)
                side = UserSide(torch.tensor([0, n]), n, state.encoded, state.keys, state.values)
            self.counters[f"user_{status}"] += 1
        return side, status

    # -- the candidate side ------------------------------------------------------------------------
    @torch.no_grad()
    def embed_items(self, frame: pl.DataFrame) -> torch.Tensor:
        """``[C, Q_item + V·E]`` for candidate records, without the cache: the item embedding, then the
        unit-normalised match queries."""
        item = self._group(self.schema.impressions.item_attributes, frame)
        match = self.model.match_queries(item)
        embedded = self.model.item_embedder(item)
        return embedded if match is None else torch.cat([embedded, match], dim=-1)

    @torch.no_grad()
    def _item_rows(self, frame: pl.DataFrame) -> tuple[torch.Tensor, int, int]:
        """``[C, Q_item + V·E]``: item embeddings and match queries, from the cache where present."""
        hashes = frame.hash_rows(seed=0).to_numpy()
        with self.candidates.lock:
            found, pos = self.candidates.lookup(hashes)
            missing = np.flatnonzero(~found)
            if len(missing):
                self.candidates.insert(hashes[missing], self.embed_items(frame[missing.tolist()]))
                found, pos = self.candidates.lookup(hashes)
                assert found.all()
            rows = self.candidates.rows[torch.from_numpy(pos)]
            self.candidates.hits += len(hashes) - len(missing)
            self.candidates.misses += len(missing)
        return rows, len(hashes) - len(missing), len(missing)

    @torch.no_grad()
    def _score(self, user: UserSide, rows: torch.Tensor, context: torch.Tensor | None, restructured: bool | None = None) -> torch.Tensor:
        """``candidate_side`` of the model over cached item rows, in chunks. Logits ``[C, T]``.

        ``restructured``: the keyed pooling of :mod:`eventrec.serving.scoring` (same math, fewer FLOPs;
        in the service's precision); False: the model's own ``pool`` in float32 (the naive baseline and
        a cross-check; also the path of a mean-pooling model, always float32)."""
        model = self.model
        restructured = self.restructured_pooling if restructured is None else restructured
        if restructured and isinstance(model.pooling, KeyedAttentionPooling):  # the restructured path (same math, see scoring.py)
            if not len(rows):
                return torch.zeros(0, len(self.task_names))
            prepared = self.scorer.prepare_user(model.pooling, user.keys, user.values)
            workspace = self.workspaces.get()  # blocks while every scoring slot is busy
            try:
                return score_candidates(self.scorer, prepared, rows, context, self.attention_chunk, workspace, self._dot_user(user))
            finally:
                self.workspaces.put(workspace)
        scorer, dot_user = self.reference_scorer, self._dot_user(user)
        out = []
        for start in range(0, len(rows), self.candidate_chunk):
            chunk = rows[start : start + self.candidate_chunk]
            candidate = scorer.candidate(chunk, context)
            history_index = torch.zeros(len(chunk), dtype=torch.int64)
            if isinstance(model.pooling, KeyedAttentionPooling):
                pooled = model.pooling.pool(user.keys, user.values, user.offsets, user.max_len, candidate, history_index, scorer.match_query(chunk))
            else:
                pooled = model.pooling(JaggedTensor(user.encoded, user.offsets, user.max_len), candidate, history_index)
            out.append(scorer.head(pooled, candidate, dot_user))
        return torch.cat(out) if out else torch.zeros(0, len(self.task_names))

    def _dot_user(self, user: UserSide) -> torch.Tensor | None:
        """The user's vectors of the model's dot term ``[T, D]`` (None without one)."""
        return self.model.dot_user_vectors(user)[0] if self.model.config.dot_term else None

    def request_seconds(self, timestamp: int | float | None) -> int:
        imp = self.schema.impressions
        if timestamp is None:
            return int(time.time())
        return int(timestamp) // TIMESTAMP_SCALE[imp.timestamp_unit]

    @torch.no_grad()
    def context_tensor(self, context: dict | None) -> torch.Tensor | None:
        if self.model.context_embedder is None:
            return None
        context = context or {}
        for column in self.context_columns:
            if column not in context:
                raise InvalidInput(f"context: missing attribute {column!r}", f"context.{column}")
        key = tuple((type(context[c]).__name__, context[c]) for c in self.context_columns)
        try:
            with self.context_lock:
                vector = self.context_vectors.get(key)
                if vector is not None:
                    self.context_vectors.move_to_end(key)
                    return vector
        except TypeError:  # an unhashable value (a list): encoded below, not cached
            key = None
        try:
            frame = pl.DataFrame([{c: context[c] for c in self.context_columns}], infer_schema_length=None)
            vector = self.model.context_embedder(self._group(self.schema.impressions.context_attributes, frame))
        except (DataError, pl.exceptions.PolarsError, TypeError, ValueError) as error:
            raise InvalidInput(f"context: {error}", "context") from error
        if key is not None:
            with self.context_lock:
                self.context_vectors[key] = vector
                if len(self.context_vectors) > CONTEXT_CACHE_ENTRIES:
                    self.context_vectors.popitem(last=False)
        return vector

    def rank(self, user_id: Any, candidates: list[dict] | dict[str, list] | pl.DataFrame, context: dict | None = None,
             timestamp: int | None = None, top_k: int | None = None) -> RankResult:
        """Scores of every candidate for ``user_id`` at ``timestamp`` (the impressions' unit; default now).
        ``candidates``: records, columns or a frame (:meth:`candidate_frame`)."""
        started = time.perf_counter()
        if isinstance(candidates, pl.DataFrame):
            count = candidates.height
        elif isinstance(candidates, dict):
            count = max((len(v) for v in candidates.values() if isinstance(v, list)), default=0)
        else:
            count = len(candidates)
        if count > self.max_candidates:
            raise TooManyCandidates(f"{count} candidates; the limit is {self.max_candidates}", "candidates")
        if top_k is not None and top_k < 1:
            raise InvalidInput("top_k must be >= 1", "top_k")
        frame = self.candidate_frame(candidates)
        context_vector = self.context_tensor(context)
        seconds = self.request_seconds(timestamp)
        timings = {"encode": time.perf_counter() - started}
        side, status = self.user_side(user_id, seconds)
        timings["user_side"] = time.perf_counter() - started - timings["encode"]
        rows, hits, misses = self._item_rows(frame)
        logits = self._score(side, rows, context_vector)  # the model is read-only here: no lock (scoring slots)
        scores = torch.sigmoid(logits).float().cpu().numpy()
        order = np.argsort(-scores[:, 0], kind="stable") if len(scores) else np.zeros(0, dtype=np.int64)
        if top_k is not None:
            order = order[:top_k]
        timings["total"] = time.perf_counter() - started
        return RankResult(scores, self.task_names, order, status, hits, misses, timings)

    # -- the naive baseline (benchmarks) ------------------------------------------------------------
    @torch.no_grad()
    def naive_scores(self, user_id: Any, candidates: pl.DataFrame, context: dict | None, timestamp: int, batch: int = 256) -> np.ndarray:
        """No cache: the user's history is re-encoded for every batch of ``batch`` candidates, which are
        scored with the model's own keyed pooling (not the restructured serving path)."""
        events = self.user_events(user_id)
        seconds = self.request_seconds(timestamp)
        context_vector = self.context_tensor(context)
        out = []
        for start in range(0, candidates.height, batch):
            sub = candidates[start : start + batch]
            state = self._compute(events, self._window(events, seconds), seconds, capture=False)
            n = len(state.encoded)
            side = UserSide(torch.tensor([0, n]), n, state.encoded, state.keys, state.values)
            out.append(torch.sigmoid(self._score(side, self.embed_items(sub), context_vector, restructured=False)).numpy())
        return np.concatenate(out)

    def stats(self) -> dict:
        return {
            **self.counters,
            "user_cache_entries": len(self.users), "user_cache_bytes": self.users.nbytes, "user_cache_evictions": self.users.evictions,
            "candidate_cache_hits": self.candidates.hits, "candidate_cache_misses": self.candidates.misses,
            "candidate_cache_entries": len(self.candidates.keys), "candidate_cache_bytes": self.candidates.nbytes,
            # the shared (Redis) store's own counters: unreadable entries ignored, failed calls served locally
            "user_store_corrupt": getattr(self.users, "corrupt", 0), "user_store_errors": getattr(self.users, "errors", 0),
        }
