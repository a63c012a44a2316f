"""The event model: each event's attributes → one event embedding, all streams merged per user.

Per stream: the attribute embeddings are concatenated and linearly compressed to ``D`` (then
layer-normalised, so that every event enters at the same scale), and a stream-type embedding is added. The streams are merged into one time-ordered timeline per history
(ties: stream order, then position), the timeline is cut to its most recent ``max_history`` events,
and a timestamp encoding is added (``timestamp_encoding``). With ``recency: encoder``: a recency
embedding of the log-bucketed gap between the event and the request, and an order embedding of the
position counted from the most recent event. With ``recency: pooling``: only an order embedding of the
position counted from the history's first event (the recency then enters the keyed pooling per
request), so that nothing here reads the request time. Finally a learned summary token is put at
position 0 of every history (configurable): attention then has somewhere to go when no event matches
the candidate, and an empty history is not empty. Its time is the request's with ``recency: encoder``
and :data:`SUMMARY_TIME` with ``recency: pooling``.

Output: ``JaggedTensor`` ``[sum(N_g), D]`` over the batch's G distinct histories, the events'
timestamps ``[sum(N_g)]`` int64, and (with match vocabularies) ``[sum(N_g), V·E]``: each event's
unit-normalised embedding in every vocabulary it shares with the candidate, for target attention
(``[sum(N_g), 2·V·E]`` with ``experimental.identity_match``: then each vocabulary's identity code too).
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.data.batch import EventBatch
from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import AttributeEmbedder, EmbeddingTables, FeatureSpec, id_attributes_only
from eventrec.model.candidate_search import NO_ID
from eventrec.model.identity_codes import identity_codes
from eventrec.ops.time_buckets import time_gap_bucket

SUMMARY_TIME = 0
"""The summary token's time with ``recency: pooling``: a constant, so that the encoder's time bias
between an event and the token does not read the request time (and an appended event sees the token
as a full recompute would)."""


class EventModel(nn.Module):
    def __init__(self, spec: FeatureSpec, config: SequenceModelConfig, tables: EmbeddingTables, match_vocabularies: list[str] | None = None,
                 with_ids: bool = False):
        super().__init__()
        self.config = config
        self.with_ids = with_ids and bool(match_vocabularies)  # whether forward returns the positions' match ids
        self.__dict__["tables"] = tables
        self.match_vocabularies = list(match_vocabularies or [])
        # per stream: the attribute holding each match vocabulary (None when the stream lacks it)
        self.match_attributes = {
            stream.name: [next((a.name for a in stream.attributes if a.kind in ("categorical", "hashed") and a.vocabulary_name == v), None) for v in self.match_vocabularies]
            for stream in spec.schema.streams
        }
        self.stream_names = [s.name for s in spec.schema.streams]
        self.embedders = nn.ModuleDict()
        self.compress = nn.ModuleDict()
        for stream in spec.schema.streams:
            attributes = stream.attributes if config.event_attributes else id_attributes_only(stream.attributes, stream.id_attribute)
            embedder = AttributeEmbedder(attributes, tables)
            self.embedders[stream.name] = embedder
            self.compress[stream.name] = nn.Sequential(nn.Linear(embedder.out_dim, config.model_dim), nn.LayerNorm(config.model_dim))
        self.stream_type = nn.Embedding(len(self.stream_names), config.model_dim)
        nn.init.normal_(self.stream_type.weight, std=0.02)
        self.max_positions = sum(s.max_length for s in spec.schema.streams)
        if config.max_history is not None:
            self.max_positions = min(self.max_positions, config.max_history)
        if config.summary_token:
            self.summary_token = nn.Parameter(torch.randn(config.model_dim) * 0.02)
        if config.timestamp_encoding:
            # created, then initialised, in this order: the random draws of the published runs
            self.recency = nn.Embedding(config.time_buckets, config.model_dim) if config.recency == "encoder" else None
            self.order = nn.Embedding(self.max_positions, config.model_dim)
            if self.recency is not None:
                nn.init.normal_(self.recency.weight, std=0.02)
            nn.init.normal_(self.order.weight, std=0.02)

    @property
    def match_dim(self) -> int:
        """Width of each event's match keys: ``V·E`` per block kind (learned embeddings; identity codes with
        ``identity_match``)."""
        kinds = 1 + bool(self.config.identity_match)
        return len(self.match_vocabularies) * self.tables.dim * kinds

    def match_keys(self, name: str, attributes: dict, count: int, device) -> torch.Tensor:
        """``[N, match_dim]``: the unit-normalised embedding of each match vocabulary, then (with
        ``identity_match``) each one's identity code; zeros where the stream lacks the vocabulary."""
        dim = self.tables.dim
        pairs = list(zip(self.match_vocabularies, self.match_attributes[name]))
        absent = torch.zeros(count, dim, device=device)
        blocks = [absent if a is None else torch.nn.functional.normalize(self.tables[v](attributes[a]), dim=-1) for v, a in pairs]
        if self.config.identity_match:
            blocks += [absent if a is None else identity_codes(attributes[a], dim) for _, a in pairs]
        return torch.cat(blocks, dim=-1)

    def match_ids(self, name: str, attributes: dict, count: int, device) -> torch.Tensor:
        """``[N, V]`` int64: each event's id in every match vocabulary (``NO_ID`` where the stream lacks it)."""
        columns = [torch.full((count,), NO_ID, dtype=torch.int64, device=device) if a is None else attributes[a].to(torch.int64)
                   for a in self.match_attributes[name]]
        return torch.stack(columns, dim=1) if columns else torch.zeros(count, 0, dtype=torch.int64, device=device)

    def forward(self, batch: EventBatch, first_position: int = 0) -> tuple[JaggedTensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The batch's histories as jagged event embeddings ``[sum(N_g), D]`` (see the module's doc), the
        positions' times ``[sum(N_g)]``, match keys ``[sum(N_g), V·E]`` (or None) and, with
        ``with_ids`` (candidate search, match features), the positions' ids in the match vocabularies ``[sum(N_g), V]`` (``NO_ID``
        at the summary token; else None). ``first_position`` (``recency: pooling``): the order index of
        each history's first event, for events that continue a history encoded before
        (:meth:`SequenceRanker.extend_user`)."""
        device = batch.history_timestamps.device
        num_histories = batch.num_histories
        with_ids = self.with_ids
        pieces, rows, times, matches, ids = [], [], [], [], []
        for index, name in enumerate(self.stream_names):
            stream = batch.streams[name]
            if len(stream.timestamps) == 0:
                continue
            x = self.compress[name](self.embedders[name](stream.attributes, stream.multi))
            pieces.append(x + self.stream_type.weight[index])
            rows.append(stream.jagged().row_ids())
            times.append(stream.timestamps)
            if self.match_vocabularies:
                matches.append(self.match_keys(name, stream.attributes, len(x), device))
            if with_ids:
                ids.append(self.match_ids(name, stream.attributes, len(x), device))
        match_dim = self.match_dim
        if not pieces:
            pieces, rows, times = [torch.zeros(0, self.config.model_dim, device=device)], [torch.zeros(0, dtype=torch.int64, device=device)], [torch.zeros(0, dtype=torch.int64, device=device)]
            matches = [torch.zeros(0, match_dim, device=device)] if self.match_vocabularies else []
        x, row, t = torch.cat(pieces), torch.cat(rows), torch.cat(times)
        match = torch.cat(matches) if matches else None
        event_ids = (torch.cat(ids) if ids else torch.zeros(0, len(self.match_vocabularies), dtype=torch.int64, device=device)) if with_ids else None
        # time order within each history; stable sorts keep stream order, then position, on ties
        order = torch.sort(t, stable=True).indices
        order = order[torch.sort(row[order], stable=True).indices]
        x, row, t = x.index_select(0, order), row[order], t[order]  # index_select: the fast backward
        match = match.index_select(0, order) if match is not None else None
        event_ids = event_ids[order] if event_ids is not None else None
        lengths = torch.bincount(row, minlength=num_histories)
        offsets = torch.zeros(num_histories + 1, dtype=torch.int64, device=device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        from_end = offsets[1:][row] - 1 - torch.arange(len(row), device=device)  # 0 = most recent
        keep = from_end < self.max_positions
        if not bool(keep.all()):
            kept = keep.nonzero().squeeze(1)
            x, row, t, from_end = x.index_select(0, kept), row[kept], t[kept], from_end[kept]
            match = match.index_select(0, kept) if match is not None else None
            event_ids = event_ids[kept] if event_ids is not None else None
            lengths = torch.bincount(row, minlength=num_histories)
            torch.cumsum(lengths, 0, out=offsets[1:])
        if self.config.timestamp_encoding and self.config.recency == "encoder":
            gap = batch.history_timestamps[row] - t
            x = x + self.recency(time_gap_bucket(gap, self.config.time_buckets)) + self.order(from_end)
        elif self.config.timestamp_encoding:  # order from the first kept event: appending events moves nothing
            from_start = torch.arange(len(row), device=device) - offsets[:-1][row] + first_position
            if len(from_start) and int(from_start.max()) >= self.max_positions:
                raise ValueError(f"event model: position {int(from_start.max())} is past the history cap ({self.max_positions} events)")
            x = x + self.order(from_start)
        if self.config.summary_token:
            token_times = batch.history_timestamps if self.config.recency == "encoder" else torch.full_like(batch.history_timestamps, SUMMARY_TIME)
            positions_before = offsets
            x, t, match, offsets, lengths = self._prepend_summary_token(x, t, match, offsets, lengths, token_times)
            if event_ids is not None:
                with_token = event_ids.new_full((len(x), event_ids.shape[1]), NO_ID)
                with_token[torch.arange(len(event_ids), device=device) + torch.repeat_interleave(
                    torch.arange(1, num_histories + 1, device=device), positions_before[1:] - positions_before[:-1], output_size=len(event_ids))] = event_ids
                event_ids = with_token
        max_len = int(lengths.max()) if num_histories else 0
        return JaggedTensor(x, offsets, max_len), t, match, event_ids

    def _prepend_summary_token(self, x, t, match, offsets, lengths, token_times):
        """Insert the learned token at position 0 of every history (its times: ``token_times [G]``)."""
        num_histories = len(lengths)
        new_lengths = lengths + 1
        new_offsets = torch.zeros_like(offsets)
        torch.cumsum(new_lengths, 0, out=new_offsets[1:])
        token_positions = new_offsets[:-1]
        event_positions = torch.arange(len(x), device=x.device) + torch.repeat_interleave(torch.arange(1, num_histories + 1, device=x.device), lengths, output_size=len(x))
        new_x = x.new_empty(len(x) + num_histories, x.shape[1])
        new_x[token_positions] = self.summary_token.to(x.dtype).expand(num_histories, -1)
        new_x[event_positions] = x
        new_t = t.new_empty(len(new_x))
        new_t[token_positions] = token_times
        new_t[event_positions] = t
        new_match = None
        if match is not None:
            new_match = match.new_zeros(len(new_x), match.shape[1])  # matches nothing: cosine 0
            new_match[event_positions] = match
        return new_x, new_t, new_match, new_offsets, new_lengths
