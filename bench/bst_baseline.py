"""A BST-style naive ranker for the serving benchmark: the candidate is one more token inside the
self-attention (Behavior Sequence Transformer, Chen et al. 2019), so the user's history is encoded
again for every candidate.

Built from the served model's own parts, same width: the event model embeds the history once per
batch of candidates; each sequence of the batch is that history (``N`` positions, summary token
included) plus the candidate as a last token (``candidate_projection`` of the normalised candidate
input, at the request time); the model's encoder runs over all ``B·(N+1)`` positions; the model's keyed
pooling, interaction and heads score each candidate over its own encoded sequence. The model was not
trained this way, so the scores mean nothing: this measures what the architecture costs. With the
default (causal) encoder the history's positions would not need the candidate token; BST's encoder is
bidirectional, so it must re-encode, and so does this baseline.

Shapes: history ``[N, D]``, candidate rows ``[B, Q_item (+ V·E)]`` → logits ``[B, T]``.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import torch

from eventrec.data.jagged import JaggedTensor
from eventrec.model.sequence_ranker import UserSide
from eventrec.serving import RankingService
from eventrec.serving.user_states import request_window, window_batch

POSITIONS_PER_PASS = 4096  # B·(N+1) per encoder pass: 63 sequences at N=64, 15 at N=256, 3 at N=1024, 1 at N=4096


def candidates_per_batch(positions: int, most: int) -> int:
    """Sequences of ``positions`` (+1 candidate token) per encoder pass: about ``POSITIONS_PER_PASS``
    positions, at least 1, at most ``most``. Measured per candidate (1 thread): N=64, batches of 1 / 8 /
    32: 3.3 / 0.9 / 0.7 ms; N=256, 1 to 32: 4.6-6.8 ms (flat); N=1024, 1 / 2 / 4 / 16: 81 / 78 / 90 / 94 ms."""
    return max(1, min(most, POSITIONS_PER_PASS // (positions + 1)))


def with_candidate_token(history: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Each of the ``B`` sequences: ``history [N, F]`` then its own ``token [B, F]`` → ``[B·(N+1), F]``."""
    b, n = len(token), len(history)
    return torch.cat([history.expand(b, n, -1), token.unsqueeze(1)], dim=1).reshape(b * (n + 1), -1)


@torch.no_grad()
def bst_logits(service: RankingService, user_id, items: tuple[torch.Tensor, torch.Tensor | None], context: torch.Tensor | None,
               seconds: int) -> torch.Tensor:
    """Logits ``[B, T]`` of ``B`` candidates (``items``: their rows ``[B, Q_item (+ V·E)]`` and match ids
    ``[B, V]`` or None, :meth:`RankingService.embed_items`), each with its own encoder pass over the
    user's history and itself."""
    from eventrec.model.candidate_search import NO_ID

    rows, ids = items
    model = service.model
    events = service.user_events(user_id)
    batch = window_batch(events, request_window(events, seconds), seconds, len(service.task_names), service.task_names)
    history, times, match, event_ids = model.event_model(batch)
    b, n = len(rows), len(history.values)
    candidate = model.candidate_vectors(rows, context)  # [B, Q]
    x = with_candidate_token(history.values, model.candidate_projection(candidate))  # [B·(N+1), D]
    t = with_candidate_token(times.unsqueeze(1), torch.full((b, 1), seconds, dtype=times.dtype)).squeeze(1)
    offsets = torch.arange(b + 1) * (n + 1)
    encoded = model.encoder(JaggedTensor(x, offsets, n + 1), t)
    match_keys = None if match is None else with_candidate_token(match, match.new_zeros(b, match.shape[1]))  # the token matches nothing
    keys, values = model.pooling.keys_values(encoded)
    match_ids = None if event_ids is None else with_candidate_token(event_ids, event_ids.new_full((b, event_ids.shape[1]), NO_ID))
    side = UserSide(offsets, n + 1, encoded.values, keys, values, timestamps=t, request_times=torch.full((b,), seconds, dtype=t.dtype),
                    match_ids=match_ids, match_keys=match_keys)
    return model.score(side, rows, context, torch.arange(b), candidate_ids=ids)


def time_bst(service: RankingService, user_id, candidates: pl.DataFrame, context: dict | None, timestamp: int, batch: int) -> tuple[float, int]:
    """Seconds per candidate of the BST-style ranker over the sampled ``candidates`` (each batch embeds
    its candidates and the history again, as a request without any cache would), after one untimed
    warm-up batch; and the batch size used."""
    seconds = service.request_seconds(timestamp)
    window = request_window(service.user_events(user_id), seconds)
    positions = sum(end - start for start, end in window) + int(service.model.config.summary_token)
    batch = min(candidates_per_batch(positions, batch), candidates.height)
    bst_logits(service, user_id, service.embed_items(candidates[:batch]), service.context_tensor(context), seconds)
    started = time.perf_counter()
    for start in range(0, candidates.height, batch):
        items = service.embed_items(candidates[start : start + batch])
        logits = bst_logits(service, user_id, items, service.context_tensor(context), seconds)
        assert np.isfinite(logits.numpy()).all()
    return (time.perf_counter() - started) / candidates.height, batch
