"""Ad-keyed multi-head attention pooling: M query slots per candidate attend over the user's events.

For each impression (user history g, candidate c) the queries are ``slot_m + W_q [c; context]``
(``[M, H, d]``); keys and values are projections of the history's encoded events, computed once per
history and shared by all of its candidates. Cost O(M·N) per candidate, not O(N²). Candidates of
the same history are grouped so that one call of :func:`eventrec.ops.keyed_pooling_attention` (jagged
queries ``[sum_g C_g·M, H, d]`` over jagged keys ``[sum(N_g), H, d]``) serves them all. An empty
history pools to zeros.

Shapes: encoded ``[sum(N_g), D]`` over G histories; ``query_input [B, Q]``; ``history_index [B]``
→ pooled ``[B, M, D]``.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.jagged import JaggedTensor
from eventrec.ops import keyed_pooling_attention
from eventrec.ops.jagged import gather_rows


class KeyedAttentionPooling(nn.Module):
    """Keyed pooling; with ``match_dim > 0`` also *target attention*: the score of event e for
    candidate c gains ``sum_v w[h, v] * cos(E_v[c], E_v[e])`` over the vocabularies v the candidate
    shares with the events (learned embeddings of the same tables, learned weights per head), so
    that from the first step an event matching the candidate draws attention."""

    def __init__(self, model_dim: int, query_input_dim: int, num_slots: int, num_heads: int, match_vocabularies: int = 0, match_dim: int = 0):
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

    def keys_values(self, encoded: JaggedTensor, match_keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The user side, computed once per history: keys and values ``[sum(N_g), H, d (+ V·E)]``."""
        n = len(encoded.values)
        k, v = self.key_value(self.norm(encoded.values)).view(n, 2, self.num_heads, self.head_dim).unbind(1)
        if self.match_vocabularies and match_keys is not None:
            k = torch.cat([k, match_keys.unsqueeze(1).expand(n, self.num_heads, self.match_dim)], dim=-1)
            v = torch.cat([v, v.new_zeros(n, self.num_heads, self.match_dim)], dim=-1)
        return k, v

    def pool(self, keys: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, max_len: int, query_input: torch.Tensor, history_index: torch.Tensor,
             match_query: torch.Tensor | None = None) -> torch.Tensor:
        """Pool precomputed keys/values for ``B`` candidates → ``[B, M, D]``.

        ``match_query [B, V·E]``: the candidate's unit-normalised embeddings in the match vocabularies.
        """
        batch = len(history_index)
        head_dim = self.head_dim
        q = (self.query(query_input).view(batch, self.num_slots, self.model_dim) + self.slots).view(batch, self.num_slots, self.num_heads, head_dim)
        if self.match_vocabularies and match_query is not None:
            per_vocabulary = match_query.view(batch, 1, self.match_vocabularies, -1) * self.match_weight.unsqueeze(-1)  # [B, H, V, E]
            q = torch.cat([q, per_vocabulary.reshape(batch, 1, self.num_heads, self.match_dim).expand(batch, self.num_slots, self.num_heads, self.match_dim)], dim=-1)
        # group candidates by history: sort (stable) by history, jagged queries with per-history offsets
        order = torch.sort(history_index, stable=True).indices
        counts = torch.bincount(history_index, minlength=len(offsets) - 1) * self.num_slots
        q_offsets = torch.zeros(len(offsets), dtype=torch.int64, device=q.device)
        torch.cumsum(counts, 0, out=q_offsets[1:])
        width = q.shape[-1]
        pooled_sorted = keyed_pooling_attention(
            q.index_select(0, order).reshape(batch * self.num_slots, self.num_heads, width), keys, values, offsets,
            q_offsets=q_offsets, max_len=max_len, scale=head_dim**-0.5,
        )[..., :head_dim].reshape(batch, self.num_slots, self.model_dim)
        pooled = torch.empty_like(pooled_sorted)
        pooled[order] = pooled_sorted
        return self.out(pooled)

    def forward(self, encoded: JaggedTensor, query_input: torch.Tensor, history_index: torch.Tensor,
                match_keys: torch.Tensor | None = None, match_query: torch.Tensor | None = None) -> torch.Tensor:
        keys, values = self.keys_values(encoded, match_keys)
        return self.pool(keys, values, encoded.offsets, encoded.max_len, query_input, history_index, match_query)


class MeanPooling(nn.Module):
    """Ablation: the mean of the history's encoded events, the same for every candidate ``[B, 1, D]``."""

    def forward(self, encoded: JaggedTensor, query_input: torch.Tensor, history_index: torch.Tensor) -> torch.Tensor:
        lengths = encoded.lengths()
        sums = torch.zeros(len(lengths), encoded.values.shape[1], device=encoded.values.device, dtype=encoded.values.dtype)
        sums.index_add_(0, encoded.row_ids(), encoded.values)
        means = sums / lengths.clamp(min=1).unsqueeze(1).to(sums.dtype)
        return gather_rows(means, history_index).unsqueeze(1)
