"""The event-sequence ranker: event model → jagged transformer → ad-keyed pooling → interaction → heads.

The interaction concatenates the M pooled vectors, the candidate's representation and the pairwise
dot products of the pooled vectors with a projection of the candidate (DLRM's dot interaction),
then DCNv2 cross layers and an MLP give one logit per task.

The forward pass splits into the *user side* (computed once per distinct history: event embeddings,
encoder, pooling keys/values) and the *candidate side* (per impression: item and context embeddings,
keyed pooling over the user side, the head). Serving caches the user side and runs only the
candidate side for thousands of ads, through the steps this class exposes:

* :meth:`SequenceRanker.encode_user` (optionally keeping each encoder layer's keys/values) and
  :meth:`SequenceRanker.extend_user` (new events of one user against those keys/values, causal models
  that do not read the request time: :attr:`SequenceRanker.extendable`);
* :meth:`SequenceRanker.embed_candidates` / :meth:`SequenceRanker.embed_context` (cacheable rows);
* :meth:`SequenceRanker.score`: the candidate side over embedded candidates (keyed pooling through
  the op's dispatch, interaction, cross network, heads, dot term).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from eventrec.data.batch import EventBatch
from eventrec.data.jagged import JaggedTensor
from eventrec.data.candidate_match import match_pairs, reserved_ids
from eventrec.model.candidate_search import NO_MATCH, Search, UserSearchIndex
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import AttributeEmbedder, EmbeddingTables, FeatureSpec, vocabularies_used
from eventrec.model.encoder import JaggedTransformerEncoder, LayerKV
from eventrec.model.event_model import EventModel
from eventrec.model.heads import CrossNetwork, TaskHeads, interaction_input
from eventrec.model.identity_codes import identity_codes
from eventrec.model.match_count import MatchCount
from eventrec.model.match_features import features_per_vocabulary, match_features, match_features_before, match_features_one_user
from eventrec.model.keyed_pooling import KeyedAttentionPooling
from eventrec.ops import time_gap_bucket
from eventrec.ops.jagged_helpers import gather_rows
from eventrec.ops.keyed_pooling_one_user import OneUserPlan


@dataclass
class UserSide:
    """What the candidate side reads: encoded events ``[sum(N_g), D]`` (None in a cached state of a
    model that does not read them: :attr:`SequenceRanker.reads_encoded`), keyed-pooling keys/values
    ``[sum(N_g), H, d]`` and, with match attention, the events' match keys ``match_keys [sum(N_g), V·E]``
    (the same for every head: kept once), the positions' times ``[sum(N_g)]``; with ``layer_kv`` (one history,
    :meth:`SequenceRanker.encode_user` with ``capture_kv``) also each encoder layer's keys/values
    ``[N, H, d]``, what :meth:`SequenceRanker.extend_user` grows. ``request_times [G]``: the time of the
    request that reads each history (what the keyed pooling's recency reads with ``recency: pooling``;
    serving sets it per request with :meth:`at`). ``match_ids [sum(N_g), V]``: with ``candidate_search``,
    the positions' ids in the match vocabularies (what the search reads); ``search_index``: their
    :class:`~eventrec.model.candidate_search.UserSearchIndex` (one history; serving builds it once per
    cached state, :meth:`score` builds it when absent)."""

    offsets: torch.Tensor
    max_len: int
    encoded: torch.Tensor | None
    keys: torch.Tensor
    values: torch.Tensor
    timestamps: torch.Tensor | None = None
    layer_kv: list[LayerKV] | None = None
    request_times: torch.Tensor | None = None
    match_ids: torch.Tensor | None = None
    search_index: UserSearchIndex | None = None
    match_keys: torch.Tensor | None = None

    @property
    def positions(self) -> int:
        """``sum(N_g)``: the positions of all histories (summary tokens included)."""
        return len(self.keys)

    def prefix(self, positions: int) -> "UserSide":
        """The first ``positions`` positions of a one-history user side (no layer keys/values)."""
        first = lambda t: t[:positions] if t is not None else None  # noqa: E731
        return UserSide(torch.tensor([0, positions]), positions, first(self.encoded), self.keys[:positions], self.values[:positions],
                        first(self.timestamps), None, self.request_times, first(self.match_ids), match_keys=first(self.match_keys))

    def at(self, request_time: int) -> "UserSide":
        """This one-history user side read by a request at ``request_time`` (seconds)."""
        return replace(self, request_times=torch.tensor([request_time], dtype=torch.int64, device=self.offsets.device))


class SequenceRanker(nn.Module):
    def __init__(self, spec: FeatureSpec, config: SequenceModelConfig):
        super().__init__()
        self.spec, self.config = spec, config
        schema = spec.schema
        imp = schema.impressions
        vocabularies = vocabularies_used(imp.item_attributes + imp.context_attributes)
        for stream in schema.streams:
            vocabularies |= vocabularies_used(stream.attributes)
        self.tables = EmbeddingTables(spec, config.attribute_dim, vocabularies)
        # vocabularies the candidate shares with some stream: targets of the match attention
        item_ids = {a.vocabulary_name: a.name for a in imp.item_attributes if a.kind in ("categorical", "hashed")}
        stream_vocabularies = {a.vocabulary_name for s in schema.streams for a in s.attributes if a.kind in ("categorical", "hashed")}
        self.match_vocabularies = sorted(v for v in item_ids if v in stream_vocabularies) if config.match_attention else []
        self.match_item_attributes = [item_ids[v] for v in self.match_vocabularies]
        self.item_kinds = {a.name: a.kind for a in imp.item_attributes}
        if config.candidate_search is not None and not self.match_vocabularies:
            raise ValueError("candidate_search: needs match_attention and a categorical or hashed item attribute whose vocabulary the streams share")
        # exact candidate-match features (match_features): where the candidate shares a vocabulary with the events
        self.uses_match_features = config.match_features and bool(self.match_vocabularies)
        self.event_model = EventModel(spec, config, self.tables, self.match_vocabularies, with_ids=self.reads_match_ids)
        self.encoder = JaggedTransformerEncoder(config)
        self.item_embedder = AttributeEmbedder(imp.item_attributes, self.tables)
        self.context_embedder = AttributeEmbedder(imp.context_attributes, self.tables) if imp.context_attributes else None
        query_dim = self.item_embedder.out_dim + (self.context_embedder.out_dim if self.context_embedder else 0)
        self.candidate_norm = nn.LayerNorm(query_dim)
        self.pooling = KeyedAttentionPooling(
            config.model_dim, query_dim, config.pooling_slots, config.num_heads,
            self.event_model.match_dim // config.attribute_dim, self.event_model.match_dim,  # blocks of E dims: embeddings (+ codes)
            recency_buckets=config.time_buckets if self.recency_in_pooling else 0,
        )
        slots = config.pooling_slots
        # DLRM-style dot interaction between the pooled vectors and the candidate: an MLP learns
        # products of two inputs poorly, and "does this candidate match what the user did" is one
        self.candidate_projection = nn.Linear(query_dim, config.model_dim)
        head_in = slots * config.model_dim + query_dim + (slots + 1) * slots // 2
        # the count-preserving path (experimental.match_count): soft counts of matching events per match block
        self.match_counter = MatchCount(self.pooling.match_vocabularies) if config.match_count and self.match_vocabularies else None
        head_in += self.match_counter.blocks if self.match_counter is not None else 0
        head_in += features_per_vocabulary(config.match_windows) * len(self.match_vocabularies) if self.uses_match_features else 0
        # the item counters (item_counters): what all users did with the candidate, from the batch
        windows = config.item_counter_windows
        self.item_counter_features = 0 if windows is None else len(match_pairs(schema)) * (1 + len(windows))
        head_in += self.item_counter_features
        self.cross = CrossNetwork(head_in, config.cross_layers, config.cross_rank)
        self.heads = TaskHeads(head_in, config.mlp_dims, len(imp.all_labels))
        if config.dot_term:
            self.num_tasks = len(imp.all_labels)
            self.dot_user = nn.Linear(config.model_dim, len(imp.all_labels) * config.model_dim)
            self.dot_item = nn.Linear(query_dim, config.model_dim)
        # the item's identity for in-batch negatives (rows with the positive's item are not negatives)
        self.item_key_attribute = next((a.name for a in imp.item_attributes if a.kind in ("categorical", "hashed")), None)

    # -- what the encoder reads ----------------------------------------------------------------------
    @property
    def recency_in_pooling(self) -> bool:
        """Whether the recency to the request time enters the keyed pooling (``recency: pooling``)."""
        return self.config.timestamp_encoding and self.config.recency == "pooling"

    @property
    def reads_request_time(self) -> bool:
        """Whether the encoded events depend on the request time ``T`` (``recency: encoder``): through
        the recency embedding ``bucket(T - t_i)`` (``timestamp_encoding``), or through the attention's
        time bias between each event and the summary token, whose time is then ``T``."""
        c = self.config
        if c.recency == "pooling":
            return False
        return c.timestamp_encoding or (c.time_bias and c.summary_token)

    @property
    def reads_match_ids(self) -> bool:
        """Whether the model reads the events' and the candidates' ids in the match vocabularies
        (``candidate_search``; the match features): the user side then keeps ``match_ids``."""
        return bool(self.match_vocabularies) and (self.config.candidate_search is not None or self.uses_match_features)

    @property
    def reads_encoded(self) -> bool:
        """Whether scoring reads the encoded events of the user side (the experimental dot term reads a
        history's last one); serving keeps them in a cached state only then."""
        return self.config.dot_term

    @property
    def extendable(self) -> bool:
        """Whether a user side can be grown by :meth:`extend_user` and read as a prefix: a causal
        encoder that does not read the request time (an event's encoding then depends only on the
        events before it)."""
        return self.config.causal and not self.reads_request_time

    def request_time_signature(self, event_times: torch.Tensor, request_time: int) -> torch.Tensor | None:
        """What the encoding of events at ``event_times [N]`` reads of a request at ``request_time``:
        their recency buckets ``[N]`` (int8), so that two request times with the same signature give
        the same user side; None when the model does not read the request time at all."""
        if not self.reads_request_time:
            return None
        return time_gap_bucket(request_time - event_times, self.config.time_buckets).to(torch.int8)

    # -- the user side -------------------------------------------------------------------------------
    def user_side(self, batch: EventBatch) -> UserSide:
        return self.encode_user(batch)

    def encode_user(self, batch: EventBatch, cache: UserSide | None = None, capture_kv: bool = False) -> UserSide:
        """The user side of the batch's histories (event model, encoder, pooling keys/values). With
        ``capture_kv`` (or ``cache``) it also keeps what :meth:`extend_user` needs. With ``cache`` (a
        one-history user side encoded with ``capture_kv``), ``batch`` holds only the events after it,
        which are encoded against it: :meth:`extend_user`."""
        if cache is not None:
            return self.extend_user(cache, batch)
        events, timestamps, match_keys, match_ids = self.event_model(batch)
        encoded, layer_kv = self.encoder.encode(events, timestamps, capture_kv)
        keys, values = self.pooling.keys_values(encoded)
        return UserSide(encoded.offsets, encoded.max_len, encoded.values, keys, values, timestamps, layer_kv, batch.history_timestamps, match_ids,
                        match_keys=match_keys if self.match_vocabularies else None)

    def extend_user(self, user: UserSide, batch: EventBatch) -> UserSide:
        """``user`` (one history, encoded with ``capture_kv``) grown by the events of ``batch`` (one
        history: the events after ``user``'s, at a request time after theirs); equal to encoding all the
        events at once, for an :attr:`extendable` model."""
        if not self.extendable:
            raise ValueError("extend_user: this encoder is bidirectional or reads the request time; encode the whole history instead")
        if user.layer_kv is None or user.timestamps is None:
            raise ValueError("extend_user: the user side was encoded without capture_kv")
        skip = 1 if self.config.summary_token else 0  # the new events' batch has its own summary token
        events, timestamps, match_keys, match_ids = self.event_model(batch, first_position=user.positions - skip)
        x, timestamps = events.values[skip:], timestamps[skip:]
        match_keys = match_keys[skip:] if match_keys is not None else None
        match_ids = torch.cat([user.match_ids, match_ids[skip:]]) if match_ids is not None and user.match_ids is not None else None
        encoded, layer_kv = self.encoder.extend(x, timestamps, user.layer_kv, user.timestamps)
        n = len(encoded)
        keys, values = self.pooling.keys_values(JaggedTensor(encoded, torch.tensor([0, n]), n))
        total = user.positions + n
        grown = torch.cat([user.encoded, encoded]) if user.encoded is not None else None
        grown_match = torch.cat([user.match_keys, match_keys]) if user.match_keys is not None and match_keys is not None else None
        return UserSide(torch.tensor([0, total]), total, grown, torch.cat([user.keys, keys]), torch.cat([user.values, values]),
                        torch.cat([user.timestamps, timestamps]), layer_kv, batch.history_timestamps, match_ids, match_keys=grown_match)

    # -- the candidates ------------------------------------------------------------------------------
    def candidate_input(self, item: dict, context: dict) -> torch.Tensor:
        """``[B, Q]``: the candidate's (and context's) attribute representation."""
        parts = [self.item_embedder(item)]
        if self.context_embedder is not None:
            parts.append(self.context_embedder(context))
        return self.candidate_norm(torch.cat(parts, dim=-1))

    def match_queries(self, item: dict) -> torch.Tensor | None:
        """``[B, V·E]``: the candidate's unit-normalised embeddings in the vocabularies it shares with
        the events (the target-attention queries), then with ``identity_match`` its identity codes in
        them (``V·E`` more, in the order of :meth:`EventModel.match_keys`); None without match attention."""
        if not self.match_vocabularies:
            return None
        pairs = list(zip(self.match_vocabularies, self.match_item_attributes))
        parts = [torch.nn.functional.normalize(self.tables[v](item[a]), dim=-1) for v, a in pairs]
        if self.config.identity_match:  # in the order of EventModel.match_keys: embeddings, then codes
            parts += [identity_codes(item[a], self.config.attribute_dim) for _, a in pairs]
        return torch.cat(parts, dim=-1)

    def candidate_ids(self, item: dict) -> torch.Tensor:
        """``[B, V]`` int64: the candidates' ids in the match vocabularies (``NO_MATCH`` for a reserved id:
        missing, or out of vocabulary in a categorical one), what ``candidate_search`` searches by."""
        columns = []
        for attribute in self.match_item_attributes:
            ids = item[attribute].to(torch.int64)
            reserved = torch.tensor(reserved_ids(self.item_kinds[attribute]), device=ids.device)
            columns.append(ids.masked_fill(torch.isin(ids, reserved), NO_MATCH))
        return torch.stack(columns, dim=1)

    def embed_candidates(self, item: dict) -> torch.Tensor:
        """``[C, Q_item (+ V·E)]``: C candidates' item embeddings, then their match queries; what
        :meth:`score` takes (the same for every user and request: serving caches these rows)."""
        embedded = self.item_embedder(item)
        match = self.match_queries(item)
        return embedded if match is None else torch.cat([embedded, match], dim=-1)

    def embed_context(self, context: dict) -> torch.Tensor | None:
        """``[R, Q_ctx]``: the request contexts' embeddings (None for a schema without context attributes)."""
        return self.context_embedder(context) if self.context_embedder is not None else None

    def dot_user_vectors(self, user: UserSide) -> torch.Tensor:
        """``[G, T, D]``: per history and task, the user vector of the dot term, from the history's last
        encoded position (the causal encoder's summary of all its events; the summary token when empty)."""
        if user.encoded is None:
            raise ValueError("dot term: the user side was kept without its encoded events")
        last = user.encoded[user.offsets[1:] - 1]
        return self.dot_user(last).view(len(last), self.num_tasks, -1)

    def dot_item_vectors(self, item: dict) -> torch.Tensor:
        """``[C, D]``: the dot term's item vectors of C items (attribute tensors ``[C]``), for a model
        whose candidates have no context attributes (the vector then depends on the item alone)."""
        if self.context_embedder is not None:
            raise ValueError("dot_item_vectors: the candidates have context attributes; an item's vector depends on its request")
        return self.dot_item(self.candidate_input(item, {}))

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, user: UserSide, candidates: torch.Tensor, context: torch.Tensor | None = None, history_index: torch.Tensor | None = None,
              plan: OneUserPlan | None = None, dot_parts: list | None = None, candidate_ids: torch.Tensor | None = None,
              search_index: UserSearchIndex | None = None, item_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[C, T]`` of C embedded candidates (:meth:`embed_candidates` rows ``[C, Q_item (+ V·E)]``)
        in their contexts (:meth:`embed_context`: ``[C, Q_ctx]``, or ``[1, Q_ctx]`` for all) over the
        user side's histories (``history_index [C]``; default: all of history 0). ``plan``: one user's
        candidates through the keyed pooling op's ``"one_user"`` backend (serving). With
        ``candidate_search``: ``candidate_ids [C, V]`` (:meth:`candidate_ids`), and for one user with a
        ``plan`` the pooling reads only the searched positions (``search_index``: the user's index,
        built here when None). With ``item_counters``: ``item_counts [C, K]``
        (:class:`~eventrec.data.item_counters.ItemCounters` at the request time)."""
        candidate = self.candidate_vectors(candidates, context)
        match = candidates[:, self.item_embedder.out_dim :] if self.match_vocabularies else None
        if history_index is None:
            history_index = torch.zeros(len(candidates), dtype=torch.int64, device=candidates.device)
        return self._logits(user, candidate, match, history_index, plan, dot_parts, candidate_ids, search_index, item_counts)

    def candidate_vectors(self, candidates: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``[C, Q]``: embedded candidates (:meth:`embed_candidates` rows) in their contexts, normalised:
        what :meth:`candidate_input` gives from the raw attributes."""
        parts = [candidates[:, : self.item_embedder.out_dim]]
        if context is not None:
            parts.append(context.expand(len(candidates), -1))
        return self.candidate_norm(torch.cat(parts, dim=-1))

    def candidate_side(self, user: UserSide, item: dict, context: dict, history_index: torch.Tensor,
                       dot_parts: list | None = None, item_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T]`` of B candidates over the user side's histories. With ``dot_term``,
        ``dot_parts`` (if given) receives the user vectors ``[G, T, D]`` and item vectors ``[B, D]``;
        with ``item_counters``, ``item_counts [B, K]`` are the candidates' counters."""
        ids = self.candidate_ids(item) if self.reads_match_ids else None
        return self._logits(user, self.candidate_input(item, context), self.match_queries(item), history_index, None, dot_parts, ids,
                            item_counts=item_counts)

    def _logits(self, user: UserSide, candidate: torch.Tensor, match: torch.Tensor | None, history_index: torch.Tensor,
                plan: OneUserPlan | None, dot_parts: list | None, candidate_ids: torch.Tensor | None = None,
                search_index: UserSearchIndex | None = None, item_counts: torch.Tensor | None = None) -> torch.Tensor:
        """Keyed pooling, interaction, cross network, heads and dot term of normalised candidates ``[B, Q]``."""
        if self.recency_in_pooling and (user.timestamps is None or user.request_times is None):
            raise ValueError("score: recency in the pooling needs the user side's timestamps and request_times (UserSide.at)")
        search = None
        if self.reads_match_ids and (candidate_ids is None or user.match_ids is None):
            raise ValueError("score: candidate_search and match_features need the candidates' ids (SequenceRanker.candidate_ids) and the user side's match_ids")
        if self.config.candidate_search is not None:
            search = Search(user.match_ids, candidate_ids, self.config.candidate_search, self.config.summary_token)
        if plan is not None and self.reads_match_ids:  # one user: its index, built once per state
            search_index = search_index or user.search_index or UserSearchIndex.build(user.match_ids)
        if search is not None and plan is not None:  # one user: only the searched positions are read
            pooled = self.pooling.pool_searched(user.keys, user.values, user.match_keys, user.timestamps, user.request_times, candidate, match, search,
                                                search_index)
        else:
            keys, values = user.keys, user.values
            if self.recency_in_pooling:
                keys, values = self.pooling.at_request(keys, values, user.timestamps, user.offsets, user.request_times, self.config.summary_token)
            pooled = self.pooling.pool(keys, values, user.offsets, user.max_len, candidate, history_index, match, user.match_keys if match is not None else None,
                                       plan=plan, search=search)
        x = interaction_input(pooled, candidate, self.candidate_projection(candidate))
        if self.match_counter is not None and match is not None:
            x = torch.cat([x, self.match_counter(match, user.match_keys.to(match.dtype), user.offsets, history_index).to(x.dtype)], dim=-1)
        if self.uses_match_features:
            x = torch.cat([x, self.exact_match_features(user, candidate_ids, history_index, search_index if plan is not None else None).to(x.dtype)], dim=-1)
        if self.item_counter_features:
            x = torch.cat([x, self.item_counter_input(item_counts, x)], dim=-1)
        dot = None
        if self.config.dot_term:
            users, items = self.dot_user_vectors(user), self.dot_item(candidate)
            dot = (gather_rows(users, history_index) * items.unsqueeze(1)).sum(-1)
            if dot_parts is not None:
                dot_parts.extend([users, items])
        return self.output_logits(x, dot)

    def exact_match_features(self, user: UserSide, candidate_ids: torch.Tensor, history_index: torch.Tensor,
                             index: UserSearchIndex | None = None) -> torch.Tensor:
        """``[B, (3 + W)·V]``: :mod:`eventrec.model.match_features` of the candidates (``candidate_ids [B, V]``)
        over their histories at the user side's request times; with ``index`` (one user) by its binary search."""
        if user.timestamps is None or user.request_times is None or user.match_ids is None:
            raise ValueError("match_features: the user side needs its timestamps, request_times (UserSide.at) and match_ids")
        if index is not None:
            return match_features_one_user(index, user.timestamps, user.request_times, candidate_ids, self.config.match_windows)
        return match_features(user.match_ids, user.offsets, user.timestamps, user.request_times, candidate_ids, history_index,
                              self.config.match_windows)

    def item_counter_input(self, item_counts: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: ``log1p`` of the candidates' item counters (``item_counts [B, K]``), in ``like``'s
        dtype and device."""
        if item_counts is None:
            raise ValueError("item_counters: the batch has no item_counts (training: batch_function(config) adds them; "
                             "serving: the service's ItemCounters)")
        if item_counts.shape != (len(like), self.item_counter_features):
            raise ValueError(f"item_counts: expected [{len(like)}, {self.item_counter_features}], got {list(item_counts.shape)}")
        return torch.log1p(item_counts.to(like.device, torch.float32).clamp_min(0)).to(like.dtype)

    def output_logits(self, x: torch.Tensor, dot: torch.Tensor | None) -> torch.Tensor:
        """Cross network and heads on the interaction input ``x [B, F]``, plus the dot term ``[B, T]``
        (if any) before the calibration, so that calibration maps the whole logit."""
        logits = self.heads.raw(self.cross(x))
        return self.heads.calibrate(logits if dot is None else logits + dot)

    def forward(self, batch: EventBatch, dot_parts: list | None = None) -> torch.Tensor:
        """Logits ``[B, T]`` (``dot_parts``: see :meth:`candidate_side`); a batch with one history per
        user (``history_cuts``: :mod:`eventrec.data.user_batches`) goes through :meth:`prefix_logits`."""
        if batch.history_cuts is not None:
            if dot_parts is not None:
                raise ValueError("user batches: the dot term is not supported")
            return self.prefix_logits(batch)
        return self.candidate_side(self.user_side(batch), batch.item, batch.context, batch.history_index, dot_parts, batch.item_counts)

    def check_prefix_batches(self) -> None:
        """A ValueError unless this model can read impressions grouped by user (:meth:`prefix_logits`):
        an extendable encoder (an event's encoding depends only on the events before it), candidate
        search (each impression's pooling reads a bounded set of its prefix) and none of the
        experimental terms that read a whole history (the soft match count, the dot term)."""
        if not self.extendable:
            raise ValueError("user batches: the encoder must be causal and not read the request time (recency: pooling)")
        if self.config.candidate_search is None:
            raise ValueError("user batches: the model needs candidate_search (each impression reads a searched part of its prefix)")
        if self.match_counter is not None or self.config.dot_term:
            raise ValueError("user batches: the experimental match count and dot term read a whole history; turn them off")

    def prefix_logits(self, batch: EventBatch) -> torch.Tensor:
        """Logits ``[B, T]`` of impressions grouped by user (:func:`~eventrec.data.user_batches.make_user_batch`):
        each user's history is encoded once; impression ``b`` reads the summary token and the first
        ``history_cuts[b]`` events of it at its own ``request_timestamps[b]``, through the candidate
        search (:meth:`KeyedAttentionPooling.pool_searched_before`) and, with them, the match
        features over that prefix. Equal to :meth:`forward` on :func:`~eventrec.data.gather.make_batch`'s
        per-impression histories within float rounding (``tests/test_user_batches.py``)."""
        self.check_prefix_batches()
        lengths = torch.zeros(batch.num_histories, dtype=torch.int64)
        for stream in batch.streams.values():
            lengths += stream.lengths().cpu()
        if len(lengths) and int(lengths.max()) > self.event_model.max_positions:
            raise ValueError(f"user batches: a user has {int(lengths.max())} events, more than the model's history cap "
                             f"({self.event_model.max_positions}): its prefixes would not start at its first event")
        user = self.user_side(batch)
        candidate = self.candidate_input(batch.item, batch.context)
        match = self.match_queries(batch.item)
        ids = self.candidate_ids(batch.item)
        token = 1 if self.config.summary_token else 0
        cuts = batch.history_cuts.to(candidate.device) + token
        times = batch.request_timestamps.to(candidate.device)
        history_index = batch.history_index.to(candidate.device)
        order = torch.argsort(history_index, stable=True)  # the impressions user by user
        members = order.split(torch.bincount(history_index, minlength=batch.num_histories).tolist())
        pooled_parts, feature_parts = [], []
        for g, mine in enumerate(members):
            if len(mine) == 0:
                continue
            start, end = int(user.offsets[g]), int(user.offsets[g + 1])
            index = UserSearchIndex.build(user.match_ids[start:end])
            search = Search(user.match_ids[start:end], ids[mine], self.config.candidate_search, self.config.summary_token)
            pooled_parts.append(self.pooling.pool_searched_before(user.keys[start:end], user.values[start:end], user.match_keys[start:end],
                                                                  user.timestamps[start:end], times[mine], cuts[mine], candidate[mine], match[mine],
                                                                  search, index))
            if self.uses_match_features:
                feature_parts.append(match_features_before(index, user.timestamps[start:end], times[mine], ids[mine], cuts[mine],
                                                           self.config.match_windows))
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=order.device)
        pooled = torch.cat(pooled_parts).index_select(0, back)
        x = interaction_input(pooled, candidate, self.candidate_projection(candidate))
        if self.uses_match_features:
            x = torch.cat([x, torch.cat(feature_parts).index_select(0, back).to(x.dtype)], dim=-1)
        if self.item_counter_features:
            x = torch.cat([x, self.item_counter_input(batch.item_counts, x)], dim=-1)
        return self.output_logits(x, None)
