"""The candidate side for one user, restructured for thousands of candidates (same math, fewer FLOPs).

:meth:`KeyedAttentionPooling.pool` builds per-slot queries of width ``d + V·E`` (the content part
plus the match part, repeated for every slot and head) against keys and values of the same width
(the values' match part is zeros). For one user and many candidates that wastes most of the work:

* the match logit ``sum_v w[h, v] · cos(E_v[c], E_v[e])`` does not depend on the slot, and its cosine
  part not on the head either: computed once per (candidate, event) as ``[V, B, N]``, mixed per head
  with ``w`` (``[H, V]``) and broadcast over the M slots;
* the values' zero match dims are dropped: ``softmax(logits) @ values`` runs over the ``d`` content
  dims only;
* the score scale is folded into the keys and into ``w`` once per request.

Logits are ``scale · (q_content · k_content + match)`` exactly as in the model; only the summation
order differs (float rounding, ~1e-7). Shapes: ``H`` heads, ``d`` head dim, ``M`` slots, ``N``
positions of the user (events + summary token), ``B`` candidates of a chunk, ``V`` match
vocabularies of ``E`` dims each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eventrec.model.heads import dot_interaction
from eventrec.model.keyed_pooling import KeyedAttentionPooling


@dataclass
class PreparedUser:
    """One user's pooling inputs in the layout of :func:`pool_candidates`.

    ``keys_t [H, d, N]`` (content keys times the score scale, transposed), ``values [H, N, d]``,
    ``match_keys_t [V, E, N]`` (the events' unit match embeddings; None without match attention),
    ``match_weight [H, V]`` (times the score scale)."""

    keys_t: torch.Tensor
    values: torch.Tensor
    match_keys_t: torch.Tensor | None
    match_weight: torch.Tensor | None

    @property
    def positions(self) -> int:
        return self.values.shape[1]


def prepare_user(pooling: KeyedAttentionPooling, keys: torch.Tensor, values: torch.Tensor) -> PreparedUser:
    """From the cached keyed-pooling keys/values ``[N, H, d (+ V·E)]`` of one user."""
    d = pooling.head_dim
    scale = d**-0.5
    keys_t = (keys[..., :d] * scale).permute(1, 2, 0).contiguous()  # [H, d, N]
    content_values = values[..., :d].permute(1, 0, 2).contiguous()  # [H, N, d]
    match_keys_t = match_weight = None
    if pooling.match_vocabularies and keys.shape[-1] > d:
        v = pooling.match_vocabularies
        # the match part of the keys is the same for every head: take head 0
        match_keys_t = keys[:, 0, d:].reshape(len(keys), v, pooling.match_dim // v).permute(1, 2, 0).contiguous()  # [V, E, N]
        match_weight = (pooling.match_weight * scale).contiguous()  # [H, V]
    return PreparedUser(keys_t, content_values, match_keys_t, match_weight)


class Workspace:
    """Reused buffers for the attention blocks (logits and weights ``[H, chunk·M, N]``): a fresh
    multi-MiB tensor per block costs page faults (the allocator returns large blocks to the OS).
    Not thread-safe: one per caller at a time (the service holds its lock while scoring)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        size = 1
        for s in shape:
            size *= s
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(size)
        return buffer[:size].view(shape)


BLOCK_BYTES = 4 << 20  # logits of one attention block: about this CPU's L2 plus a share of L3


def block_candidates(pooling: KeyedAttentionPooling, positions: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Candidates per attention block so that its logits ``[H, chunk·M, N]`` (fp32) take ``block_bytes``:
    64 at N=1024 with the default config, 16 at N=4096."""
    per_candidate = pooling.num_heads * pooling.num_slots * max(1, positions) * 4
    return max(8, block_bytes // per_candidate)


def pool_candidates(pooling: KeyedAttentionPooling, user: PreparedUser, candidate: torch.Tensor, match_query: torch.Tensor | None,
                    chunk: int | None = None, workspace: Workspace | None = None) -> torch.Tensor:
    """``pooling.pool`` for one user: ``candidate [B, Q]``, ``match_query [B, V·E]`` → ``[B, M, D]``.

    The query projection runs over all B candidates at once; the attention (logits ``[H, chunk·M, N]``,
    softmax, weighted values) runs ``chunk`` candidates at a time so that its logits stay in cache (default: :func:`block_candidates`)."""
    b, m, h, d = len(candidate), pooling.num_slots, pooling.num_heads, pooling.head_dim
    n = user.positions
    if n == 0:  # an empty history pools to zeros (then the output projection)
        return pooling.out(candidate.new_zeros(b, m, pooling.model_dim))
    q = (pooling.query(candidate).view(b, m, pooling.model_dim) + pooling.slots).view(b, m, h, d)
    q = q.permute(2, 0, 1, 3).reshape(h, b * m, d)  # [H, B·M, d]
    use_match = user.match_keys_t is not None and match_query is not None
    if use_match:
        vocabularies = user.match_keys_t.shape[0]
        match_query = match_query.view(b, vocabularies, -1).transpose(0, 1)  # [V, B, E]
    workspace = workspace if workspace is not None else Workspace()
    chunk = chunk or block_candidates(pooling, n)
    pooled = q.new_empty(h, b * m, d)
    for start in range(0, b, chunk):
        c = min(chunk, b - start)
        rows = slice(start * m, (start + c) * m)
        logits = workspace.get("logits", (h, c * m, n), q)
        torch.bmm(q[:, rows], user.keys_t, out=logits)  # [H, c·M, N]
        if use_match:
            cosine = workspace.get("cosine", (vocabularies, c, n), q)
            torch.bmm(match_query[:, start : start + c], user.match_keys_t, out=cosine)  # [V, c, N]
            match = workspace.get("match", (h, c * n), q)
            torch.mm(user.match_weight, cosine.view(vocabularies, c * n), out=match)  # [H, c·N]
            logits.view(h, c, m, n).add_(match.view(h, c, 1, n))
        weights = workspace.get("weights", (h, c * m, n), q)
        torch.ops.aten._softmax.out(logits, -1, False, out=weights)
        torch.bmm(weights, user.values, out=pooled[:, rows])  # [H, c·M, d]
    return pooling.out(pooled.view(h, b, m, d).permute(1, 2, 0, 3).reshape(b, m, h * d))


def score_candidates(model, user: PreparedUser, rows: torch.Tensor, context: torch.Tensor | None, chunk: int | None = None,
                     workspace: Workspace | None = None) -> torch.Tensor:
    """``SequenceRanker.candidate_side`` for one user over cached item rows ``[B, Q_item (+ V·E)]``
    (item embedding, then the match queries) and the request's context ``[1, Q_ctx]`` → logits ``[B, T]``."""
    item_dim = model.item_embedder.out_dim
    b = len(rows)
    parts = [rows[:, :item_dim]]
    if context is not None:
        parts.append(context.expand(b, -1))
    candidate = model.candidate_norm(torch.cat(parts, dim=-1))
    match_query = rows[:, item_dim:] if model.match_vocabularies else None
    pooled = pool_candidates(model.pooling, user, candidate, match_query, chunk, workspace)
    vectors = torch.cat([pooled, model.candidate_projection(candidate).unsqueeze(1)], dim=1)  # [B, M+1, D]
    x = torch.cat([pooled.flatten(1), candidate, dot_interaction(vectors)], dim=-1)
    return model.heads(model.cross(x))
