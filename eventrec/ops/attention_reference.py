"""Readable PyTorch references for the jagged attention ops: one sequence at a time, any float dtype.

These define what the fast paths (``attention_torch``, ``attention_triton``) must compute. They are
slow (a Python loop over the batch) and exist for tests and for reading; run them in float64 to check
a kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from eventrec.ops.time_buckets import time_gap_bucket


def jagged_self_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    causal: bool = False,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Softmax attention of each sequence's events over the same sequence's events.

    For sequence ``b`` with rows ``offsets[b]:offsets[b+1]`` and head ``h``::

        s[i, j] = scale * <q[i, h], k[j, h]> + time_bias[h, time_gap_bucket(t[i] - t[j])]
        out[i, h] = sum_j softmax_j(s[i, :])[j] * v[j, h]      (j <= i when causal)

    Args:
        q, k, v: ``[sum(N_i), H, d]``.
        offsets: ``[B+1]`` int64, from 0 to ``sum(N_i)``.
        causal: if true, event ``i`` attends only to events ``j <= i`` of its sequence.
        time_bias: optional ``[H, num_buckets]`` additive bias table.
        timestamps: int64 ``[sum(N_i)]`` event times in seconds; required with ``time_bias``.
        scale: score scale, default ``1 / sqrt(d)``.

    Returns:
        ``[sum(N_i), H, d]`` in q's dtype.
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if time_bias is not None and timestamps is None:
        raise ValueError("time_bias needs timestamps")
    bounds = offsets.tolist()
    pieces = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        n = end - start
        if n == 0:
            continue
        qb, kb, vb = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [H, N, d]
        scores = torch.matmul(qb, kb.transpose(-1, -2)) * scale  # [H, N, N]
        if time_bias is not None:
            t = timestamps[start:end]
            bucket = time_gap_bucket(t[:, None] - t[None, :], time_bias.shape[1])  # [N, N]
            scores = scores + time_bias.to(scores.dtype)[:, bucket]
        if causal:
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        pieces.append(torch.matmul(probs, vb).transpose(0, 1))  # [N, H, d]
    if not pieces:  # every sequence empty: nothing to attend, keep the graph connected
        return q.new_zeros(q.shape) + 0.0 * (q.sum() + k.sum() + v.sum())
    return torch.cat(pieces, dim=0)


def keyed_pooling_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    q_offsets: Tensor | None = None,
    scale: float | None = None,
    bias: Tensor | None = None,
    bias_group: int = 1,
) -> Tensor:
    """Each user's query slots attend over that user's events (no mask inside a user).

    Args:
        q: dense ``[B, Q, H, d]`` (Q = candidates x slots per user), or jagged ``[sum(Q_b), H, d]``
            with ``q_offsets``.
        k, v: jagged ``[sum(N_b), H, d]``.
        offsets: ``[B+1]`` int64 offsets of k and v.
        q_offsets: ``[B+1]`` int64 offsets of a jagged q; None for dense q.
        scale: score scale, default ``1 / sqrt(d)``.
        bias: optional ``[sum(Q_b) / bias_group, H, >= max N_b]`` (jagged q only): the score of query
            row ``i`` (head ``h``) for its user's ``j``-th event is
            ``scale * <q[i, h], k[j, h]> + bias[i // bias_group, h, j]``.
        bias_group: consecutive query rows sharing one bias row (e.g. the M slots of a candidate).

    Returns:
        Same shape as q. Users with no events get zeros.
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    kv_bounds = offsets.tolist()
    num_users = len(kv_bounds) - 1
    if q_offsets is None:
        if q.dim() != 4 or q.shape[0] != num_users:
            raise ValueError("dense q must be [B, Q, H, d] with B = len(offsets) - 1")
        q_slices = [q[b] for b in range(num_users)]
        if bias is not None:
            raise ValueError("bias: needs jagged q (q_offsets)")
    else:
        qb_bounds = q_offsets.tolist()
        q_slices = [q[s:e] for s, e in zip(qb_bounds[:-1], qb_bounds[1:])]
    pieces = []
    for b in range(num_users):
        qb = q_slices[b].transpose(0, 1)  # [H, Q_b, d]
        start, end = kv_bounds[b], kv_bounds[b + 1]
        if end == start:
            pieces.append(torch.zeros_like(q_slices[b]) + 0.0 * qb.sum())
            continue
        kb, vb = k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)
        scores = torch.matmul(qb, kb.transpose(-1, -2)) * scale  # [H, Q_b, N_b]
        if bias is not None:
            rows = torch.arange(qb_bounds[b], qb_bounds[b + 1], device=q.device) // bias_group
            scores = scores + bias[rows, :, : end - start].transpose(0, 1)
        probs = torch.softmax(scores, dim=-1)
        pieces.append(torch.matmul(probs, vb).transpose(0, 1))  # [Q_b, H, d]
    if q_offsets is None:
        return torch.stack(pieces, dim=0) if pieces else q.new_zeros(q.shape)
    return torch.cat(pieces, dim=0) if pieces else q.new_zeros(q.shape)
