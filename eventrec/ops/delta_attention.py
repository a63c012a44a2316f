"""Causal delta attention: new positions of one sequence attend to its cached keys/values plus themselves.

The incremental step of a causal encoder layer (generative-recommenders' ``delta attention`` over an
updated KV cache): a sequence whose first ``P`` positions were encoded before gets ``n`` new
positions; each new position ``i`` (``P + i`` in the sequence) attends over the ``P`` cached keys
and the new keys ``0..i``, with the optional learned bias by log-bucketed time gap of
:func:`eventrec.ops.jagged_self_attention`. Running the new positions this way gives what a full
causal pass over all ``P + n`` positions gives at those positions.

Shapes: ``q, k, v [n, H, d]`` (the new positions), ``cached_k, cached_v [P, H, d]``, ``timestamps
[n]`` and ``cached_timestamps [P]`` int64 seconds → ``[n, H, d]``. One sequence per call (serving's
per-user state). Call the dispatch point :func:`eventrec.ops.causal_delta_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from eventrec.ops.time_buckets import time_gap_bucket


def causal_delta_attention_reference(q: Tensor, k: Tensor, v: Tensor, cached_k: Tensor, cached_v: Tensor,
                                     time_bias: Tensor | None = None, timestamps: Tensor | None = None,
                                     cached_timestamps: Tensor | None = None, scale: float | None = None) -> Tensor:
    """The definition, one new position at a time (slow; float64-capable)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    keys, values = torch.cat([cached_k, k]), torch.cat([cached_v, v])
    times = torch.cat([cached_timestamps, timestamps]) if time_bias is not None else None
    cached = len(cached_k)
    out = torch.empty_like(q)
    for i in range(len(q)):
        visible = cached + i + 1  # every cached position, and the new ones up to this one
        scores = torch.einsum("hd,jhd->hj", q[i], keys[:visible]) * scale  # [H, visible]
        if time_bias is not None:
            scores = scores + time_bias[:, time_gap_bucket(times[cached + i] - times[:visible], time_bias.shape[1])].to(scores.dtype)
        out[i] = torch.einsum("hj,jhd->hd", torch.softmax(scores, dim=-1), values[:visible])
    return out


def causal_delta_attention_torch(q: Tensor, k: Tensor, v: Tensor, cached_k: Tensor, cached_v: Tensor,
                                 time_bias: Tensor | None = None, timestamps: Tensor | None = None,
                                 cached_timestamps: Tensor | None = None, scale: float | None = None) -> Tensor:
    """All new positions in one ``scaled_dot_product_attention`` call with an additive mask
    ``[H, n, P + n]`` (time bias; ``-inf`` past each position)."""
    n, cached = len(q), len(cached_k)
    keys, values = torch.cat([cached_k, k]).transpose(0, 1), torch.cat([cached_v, v]).transpose(0, 1)  # [H, P + n, d]
    future = torch.arange(cached + n, device=q.device)[None, :] > (cached + torch.arange(n, device=q.device))[:, None]  # [n, P + n]
    mask = torch.zeros(n, cached + n, dtype=q.dtype, device=q.device).masked_fill(future, float("-inf")).unsqueeze(0)
    if time_bias is not None:
        times = torch.cat([cached_timestamps, timestamps])
        mask = mask + time_bias[:, time_gap_bucket(timestamps[:, None] - times[None, :], time_bias.shape[1])].to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask, scale=scale)  # [H, n, d]
    return out.transpose(0, 1)
