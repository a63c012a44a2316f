"""A count-preserving path beside the keyed pooling: how many of the history's events match the candidate.

Softmax attention pooling returns a weighted *average* of the events: whether the candidate occurs
once or twenty times in the history, the pooled vector can be the same. DIN dropped the softmax
normalisation for this reason ("to keep the intensity of interest"). Here the pooling keeps its
softmax and a separate, cheap path counts: for each match block v (a vocabulary the candidate
shares with the events, through the same unit-normalised match embeddings that the target attention
uses; with ``identity_match`` also each vocabulary's identity codes),

    count_v(c) = sum_{e in history} sigmoid(a_v · (cos_v(c, e) - b_v)),   feature = log1p(count_v)

with ``a_v`` (sharpness) and ``b_v`` (threshold) learned; initialised so that an exact match counts
~1 and an unrelated event ~0. The features ``[B, V]`` go to the heads beside the pooled vectors.

Shapes: ``match_query [B, V·E]`` (candidates), ``match_keys [sum(N_g), V·E]`` (events of G
histories, ``offsets [G+1]``), ``history_index [B]`` → ``[B, V]``.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.ops.jagged_helpers import gather_rows, padded_index, select_rows

SHARPNESS = 20.0  # sigmoid(20 · (1 - 0.7)) ≈ 0.998 for an exact match; ≈ 1e-4 at a random cosine of 0.25
THRESHOLD = 0.7


class MatchCount(nn.Module):
    def __init__(self, blocks: int):
        super().__init__()
        self.blocks = blocks
        self.sharpness = nn.Parameter(torch.full((blocks,), SHARPNESS))
        self.threshold = nn.Parameter(torch.full((blocks,), THRESHOLD))

    def forward(self, match_query: torch.Tensor, match_keys: torch.Tensor, offsets: torch.Tensor, history_index: torch.Tensor) -> torch.Tensor:
        """``log1p`` of the soft counts ``[B, V]`` (see the module); an empty history counts 0.

        Candidates are grouped by history (as :meth:`KeyedAttentionPooling.match_bias` does), so
        that one user's keys are never copied per candidate: the work is ``sum_g C_g · N_g · V · E``."""
        batch, blocks = len(match_query), self.blocks
        histories = len(offsets) - 1
        if batch == 0 or len(match_keys) == 0:
            return match_query.new_zeros(batch, blocks)
        order = torch.sort(history_index, stable=True).indices
        counts = torch.bincount(history_index, minlength=histories)
        candidate_offsets = torch.zeros(histories + 1, dtype=torch.int64, device=offsets.device)
        torch.cumsum(counts, 0, out=candidate_offsets[1:])
        every = torch.arange(histories, device=offsets.device)
        longest = max(int((offsets[1:] - offsets[:-1]).max()), 1)
        most = max(int(counts.max()), 1)
        key_index, key_valid = padded_index(offsets, every, longest)  # [G, L]
        query_index, query_valid = padded_index(candidate_offsets, every, most)  # [G, C]
        keys = gather_rows(match_keys, key_index).view(histories, longest, blocks, -1)
        queries = gather_rows(match_query.index_select(0, order), query_index).view(histories, most, blocks, -1)
        cosine = torch.einsum("gcve,glve->gvcl", queries, keys)  # [G, V, C, L]
        gate = torch.sigmoid(self.sharpness.view(1, -1, 1, 1) * (cosine - self.threshold.view(1, -1, 1, 1)))
        soft_count = (gate * key_valid.view(histories, 1, 1, longest).to(gate.dtype)).sum(-1)  # [G, V, C]
        per_candidate = select_rows(soft_count.transpose(1, 2), query_valid)  # [B, V] in history order
        out = torch.empty_like(per_candidate)
        out[order] = per_candidate
        return torch.log1p(out)

    def reference(self, match_query: torch.Tensor, match_keys: torch.Tensor, offsets: torch.Tensor, history_index: torch.Tensor) -> torch.Tensor:
        """The same features one candidate at a time (a readable reference for the tests)."""
        rows = []
        for b in range(len(match_query)):
            g = int(history_index[b])
            keys = match_keys[int(offsets[g]) : int(offsets[g + 1])].view(-1, self.blocks, match_query.shape[1] // self.blocks)
            query = match_query[b].view(self.blocks, -1)
            cosine = (keys * query).sum(-1)  # [N, V]
            rows.append(torch.log1p(torch.sigmoid(self.sharpness * (cosine - self.threshold)).sum(0)))
        return torch.stack(rows) if rows else match_query.new_zeros(0, self.blocks)
