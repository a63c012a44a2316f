"""Jagged attention in plain PyTorch for machines without the Triton kernels (the CPU path).

Sequences are grouped by length (longest first; a new group starts when a sequence is shorter than
``1 / ratio`` of the group's longest, except below ``min_len``), each group is gathered into a padded
``[G, H, L, d]`` block and run through ``scaled_dot_product_attention`` with a key mask (no mask when
the group needs none), and the rows are scattered back. ``ratio = inf`` is plain padded attention;
``ratio = 1`` (with ``min_len = 0``) is close to one call per distinct length. See
``bench/attention_cpu.py`` for the measurements behind the defaults.

The lengths are read on the host (one sync); on the CPU that costs nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from eventrec.ops.jagged_helpers import gather_rows, padded_index, select_rows
from eventrec.ops.time_buckets import time_gap_bucket

DEFAULT_RATIO = 1.5
DEFAULT_MIN_LEN = 32


def length_groups(lengths: list[int], ratio: float = DEFAULT_RATIO, min_len: int = DEFAULT_MIN_LEN
                  ) -> list[list[int]]:
    """Group non-empty sequences (indices into ``lengths``) by length, longest first."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    group_max = 0
    for i in order:
        n = lengths[i]
        if current and n * ratio < group_max and group_max > min_len:
            groups.append(current)
            current = []
        if not current:
            group_max = n
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``[T, H, d]`` gathered by ``[G, L]`` row indices -> ``[G, H, L, d]``."""
    return gather_rows(x, index).permute(0, 2, 1, 3)


def jagged_self_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    causal: bool = False,
    time_bias: Tensor | None = None,
    timestamps: Tensor | None = None,
    scale: float | None = None,
    ratio: float = DEFAULT_RATIO,
    min_len: int = DEFAULT_MIN_LEN,
) -> Tensor:
    """Length-grouped padded SDPA; same contract as
    :func:`eventrec.ops.attention_reference.jagged_self_attention_reference`.

    Args:
        q, k, v: ``[sum(N_i), H, d]``; offsets: ``[B+1]`` int64.
        causal, time_bias ``[H, num_buckets]``, timestamps int64 ``[sum(N_i)]``, scale: as the reference.
        ratio, min_len: grouping knobs (see module docstring).

    Returns:
        ``[sum(N_i), H, d]``.
    """
    total, _, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    groups = length_groups(lengths, ratio, min_len)
    if not groups:
        return q.new_zeros(q.shape) + 0.0 * (q.sum() + k.sum() + v.sum())
    rows, outs = [], []
    for group in groups:
        seq_ids = torch.tensor(group, device=q.device, dtype=torch.int64)
        pad_len = lengths[group[0]]
        index, valid = padded_index(offsets, seq_ids, pad_len)  # [G, L]
        qg, kg, vg = _gather(q, index), _gather(k, index), _gather(v, index)
        uniform = lengths[group[-1]] == pad_len
        mask: Tensor | None = None
        is_causal = False
        if time_bias is not None:
            t = timestamps[index]  # [G, L]
            bucket = time_gap_bucket(t[:, :, None] - t[:, None, :], time_bias.shape[1])  # [G, L, L]
            mask = gather_rows(time_bias.to(q.dtype), bucket, dim=1).permute(1, 0, 2, 3)  # [G, H, L, L]
            keep = valid[:, None, None, :]
            if causal:
                keep = keep & torch.ones(pad_len, pad_len, dtype=torch.bool, device=q.device).tril()
            mask = mask.masked_fill(~keep, float("-inf"))
        elif causal and uniform:
            is_causal = True
        elif causal:
            tril = torch.ones(pad_len, pad_len, dtype=torch.bool, device=q.device).tril()
            mask = valid[:, None, None, :] & tril  # padded query rows still see key 0: no empty row
        elif not uniform:
            mask = valid[:, None, None, :]
        out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, is_causal=is_causal, scale=scale)
        outs.append(select_rows(out.permute(0, 2, 1, 3), valid))  # [n_rows, H, d]
        rows.append(index[valid])
    all_rows = torch.cat(rows)
    inverse = torch.empty_like(all_rows)
    inverse[all_rows] = torch.arange(total, device=q.device)
    return torch.cat(outs).index_select(0, inverse)


def keyed_pooling_attention_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    offsets: Tensor,
    q_offsets: Tensor | None = None,
    scale: float | None = None,
    ratio: float = DEFAULT_RATIO,
    min_len: int = DEFAULT_MIN_LEN,
    bias: Tensor | None = None,
    bias_group: int = 1,
) -> Tensor:
    """Keyed pooling by users grouped on history length; contract of
    :func:`eventrec.ops.attention_reference.keyed_pooling_attention_reference`.

    Args:
        q: dense ``[B, Q, H, d]`` or jagged ``[sum(Q_b), H, d]`` with ``q_offsets``.
        k, v: ``[sum(N_b), H, d]``; offsets ``[B+1]``.
        bias, bias_group: optional additive score bias ``[sum(Q_b) / bias_group, H, >= max N_b]``
            (jagged q only): query row ``i`` adds ``bias[i // bias_group, h, j]`` to its score for its
            user's ``j``-th event. Gets a gradient.

    Returns:
        Same shape as q; zeros for users without events.
    """
    head_dim = q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    lengths = (offsets[1:] - offsets[:-1]).tolist()
    num_users = len(lengths)
    groups = length_groups(lengths, ratio, min_len)
    empty_users = [b for b, n in enumerate(lengths) if n == 0]
    if q_offsets is None:
        if q.dim() != 4 or q.shape[0] != num_users:
            raise ValueError("dense q must be [B, Q, H, d] with B = len(offsets) - 1")
        if bias is not None:
            raise ValueError("bias: needs jagged q (q_offsets)")
        outs, order = [], []
        for group in groups:
            users = torch.tensor(group, device=q.device, dtype=torch.int64)
            index, valid = padded_index(offsets, users, lengths[group[0]])
            mask = None if lengths[group[-1]] == lengths[group[0]] else valid[:, None, None, :]
            qg = gather_rows(q, users).permute(0, 2, 1, 3)  # [G, H, Q, d]
            out = F.scaled_dot_product_attention(qg, _gather(k, index), _gather(v, index), attn_mask=mask,
                                                 scale=scale)
            outs.append(out.permute(0, 2, 1, 3))
            order += group
        if empty_users:
            outs.append(q.new_zeros((len(empty_users),) + tuple(q.shape[1:])) + 0.0 * q[empty_users].sum())
            order += empty_users
        inverse = torch.empty(num_users, dtype=torch.int64, device=q.device)
        inverse[torch.tensor(order, device=q.device)] = torch.arange(num_users, device=q.device)
        return torch.cat(outs).index_select(0, inverse)

    # jagged queries: pad the queries of each group too
    q_lengths = (q_offsets[1:] - q_offsets[:-1]).tolist()
    total_q = q.shape[0]
    rows, outs = [], []
    for group in groups:
        users = torch.tensor(group, device=q.device, dtype=torch.int64)
        index, valid = padded_index(offsets, users, lengths[group[0]])
        q_index, q_valid = padded_index(q_offsets, users, max(max(q_lengths[b] for b in group), 1))
        mask = valid[:, None, None, :]
        if bias is not None:  # [G, Qpad, H, L] -> [G, H, Qpad, L], -inf on padded keys
            rows_bias = gather_rows(bias[:, :, : index.shape[1]], torch.div(q_index, bias_group, rounding_mode="floor"))
            mask = rows_bias.permute(0, 2, 1, 3).masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(_gather(q, q_index), _gather(k, index), _gather(v, index),
                                             attn_mask=mask, scale=scale)
        outs.append(select_rows(out.permute(0, 2, 1, 3), q_valid))
        rows.append(q_index[q_valid])
    for b in empty_users:
        s, e = q_offsets[b].item(), q_offsets[b + 1].item()
        if e > s:
            outs.append(torch.zeros_like(q[s:e]) + 0.0 * q[s:e].sum())
            rows.append(torch.arange(s, e, device=q.device))
    if not rows:
        return q.new_zeros(q.shape) + 0.0 * q.sum()
    all_rows = torch.cat(rows)
    inverse = torch.empty_like(all_rows)
    inverse[all_rows] = torch.arange(total_q, device=q.device)
    return torch.cat(outs).index_select(0, inverse)
