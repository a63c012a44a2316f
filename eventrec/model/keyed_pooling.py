"""Ad-keyed multi-head attention pooling: M query slots per candidate attend over the user's events.

For each impression (user history g, candidate c) the queries are ``slot_m + W_q [c; context]``
(``[M, H, d]``); keys and values are projections of the history's encoded events, computed once per
history and shared by all of its candidates. Cost O(M·N) per candidate, not O(N²). Candidates of
the same history are grouped so that one call of :func:`eventrec.ops.keyed_pooling_attention` (jagged
queries ``[sum_g C_g·M, H, d]`` over jagged keys ``[sum(N_g), H, d]``) serves them all. An empty
history pools to zeros. For one user and many candidates (serving), ``plan`` picks the op's
``"one_user"`` backend, with the match term passed factored (:class:`eventrec.ops.keyed_pooling_one_user.FactoredMatch`).

With ``recency_buckets`` (the model's ``recency: pooling``), the keys and values of each request
gain learned embeddings of the recency ``bucket(T - t_j)`` of each event to the request time ``T``
and of its rank from the most recent event (:data:`RANKS` ranks, older ones share a row)
(:meth:`KeyedAttentionPooling.at_request`; the summary token has rows of its own): the user side
stays independent of ``T`` and of later events, and only this O(N·D) step is per request.

Shapes: encoded ``[sum(N_g), D]`` over G histories; ``query_input [B, Q]``; ``history_index [B]``
→ pooled ``[B, M, D]``. The user side is kept lean: keys and values ``[sum(N_g), H, d]`` and, with
match attention, the events' match keys ``[sum(N_g), V·E]`` once (the same for every head); the
padded form the Triton kernels read (``"folded"``) is built per call, never kept.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from eventrec.data.jagged import JaggedTensor
from eventrec.model.candidate_search import Search, UserSearchIndex, search_mask
from eventrec.ops import keyed_pooling_attention
from eventrec.ops.attention import auto_backend
from eventrec.ops.grouped_pooling import GroupMatch, grouped_pooling_attention
from eventrec.ops.jagged_helpers import gather_rows, padded_index, select_rows
from eventrec.ops.keyed_pooling_one_user import FactoredMatch, OneUserPlan
from eventrec.ops.selected_pooling import selected_pooling_attention
from eventrec.ops.time_buckets import time_gap_bucket

MatchForm = Literal["auto", "folded", "bias"]
RANKS = 16
"""With ``recency_buckets``: the positions from the most recent event that get a rank embedding of their own."""


class KeyedAttentionPooling(nn.Module):
    """Keyed pooling; with ``match_dim > 0`` also *target attention*: the score of event e for
    candidate c gains ``sum_v w[h, v] * cos(E_v[c], E_v[e])`` over the vocabularies v the candidate
    shares with the events (learned embeddings of the same tables, learned weights per head), so
    that from the first step an event matching the candidate draws attention."""

    def __init__(self, model_dim: int, query_input_dim: int, num_slots: int, num_heads: int, match_vocabularies: int = 0, match_dim: int = 0,
                 recency_buckets: int = 0):
        super().__init__()
        self.num_slots, self.num_heads, self.model_dim = num_slots, num_heads, model_dim
        self.head_dim = model_dim // num_heads
        self.slots = nn.Parameter(torch.randn(num_slots, model_dim) * 0.02)
        self.query = nn.Linear(query_input_dim, num_slots * model_dim)
        self.norm = nn.LayerNorm(model_dim)
        self.key_value = nn.Linear(model_dim, 2 * model_dim)
        self.out = nn.Linear(model_dim, model_dim)
        self.match_vocabularies, self.match_dim = match_vocabularies, match_dim
        if match_vocabularies:
            # +2 to a head's logit per matching vocabulary at initialisation
            self.match_weight = nn.Parameter(torch.full((num_heads, match_vocabularies), 2.0 * self.head_dim**0.5))
        self.recency_buckets = recency_buckets
        if recency_buckets:  # rows 0..buckets-1: the events' recency buckets; the last row: the summary token
            self.recency_keys = nn.Embedding(recency_buckets + 1, model_dim)
            self.recency_values = nn.Embedding(recency_buckets + 1, model_dim)
            # rows 0..RANKS-1: the position from the most recent event (the last row for all older ones); RANKS: the summary token
            self.rank_keys = nn.Embedding(RANKS + 1, model_dim)
            self.rank_values = nn.Embedding(RANKS + 1, model_dim)
            for table in (self.recency_keys, self.recency_values, self.rank_keys, self.rank_values):
                nn.init.normal_(table.weight, std=0.02)

    def at_request(self, keys: torch.Tensor, values: torch.Tensor, timestamps: torch.Tensor, offsets: torch.Tensor,
                   request_times: torch.Tensor, summary_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[sum(N_g), H, d]`` of histories read by requests at ``request_times
        [G]`` (int64 seconds): with ``recency_buckets``, the learned recency embeddings of each position's
        ``bucket(T_g - t_j)`` (``timestamps [sum(N_g)]``; the summary token at each history's position 0
        when ``summary_token``: its own row) added to every head; unchanged otherwise."""
        if not self.recency_buckets or len(keys) == 0:
            return keys, values
        lengths = offsets[1:] - offsets[:-1]
        history = torch.repeat_interleave(torch.arange(len(lengths), device=keys.device), lengths, output_size=len(keys))
        summary = torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
        if summary_token:
            summary[offsets[:-1][lengths > 0]] = True
        from_end = offsets[1:][history] - 1 - torch.arange(len(keys), device=keys.device)
        return self.with_recency(keys, values, timestamps, request_times[history], summary, from_end)

    def with_recency(self, keys: torch.Tensor, values: torch.Tensor, timestamps: torch.Tensor, request_times: torch.Tensor,
                     summary: torch.Tensor, from_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[P, H, d]`` of P positions (times ``[P]``, read at ``request_times [P]``,
        ``summary [P]`` True at summary tokens, ``from_end [P]``: 0 at the most recent position) plus their
        recency and rank embeddings."""
        bucket = time_gap_bucket(request_times - timestamps, self.recency_buckets).masked_fill(summary, self.recency_buckets)
        rank = from_end.clamp(0, RANKS - 1).masked_fill(summary, RANKS)
        n, head_dim = len(keys), self.head_dim
        shift_k = (self.recency_keys(bucket) + self.rank_keys(rank)).to(keys.dtype).view(n, self.num_heads, head_dim)
        shift_v = (self.recency_values(bucket) + self.rank_values(rank)).to(values.dtype).view(n, self.num_heads, head_dim)
        return keys + shift_k, values + shift_v

    def keys_values(self, encoded: JaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The user side, computed once per history: keys and values ``[sum(N_g), H, d]`` (the match
        keys, when the model has them, stay the event model's ``[sum(N_g), V·E]``)."""
        n = len(encoded.values)
        k, v = self.key_value(self.norm(encoded.values)).view(n, 2, self.num_heads, self.head_dim).unbind(1)
        return k, v

    def folded_keys_values(self, keys: torch.Tensor, values: torch.Tensor, match_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys ``[N, H, d + V·E]`` with the match keys appended to every head, and values padded with
        zeros to the same width: the form of the match term that the Triton kernels take."""
        n = len(keys)
        folded = torch.cat([keys, match_keys.to(keys.dtype).unsqueeze(1).expand(n, self.num_heads, self.match_dim)], dim=-1)
        return folded, torch.nn.functional.pad(values, (0, self.match_dim))

    def queries(self, query_input: torch.Tensor) -> torch.Tensor:
        """``[B, M, H, d]``: each candidate's slot queries, ``slot_m + W_q [c; context]``."""
        batch = len(query_input)
        return (self.query(query_input).view(batch, self.num_slots, self.model_dim) + self.slots).view(batch, self.num_slots, self.num_heads, self.head_dim)

    def pool(self, keys: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, max_len: int, query_input: torch.Tensor, history_index: torch.Tensor,
             match_query: torch.Tensor | None = None, match_keys: torch.Tensor | None = None, *, match_form: MatchForm = "auto",
             plan: OneUserPlan | None = None, search: Search | None = None) -> torch.Tensor:
        """Pool precomputed keys/values ``[sum(N_g), H, d]`` for ``B`` candidates → ``[B, M, D]``.

        ``match_query [B, V·E]``: the candidate's unit-normalised embeddings in the match vocabularies;
        ``match_keys [sum(N_g), V·E]``: the events' (both or neither).
        ``match_form``: how the match term reaches the attention (same scores either way): ``"folded"``
        = ``V·E`` more dimensions of every query and key (what the Triton kernels take), ``"bias"`` = a
        score bias computed once per candidate and head (4-5x less work on the CPU), ``"auto"`` =
        "folded" where the op runs the Triton kernels, "bias" elsewhere. ``plan``: one user (``offsets
        [2]``) through the op's ``"one_user"`` backend, run as the plan says (serving). ``search``: each
        candidate reads only the positions :func:`~eventrec.model.candidate_search.search_mask` selects
        (the others get a score of ``-inf``; the match term then goes as a bias).
        """
        if self.match_vocabularies and (match_query is None) != (match_keys is None):
            raise ValueError("pool: match_query and match_keys go together")
        if plan is not None:
            return self.pool_one_user(keys, values, query_input, match_query, match_keys, plan)
        batch = len(history_index)
        head_dim = self.head_dim
        q = self.queries(query_input)
        # group candidates by history: sort (stable) by history, jagged queries with per-history offsets
        order = torch.sort(history_index, stable=True).indices
        counts = torch.bincount(history_index, minlength=len(offsets) - 1)
        candidate_offsets = torch.zeros(len(offsets), dtype=torch.int64, device=q.device)
        torch.cumsum(counts, 0, out=candidate_offsets[1:])
        bias = None
        if self.match_vocabularies and match_query is not None:
            form = match_form if match_form != "auto" else ("folded" if auto_backend(q) == "triton" and search is None else "bias")
            if search is not None and form != "bias":
                raise ValueError("candidate_search: the pooling takes the selection as a score bias (match_form 'bias')")
            if form not in ("folded", "bias"):
                raise ValueError(f"match_form: 'auto', 'folded' or 'bias', got {match_form!r}")
            if form == "folded":  # the kernels take the match term as more query / key dimensions
                per_vocabulary = match_query.view(batch, 1, self.match_vocabularies, -1) * self.match_weight.unsqueeze(-1)  # [B, H, V, E]
                q = torch.cat([q, per_vocabulary.reshape(batch, 1, self.num_heads, self.match_dim).expand(batch, self.num_slots, self.num_heads, self.match_dim)], dim=-1)
                keys, values = self.folded_keys_values(keys, values, match_keys)
            else:  # the same term as a score bias, once per candidate and head instead of per slot and head
                bias = self.match_bias(match_query.index_select(0, order), match_keys, offsets, candidate_offsets).to(q.dtype)
                if search is not None:
                    chosen = search_mask(search.event_ids, offsets, search.candidate_ids.index_select(0, order), candidate_offsets,
                                         search.config.recent, search.config.per_match, search.summary_token)
                    bias = bias.masked_fill(~chosen[:, : bias.shape[-1]].unsqueeze(1), float("-inf"))
        width = q.shape[-1]
        pooled_sorted = keyed_pooling_attention(
            q.index_select(0, order).reshape(batch * self.num_slots, self.num_heads, width), keys, values, offsets,
            q_offsets=candidate_offsets * self.num_slots, max_len=max_len, scale=head_dim**-0.5, bias=bias, bias_group=self.num_slots,
        )[..., :head_dim].reshape(batch, self.num_slots, self.model_dim)
        pooled = torch.empty_like(pooled_sorted)
        pooled[order] = pooled_sorted
        return self.out(pooled)

    def pool_one_user(self, keys: torch.Tensor, values: torch.Tensor, query_input: torch.Tensor, match_query: torch.Tensor | None,
                      match_keys: torch.Tensor | None, plan: OneUserPlan) -> torch.Tensor:
        """:meth:`pool` for one user's keys/values ``[N, H, d]`` (any float dtype; match keys ``[N, V·E]``
        or None) and ``B`` candidates, through the op's ``"one_user"`` backend → ``[B, M, D]``."""
        batch, head_dim = len(query_input), self.head_dim
        q = self.queries(query_input)
        match = None
        if self.match_vocabularies and match_query is not None and match_keys is not None:
            vocabularies, dim = self.match_vocabularies, self.match_dim // self.match_vocabularies
            match = FactoredMatch(match_query.reshape(batch, vocabularies, dim), match_keys.reshape(len(keys), vocabularies, dim),
                                  self.match_weight * head_dim**-0.5)
        offsets = torch.tensor([0, len(keys)], device=keys.device)
        pooled = keyed_pooling_attention(q.reshape(1, batch * self.num_slots, self.num_heads, head_dim), keys, values,
                                         offsets, scale=head_dim**-0.5, bias_group=self.num_slots, match=match, plan=plan, backend="one_user")
        return self.out(pooled.reshape(batch, self.num_slots, self.model_dim))

    def pool_searched(self, keys: torch.Tensor, values: torch.Tensor, match_keys: torch.Tensor, timestamps: torch.Tensor, request_time: torch.Tensor,
                      query_input: torch.Tensor, match_query: torch.Tensor, search: Search, index: UserSearchIndex) -> torch.Tensor:
        """:meth:`pool` with ``search`` for one user's keys/values ``[N, H, d]`` and match keys ``[N, V·E]`` (times ``[N]``, a request
        at ``request_time [1]``) and ``B`` candidates, reading only the searched positions (``index``: the
        user's :class:`~eventrec.model.candidate_search.UserSearchIndex`): O(recent + V·per_match) per
        candidate, not O(N) → ``[B, M, D]``."""
        config = search.config
        groups = index.groups_for(search.candidate_ids, config.recent, config.per_match, search.summary_token)
        batch, head_dim, vocabularies = len(query_input), self.head_dim, self.match_vocabularies
        q = self.queries(query_input)  # [B, M, H, d]
        s, in_groups = len(groups.shared), int(groups.group_valid.sum())
        # many candidates pick the same events (those of a shared category): each distinct position is
        # read, and its recency added, once ([U, ...]), then read by the shared keys, the groups' lists
        # and the mixed candidates' own positions
        distinct, spread = torch.unique(torch.cat([groups.shared, groups.group_positions[groups.group_valid], groups.extra]), return_inverse=True)
        k = keys.index_select(0, distinct).to(q.dtype)  # [U, H, d]
        v = values.index_select(0, distinct).to(q.dtype)
        match_keys = match_keys.index_select(0, distinct).to(q.dtype).view(len(distinct), vocabularies, -1)  # [U, V, E]
        if self.recency_buckets:
            summary = (distinct == 0) if search.summary_token else torch.zeros(len(distinct), dtype=torch.bool, device=distinct.device)
            k, v = self.with_recency(k, v, timestamps.index_select(0, distinct), request_time.expand(len(distinct)), summary, len(keys) - 1 - distinct)
        shared_at = spread[:s]
        group_at = torch.zeros(groups.group_valid.shape, dtype=torch.int64, device=spread.device)
        group_at[groups.group_valid] = spread[s : s + in_groups]
        extra_at = spread[s + in_groups :]
        weight = (self.match_weight * head_dim**-0.5).to(q.dtype)  # [H, V]
        queries = match_query.to(q.dtype).view(batch, vocabularies, -1)  # [B, V, E]
        shared_k, shared_v, shared_match = k.index_select(0, shared_at), v.index_select(0, shared_at), match_keys.index_select(0, shared_at)
        rows = lambda t, part: t if len(part) == batch else t.index_select(0, part)  # noqa: E731  (a part's candidates)
        shared_bias = lambda part_queries: torch.einsum("bvs,hv->bhs", torch.einsum("bve,sve->bvs", part_queries, shared_match), weight)  # noqa: E731
        parts = []
        if len(groups.simple):  # candidates in groups: each group's keys read once (ops.grouped_pooling)
            part, shape = groups.simple, groups.group_valid.shape
            listed = lambda t: t.index_select(0, group_at.view(-1)).view(*shape, *t.shape[1:])  # noqa: E731  ([G, P, ...])
            part_queries = rows(queries, part)
            parts.append((part, grouped_pooling_attention(rows(q, part), shared_k, shared_v, listed(k), listed(v), groups.group_valid,
                                                          groups.candidate_group, shared_bias=shared_bias(part_queries),
                                                          match=GroupMatch(part_queries, listed(match_keys), weight), scale=head_dim**-0.5)))
        if len(groups.mixed):  # candidates matching in two or more vocabularies: their own positions (ops.selected_pooling)
            part, candidate = groups.mixed, groups.extra_candidate
            part_queries = rows(queries, part)
            extra_bias = torch.einsum("tve,tve->tv", part_queries.index_select(0, candidate), match_keys.index_select(0, extra_at)) @ weight.T
            parts.append((part, selected_pooling_attention(rows(q, part), shared_k, shared_v, k.index_select(0, extra_at), v.index_select(0, extra_at),
                                                           candidate, shared_bias=shared_bias(part_queries), extra_bias=extra_bias, scale=head_dim**-0.5)))
        if len(parts) == 1 and len(parts[0][0]) == batch:
            pooled = parts[0][1]
        else:
            pooled = q.new_zeros(q.shape)
            for part, out in parts:
                pooled[part] = out
        return self.out(pooled.reshape(batch, self.num_slots, self.model_dim))

    def pool_searched_before(self, keys: torch.Tensor, values: torch.Tensor, match_keys: torch.Tensor, timestamps: torch.Tensor,
                             request_times: torch.Tensor, cuts: torch.Tensor, query_input: torch.Tensor, match_query: torch.Tensor, search: Search,
                             index: UserSearchIndex) -> torch.Tensor:
        """:meth:`pool_searched` for ``B`` candidates that each read a prefix of one user's history:
        candidate ``c`` the first ``cuts[c]`` positions (summary token included), at its own
        ``request_times[c]``; every searched position is the candidate's own (its recency and rank are
        those of its prefix) → ``[B, M, D]``, equal to :meth:`pool` with ``search`` over each prefix."""
        config = search.config
        positions, candidate = index.positions_before(search.candidate_ids, cuts, config.recent, config.per_match, search.summary_token)
        batch, head_dim = len(query_input), self.head_dim
        q = self.queries(query_input)  # [B, M, H, d]
        k, v = keys.index_select(0, positions).to(q.dtype), values.index_select(0, positions).to(q.dtype)  # [T, H, d]
        if self.recency_buckets:
            summary = (positions == 0) if search.summary_token else torch.zeros(len(positions), dtype=torch.bool, device=positions.device)
            k, v = self.with_recency(k, v, timestamps.index_select(0, positions), request_times.index_select(0, candidate), summary,
                                     cuts.index_select(0, candidate) - 1 - positions)
        vocabularies = self.match_vocabularies
        width = match_keys.shape[1] // vocabularies
        picked_match = match_keys.index_select(0, positions).to(q.dtype).view(len(positions), vocabularies, width)  # [T, V, E]
        queries = match_query.to(q.dtype).view(batch, vocabularies, width).index_select(0, candidate)  # [T, V, E]
        bias = torch.einsum("tve,tve->tv", queries, picked_match) @ (self.match_weight * head_dim**-0.5).to(q.dtype).T  # [T, H]
        none = k.new_zeros(0, self.num_heads, head_dim)
        pooled = selected_pooling_attention(q, none, none, k, v, candidate, extra_bias=bias, scale=head_dim**-0.5)
        return self.out(pooled.reshape(batch, self.num_slots, self.model_dim))

    def match_bias(self, match_query: torch.Tensor, match_keys: torch.Tensor, offsets: torch.Tensor, candidate_offsets: torch.Tensor) -> torch.Tensor:
        """The target-attention term of each (candidate, head, event) as a score bias ``[B, H, L]``.

        ``match_query [B, V·E]`` (candidates sorted by history, ``candidate_offsets [G+1]``),
        ``match_keys [sum(N_g), V·E]`` (the events' match part of the keys, the same for every head).
        ``bias[c, h, j] = head_dim^-1/2 · sum_v w[h, v] · <match_query[c, v], match_keys[j-th event, v]>``:
        exactly the score that the match dimensions of the queries and keys add (see :meth:`pool`),
        computed once per candidate, not once per slot and head. L is the longest history; the
        entries past a history's end are 0 (the attention masks them)."""
        histories = len(offsets) - 1
        vocabularies = self.match_vocabularies
        if len(match_keys) == 0:  # no history has an event: nothing to match (the pooling gives zeros)
            return match_query.new_zeros(len(match_query), self.num_heads, 1)
        every = torch.arange(histories, device=offsets.device)
        longest = max(int((offsets[1:] - offsets[:-1]).max()), 1) if histories else 1
        most_candidates = max(int((candidate_offsets[1:] - candidate_offsets[:-1]).max()), 1) if histories else 1
        key_index, key_valid = padded_index(offsets, every, longest)  # [G, L]
        query_index, query_valid = padded_index(candidate_offsets, every, most_candidates)  # [G, C]
        keys = (gather_rows(match_keys, key_index) * key_valid.unsqueeze(-1)).view(histories, longest, vocabularies, -1)
        queries = gather_rows(match_query, query_index).view(histories, most_candidates, vocabularies, -1)
        similarity = torch.einsum("gcve,glve->gvcl", queries, keys)  # [G, V, C, L]
        bias = torch.einsum("gvcl,hv->gchl", similarity, self.match_weight * self.head_dim**-0.5)  # [G, C, H, L]
        return select_rows(bias, query_valid)

    def forward(self, encoded: JaggedTensor, query_input: torch.Tensor, history_index: torch.Tensor,
                match_keys: torch.Tensor | None = None, match_query: torch.Tensor | None = None) -> torch.Tensor:
        keys, values = self.keys_values(encoded)
        return self.pool(keys, values, encoded.offsets, encoded.max_len, query_input, history_index, match_query,
                         match_keys if self.match_vocabularies and match_query is not None else None)
