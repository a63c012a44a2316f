"""The serving core: rank thousands of candidate ads for one user with a cached user side.

``RankingService.load(checkpoint, store)`` loads a trained sequence model (safetensors + JSON only)
and an event store. ``rank(user_id, candidates, context, timestamp)`` returns per-task probabilities:

1. the user's events strictly before the request time, per stream the most recent ``max_length``
   (the store's point-in-time rule, so scores equal ``eventrec evaluate``'s);
2. the user side from the per-user cache, or computed by the model and cached
   (:mod:`eventrec.serving.user_states`: when a state is reused, grown or recomputed);
3. the candidate side for all candidates: embedded candidates from the per-model-version candidate
   cache, then the model's :meth:`~eventrec.model.sequence_ranker.SequenceRanker.score` in the
   service's precision and on its scoring device (:mod:`eventrec.serving.scoring`).

This module holds the service: caches, locks, counters and device placement. The model computes.
"""

from __future__ import annotations

import copy
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

from eventrec.data.item_counters import item_counters_of
from eventrec.model.quantized_tables import TablePrecision, quantize_tables, table_precision_of
from eventrec.model.sequence_ranker import SequenceRanker, UserSide
from eventrec.ops.keyed_pooling_one_user import Workspace
from eventrec.serving.candidate_cache import CandidateCache
from eventrec.serving.errors import InvalidInput, OutOfOrderEvents, ServingError, StoreUnavailable, TooManyCandidates
from eventrec.serving.records import Records
from eventrec.serving.scoring import CandidateScorer, Precision, precision_dtype, warn_if_slow_bf16
from eventrec.serving.state import EventLog, LocalEventLog, LruByBytes, UserEvents, UserStateStore
from eventrec.serving.state_precision import KvCachePrecision, StatePrecision, check_kv_cache_precision, check_state_precision
from eventrec.serving.user_states import UserStates
from eventrec.serving.values import timestamp_seconds
from eventrec.store.raw_logs import DataError
from eventrec.store.reader import EventStore

__all__ = ["CandidateCache", "InvalidInput", "OutOfOrderEvents", "RankResult", "RankingService", "ServingError", "StoreUnavailable",
           "TooManyCandidates", "model_version"]

CONTEXT_CACHE_ENTRIES = 4096  # distinct request contexts whose encoded vector is kept


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
                 user_cache_bytes: int = 512 << 20, candidate_cache_entries: int = 1_000_000, candidate_chunk: int | None = None,
                 attention_chunk: int | None = None, state_store: UserStateStore | None = None, event_log: EventLog | None = None,
                 precision: Precision = "fp32", scoring_slots: int = 1, scoring_device: str = "cpu",
                 future_tolerance_s: int | None = 86_400, table_precision: TablePrecision = "fp32", state_precision: StatePrecision = "fp32",
                 kv_cache_precision: KvCachePrecision | None = None):
        """``candidate_chunk``: candidates per call of the model's scoring (None: all of a request at
        once); ``attention_chunk``: candidates per attention block of the one-user keyed pooling (its
        logits ``[H, chunk·M, N]`` should stay in cache; None: about 4 MiB of logits).
        ``state_store`` / ``event_log``: where user states and appended events live (default: in this
        process, an LRU of ``user_cache_bytes`` and a dict; for several replicas,
        :func:`eventrec.serving.redis_store.redis_stores`). ``precision``: ``"fp32"`` (scores equal
        ``eventrec evaluate``'s within 1e-5) or ``"bf16"`` (the candidate side in bfloat16 on a copy of
        its modules; faster where the hardware has bf16, scores within ~1e-2: ``docs/serving.md``).
        ``scoring_slots``: requests whose candidates are scored at the same time (each with its own
        attention buffers; on a few cores 1 is usually best: ``bench/serving_http_load.py
        --scoring-slots``); the user side is computed under one lock either way. ``scoring_device``:
        where the candidates are scored (e.g. ``"cuda"``): a copy of the candidate side lives there, and
        each request's user side, candidate rows and context are copied there; the user side
        (encoding) and the caches stay on the CPU. ``future_tolerance_s``: an appended event may be at
        most this many seconds later than the server's clock (None: no clock check; the build's range
        ``[1970, 2200)`` holds either way). ``table_precision``: the embedding tables at inference,
        ``"fp32"``, ``"fp16"`` or ``"int8"`` (row-wise; :mod:`eventrec.model.quantized_tables`; a model whose
        tables are at another precision is copied first, the caller's is not changed).
        ``state_precision``: the cached user states, ``"fp32"``, ``"bf16"`` or ``"int8"`` (per-row scale;
        :mod:`eventrec.serving.state_precision`): about 2x / 3.7x less memory per cached user, scores
        within 1e-2 of fp32 (``docs/serving.md``). ``kv_cache_precision``: the encoder layers' keys/values
        in a state (read only when events are appended): one of those or ``"int4"`` (per head); None:
        the ``state_precision``."""
        if scoring_slots < 1:
            raise ValueError(f"scoring_slots: must be >= 1, got {scoring_slots}")
        device = scoring_device_of(scoring_device)
        if not isinstance(model, SequenceRanker):
            raise TypeError("serving needs the event-sequence model (the DLRM has no cached user side)")
        dtype = precision_dtype(precision)
        check_state_precision(state_precision)
        kv_cache_precision = check_kv_cache_precision(kv_cache_precision or state_precision, model.config.model_dim // model.config.num_heads)
        held = table_precision_of(model)
        if held != table_precision:
            if held != "fp32" and table_precision in ("fp32", "fp16", "int8"):
                raise ValueError(f"table_precision: {table_precision!r}, but the model's tables are already {held}")
            model = quantize_tables(copy.deepcopy(model), table_precision)  # validates table_precision
        self.model, self.store, self.version = model.eval(), store, version
        self.table_precision, self.state_precision, self.kv_cache_precision = table_precision, state_precision, kv_cache_precision
        # cached user states are keyed by this: states of other table, state or KV-cache precisions are other states
        self.state_version = version + "".join(f"+{kind}-{p}" for kind, p in (("tables", table_precision), ("states", state_precision)) if p != "fp32")
        if kv_cache_precision != state_precision:
            self.state_version += f"+kv-{kv_cache_precision}"
        self.schema = store.schema
        self.task_names = list(store.label_names)
        if model.item_counter_features:
            item_counters_of(store)  # indexed once here, not on the first request
        if future_tolerance_s is not None and future_tolerance_s < 0:
            raise ValueError(f"future_tolerance_s: must be >= 0 or None, got {future_tolerance_s}")
        self.future_tolerance_s = future_tolerance_s
        self.max_candidates, self.candidate_chunk, self.attention_chunk = max_candidates, candidate_chunk, attention_chunk
        self.workspaces: queue.LifoQueue[Workspace] = queue.LifoQueue()  # attention buffers, one per scoring slot
        for _ in range(scoring_slots):
            self.workspaces.put(Workspace())
        self.precision = precision
        self.scorer = CandidateScorer(model, dtype, device)  # the model, or a copy in bf16 and / or on scoring_device
        self.scoring_device = device
        if dtype != torch.float32:
            warn_if_slow_bf16(device)
        self.users: UserStateStore = state_store if state_store is not None else LruByBytes(user_cache_bytes)
        self.user_states = UserStates(model, self.users, self.task_names, state_precision, kv_cache_precision)
        self.candidates = CandidateCache(candidate_cache_entries)
        self.events: EventLog = event_log if event_log is not None else LocalEventLog()  # appended events (data)
        self.records = Records(store)
        self.lock = threading.RLock()
        self.counters = {"user_hit": 0, "user_miss": 0, "user_incremental": 0, "user_prefix": 0, "cold_start": 0, "events_appended": 0}
        self._user_rows = {self._user_key(u): i for i, u in enumerate(store.user_ids.tolist())}
        self.context_vectors: OrderedDict[tuple, torch.Tensor] = OrderedDict()  # LRU of encoded contexts (about 1 ms each)
        self.context_lock = threading.Lock()

    @classmethod
    def load(cls, checkpoint: Path | str, store: Path | str | EventStore, **options) -> "RankingService":
        from eventrec.training.factory import load_trained_model

        store = store if isinstance(store, EventStore) else EventStore.open(store)
        model, _, _, _ = load_trained_model(Path(checkpoint), store, options.pop("allow_store_mismatch", False))
        quantize_tables(model, options.get("table_precision", "fp32"))  # in place: the float32 tables are not kept
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
        per_stream = self.records.event_streams(events)
        latest = None if self.future_tolerance_s is None else int(time.time()) + self.future_tolerance_s
        with self.lock:
            for _ in range(10):  # compare-and-set: another replica may append for this user at the same time
                current = self.user_events(user_id)
                updated = self.records.appended(current, per_stream, events, self.schema.events, latest)
                if self.events.replace(self._user_key(user_id), current.version, UserEvents(updated.streams, current.version + 1)):
                    break
            else:
                raise StoreUnavailable(f"user {user_id!r}: events changed concurrently 10 times; retry")
            self.counters["events_appended"] += len(events)
            self._check_prefix_states(user_id, current, updated)
        return {"appended": len(events), "events": sum(updated.counts().values())}

    def drop_appended_events(self, user_id: Any, after_seconds: int) -> dict:
        """Operator repair: drop the user's *appended* events later than ``after_seconds`` (seconds since
        1970; the store's history is never touched), e.g. after a bad append (a time in milliseconds
        sent as seconds) that makes every later append a 409. All-or-nothing, a compare-and-set like
        :meth:`append_events`; the user's cached state of this model version is dropped.
        Returns ``{"dropped": n, "events": remaining}``."""
        key = self._user_key(user_id)
        base = UserEvents.from_store(self.store, self._user_rows.get(key)).counts()
        with self.lock:
            for _ in range(10):
                current = self.events.get(key)
                if current is None:
                    return {"dropped": 0, "events": sum(base.values())}
                keep = {name: base[name] + int((data.timestamps[base[name]:] <= after_seconds).sum()) for name, data in current.streams.items()}
                if self.events.replace(key, current.version, current.truncated(keep, current.version + 1)):
                    break
            else:
                raise StoreUnavailable(f"user {user_id!r}: events changed concurrently 10 times; retry")
            self.users.pop((key, self.state_version))
        return {"dropped": sum(current.counts().values()) - sum(keep.values()), "events": sum(keep.values())}

    def _check_prefix_states(self, user_id: Any, before: UserEvents, after: UserEvents) -> None:
        """An appended event that ties the last event's time but sorts before it (lower stream index)
        is not an append in the merged timeline: drop the incremental state of that user."""
        last = before.last_timestamp()
        if last is None:
            return
        added = [(int(t), self.records.stream_index[name]) for name, data in after.streams.items()
                 for t in data.timestamps[len(before.streams[name].timestamps):]]
        last_streams = [self.records.stream_index[n] for n, d in before.streams.items() if len(d.timestamps) and int(d.timestamps[-1]) == last]
        if any(t == last and s < max(last_streams) for t, s in added):
            self.users.pop((self._user_key(user_id), self.state_version))

    def candidate_frame(self, candidates: list[dict] | dict[str, list] | pl.DataFrame) -> pl.DataFrame:
        """The candidates' item columns as a frame (:meth:`Records.candidate_frame`)."""
        return self.records.candidate_frame(candidates)

    # -- the user side -----------------------------------------------------------------------------
    def user_side(self, user_id: Any, timestamp: int) -> tuple[UserSide, str]:
        """The user side for a request at ``timestamp`` (seconds) and how it was obtained."""
        with self.lock:
            if not self.is_known(user_id):
                self.counters["cold_start"] += 1
            side, status = self.user_states.get((self._user_key(user_id), self.state_version), self.user_events(user_id), timestamp)
            self.counters[f"user_{status}"] += 1
        return side, status

    # -- the candidate side ------------------------------------------------------------------------
    @torch.no_grad()
    def embed_items(self, frame: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Candidate records without the cache: their rows ``[C, Q_item (+ V·E)]``
        (:meth:`SequenceRanker.embed_candidates`) and, for a model that reads them, their match ids
        ``[C, V]`` (:meth:`SequenceRanker.candidate_ids`; else None): what :meth:`SequenceRanker.score` takes."""
        group = self.records.group(self.schema.impressions.item_attributes, frame)
        return self.model.embed_candidates(group), (self.model.candidate_ids(group) if self.model.reads_match_ids else None)

    @torch.no_grad()
    def cached_items(self, frame: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
        """Candidate records' rows ``[C, Q_item + V·E]`` (item embeddings and match queries) and, for a
        model that reads them (candidate search, match features), their ids ``[C, V]``
        (:meth:`SequenceRanker.candidate_ids`, cached beside the rows), from the cache where present;
        (rows, ids, hits, misses)."""
        hashes = frame.hash_rows(seed=0).to_numpy()
        with_ids = self.model.reads_match_ids
        with self.candidates.lock:
            found, pos = self.candidates.lookup(hashes)
            missing = np.flatnonzero(~found)
            if len(missing):
                group = self.records.group(self.schema.impressions.item_attributes, frame[missing.tolist()])
                self.candidates.insert(hashes[missing], self.model.embed_candidates(group), self.model.candidate_ids(group) if with_ids else None)
                found, pos = self.candidates.lookup(hashes)
                assert found.all()
            index = torch.from_numpy(pos)
            rows = self.candidates.rows[index]
            ids = self.candidates.ids[index] if with_ids else None
            self.candidates.hits += len(hashes) - len(missing)
            self.candidates.misses += len(missing)
        return rows, ids, len(hashes) - len(missing), len(missing)

    def item_counts(self, frame: pl.DataFrame, seconds: int) -> torch.Tensor | None:
        """``[C, K]``: the candidates' item counters at the request time ``seconds``
        (:mod:`eventrec.data.item_counters`, over the store's events), or None for a model without them."""
        if not self.model.item_counter_features:
            return None
        counters = item_counters_of(self.store)
        names = {pair.item_attribute for pair in counters.pairs}
        group = self.records.group([a for a in self.schema.impressions.item_attributes if a.name in names], frame)
        ids = {name: group[name].numpy() for name in names}
        return torch.from_numpy(counters.counts(ids, np.full(frame.height, seconds, dtype=np.int64), self.model.config.item_counter_windows))

    def _score(self, user: UserSide, rows: torch.Tensor, context: torch.Tensor | None, ids: torch.Tensor | None = None,
               item_counts: torch.Tensor | None = None) -> torch.Tensor:
        """The model's scores of cached item rows for one user, in the service's precision and on its
        scoring device, ``candidate_chunk`` rows at a time: float32 logits ``[C, T]`` on the CPU."""
        if not len(rows):
            return torch.zeros(0, len(self.task_names))
        workspace = self.workspaces.get()  # blocks while every scoring slot is busy
        try:
            step = self.candidate_chunk or len(rows)
            return torch.cat([self.scorer.score(user, rows[start : start + step], context, workspace, self.attention_chunk,
                                                candidate_ids=ids[start : start + step] if ids is not None else None,
                                                item_counts=item_counts[start : start + step] if item_counts is not None else None).cpu()
                              for start in range(0, len(rows), step)])
        finally:
            self.workspaces.put(workspace)

    def request_seconds(self, timestamp: int | float | None) -> int:
        """The request time in seconds (now when None), range-checked like the build's timestamps."""
        if timestamp is None:
            return int(time.time())
        return timestamp_seconds(timestamp, self.schema.impressions.timestamp_unit, "timestamp")

    @torch.no_grad()
    def context_tensor(self, context: dict | None) -> torch.Tensor | None:
        if self.model.context_embedder is None:
            return None
        context = context or {}
        self.records.check_record(self.records.context_attributes, context, "context")
        key = tuple((type(context[c]).__name__, context[c]) for c in self.records.context_columns)
        try:
            with self.context_lock:
                vector = self.context_vectors.get(key)
                if vector is not None:
                    self.context_vectors.move_to_end(key)
                    return vector
        except TypeError:  # an unhashable value (a list): encoded below, not cached
            key = None
        try:
            frame = pl.DataFrame([{c: context[c] for c in self.records.context_columns}], infer_schema_length=None)
            vector = self.model.embed_context(self.records.group(self.schema.impressions.context_attributes, frame))
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
        rows, ids, hits, misses = self.cached_items(frame)
        logits = self._score(side, rows, context_vector, ids, self.item_counts(frame, seconds))  # read-only model: no lock (scoring slots)
        scores = torch.sigmoid(logits).float().cpu().numpy()
        order = np.argsort(-scores[:, 0], kind="stable") if len(scores) else np.zeros(0, dtype=np.int64)
        if top_k is not None:
            order = order[:top_k]
        timings["total"] = time.perf_counter() - started
        return RankResult(scores, self.task_names, order, status, hits, misses, timings)

    def stats(self) -> dict:
        return {
            **self.counters,
            "user_cache_entries": len(self.users), "user_cache_bytes": self.users.nbytes, "user_cache_evictions": self.users.evictions,
            "candidate_cache_hits": self.candidates.hits, "candidate_cache_misses": self.candidates.misses,
            "candidate_cache_entries": len(self.candidates.keys), "candidate_cache_bytes": self.candidates.nbytes,
            # the shared (Redis) store's own counters: unreadable entries ignored, failed calls served locally
            "user_store_corrupt": getattr(self.users, "corrupt", 0), "user_store_errors": getattr(self.users, "errors", 0),
            "user_store_local_hits": getattr(self.users, "local_hits", 0),
            "user_store_local_bytes": self.users.local.nbytes if hasattr(self.users, "local") else 0,
        }
