"""Keyed pooling of one user's candidates over shared positions plus the positions of their *group*.

The form of :mod:`eventrec.ops.selected_pooling` for candidates whose own positions are one list
that many candidates share: with candidate search (``candidate_search``), a candidate that matches
the user's events in one vocabulary only (e.g. its category, as every candidate of that category
does) reads the same ``per_match`` events as all of them. Instead of gathering those keys and values
once per candidate (``[C, T, H, d]``: what dominated the cost of ranking thousands of candidates),
the keys of each group are gathered once (``[G, P, H, d]``) and the candidates are scored in blocks of
one group each, so the per-candidate work is the products alone.

Every candidate ``c`` attends over the ``S`` shared keys (the summary token, the most recent events)
and the valid keys of its group ``candidate_group[c]`` (``-1``: none); scores are
``scale · <q, k> + bias``, softmax over the candidate's ``S + P_g`` keys; a candidate with no key at all
pools to zeros. The bias: ``shared_bias [C, H, S]`` on the shared keys and, on the group's keys, the
match term in factored form (:class:`GroupMatch`), so that no ``[C, P, ...]`` tensor is gathered.

Shapes: ``q [C, M, H, d]``, ``shared_k, shared_v [S, H, d]``, ``group_k, group_v [G, P, H, d]``,
``group_valid [G, P]`` (bool), ``candidate_group [C]`` (int64) → ``[C, M, H, d]``. Dispatch:
:func:`grouped_pooling_attention`; tests compare the backends (``tests/test_grouped_pooling.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class GroupMatch:
    """The match term on the groups' keys: ``bias[c, h, p] = sum_v weight[h, v] · <queries[c, v],
    keys[candidate_group[c], p, v]>``. ``queries [C, V, E]``, ``keys [G, P, V, E]``, ``weight [H, V]``
    (the score scale included)."""

    queries: Tensor
    keys: Tensor
    weight: Tensor


def grouped_pooling_reference(q: Tensor, shared_k: Tensor, shared_v: Tensor, shared_bias: Tensor | None, group_k: Tensor, group_v: Tensor,
                              group_valid: Tensor, candidate_group: Tensor, match: GroupMatch | None, scale: float) -> Tensor:
    """The definition, one candidate at a time: its keys are the shared ones, then its group's valid ones."""
    out = q.new_zeros(q.shape)
    heads = q.shape[2]
    for c in range(len(q)):
        g = int(candidate_group[c])
        mine = group_valid[g].nonzero().squeeze(1) if g >= 0 else torch.zeros(0, dtype=torch.int64, device=q.device)
        keys = torch.cat([shared_k, group_k[g, mine] if g >= 0 else shared_k[:0]])  # [S + P_g, H, d]
        values = torch.cat([shared_v, group_v[g, mine] if g >= 0 else shared_v[:0]])
        if len(keys) == 0:
            continue
        scores = torch.einsum("mhd,jhd->mhj", q[c], keys) * scale
        bias = [shared_bias[c] if shared_bias is not None else q.new_zeros(heads, len(shared_k)), q.new_zeros(heads, len(mine))]
        if match is not None and g >= 0:
            bias[1] = torch.einsum("ve,pve,hv->hp", match.queries[c], match.keys[g, mine], match.weight)
        scores = scores + torch.cat(bias, dim=1).unsqueeze(0)
        out[c] = torch.einsum("mhj,jhd->mhd", torch.softmax(scores, dim=-1), values)
    return out


def grouped_pooling_torch(q: Tensor, shared_k: Tensor, shared_v: Tensor, shared_bias: Tensor | None, group_k: Tensor, group_v: Tensor,
                          group_valid: Tensor, candidate_group: Tensor, match: GroupMatch | None, scale: float) -> Tensor:
    """Blocks of one group each: the candidates sorted by group and cut into rows of ``K`` (``K`` about
    ``C / G``, at most 64, so that padding adds at most a block per group); each block's keys are the
    shared ones then its group's (``[blocks, H, S + P, d]``, gathered once per block, not per candidate),
    so a block is two batched products and one softmax over ``[H, K·M, S + P]`` scores; then back to the
    candidates' order. The candidates without a group form blocks of their own, whose group part is
    all padding."""
    c, m, h, d = q.shape
    s = len(shared_k)
    groups, p = group_k.shape[0], group_k.shape[1]
    if c == 0:
        return q.new_zeros(q.shape)
    # a virtual last group (index G) for the candidates without one: no valid key
    group = torch.where(candidate_group >= 0, candidate_group, groups)
    valid = torch.cat([group_valid, group_valid.new_zeros(1, p)])  # [G + 1, P]
    sizes = torch.bincount(group, minlength=groups + 1)  # [G + 1]
    mean_size = math.ceil(c / int((sizes > 0).sum()))
    k_rows = math.ceil(mean_size / math.ceil(mean_size / 64))  # at most 64 rows a block, the blocks of an average group full
    blocks_per_group = (sizes + k_rows - 1) // k_rows
    blocks = int(blocks_per_group.sum())
    order = torch.sort(group, stable=True).indices  # candidates by group
    first_block = torch.cumsum(blocks_per_group, 0) - blocks_per_group  # [G + 1]
    rank = torch.arange(c, device=q.device) - (torch.cumsum(sizes, 0) - sizes)[group[order]]  # place within its group
    slot = (first_block[group[order]] + rank // k_rows) * k_rows + rank % k_rows  # [C]: each sorted candidate's row in the blocks
    row_candidate = torch.zeros(blocks * k_rows, dtype=torch.int64, device=q.device)  # padding rows read candidate 0, dropped at the end
    row_candidate[slot] = order
    block_group = torch.repeat_interleave(torch.arange(groups + 1, device=q.device), blocks_per_group, output_size=blocks)  # [blocks]
    # keys and values per block: the shared ones, then the group's (the scale folded into the keys)
    def per_block(shared: Tensor, grouped: Tensor) -> Tensor:  # [blocks, H, S + P, d]
        grouped = torch.cat([grouped, grouped.new_zeros(1, p, h, d)]).index_select(0, block_group)
        return torch.cat([shared.unsqueeze(0).expand(blocks, s, h, d), grouped], dim=1).permute(0, 2, 1, 3)
    keys = per_block(shared_k * scale, group_k * scale)
    values = per_block(shared_v, group_v)
    queries = q.index_select(0, row_candidate).view(blocks, k_rows, m, h, d).permute(0, 3, 1, 2, 4).reshape(blocks, h, k_rows * m, d)
    scores = torch.matmul(queries, keys.transpose(-1, -2)).view(blocks, h, k_rows, m, s + p)  # [blocks, H, K, M, S + P]
    # the bias per (candidate, head, key), the same for the candidate's M slots; -inf on the groups' padding
    bias = [q.new_zeros(blocks, h, k_rows, s) if shared_bias is None else
            shared_bias.index_select(0, row_candidate).view(blocks, k_rows, h, s).transpose(1, 2)]
    padding = torch.zeros(blocks, 1, 1, p, dtype=q.dtype, device=q.device).masked_fill_(~valid.index_select(0, block_group).view(blocks, 1, 1, p), float("-inf"))
    if match is not None:
        group_match = torch.cat([match.keys, match.keys.new_zeros(1, *match.keys.shape[1:])]).index_select(0, block_group)  # [blocks, P, V, E]
        block_queries = match.queries.index_select(0, row_candidate).view(blocks, k_rows, *match.queries.shape[1:])  # [blocks, K, V, E]
        padding = padding + torch.einsum("nkve,npve,hv->nhkp", block_queries, group_match, match.weight)
    bias.append(padding.expand(blocks, h, k_rows, p))
    bias = torch.cat(bias, dim=-1)  # [blocks, H, K, S + P]
    if s == 0:  # a candidate may have no key at all: finite scores, zero weights
        any_key = torch.isfinite(bias).any(-1, keepdim=True)  # [blocks, H, K, 1]
        bias = bias.masked_fill(~any_key, 0.0)
    scores += bias.unsqueeze(3)
    weights = torch.softmax(scores, dim=-1)
    if s == 0:
        weights = weights * any_key.unsqueeze(3).to(weights.dtype)
    pooled = torch.matmul(weights.view(blocks, h, k_rows * m, s + p), values)  # [blocks, H, K·M, d]
    pooled = pooled.view(blocks, h, k_rows, m, d).permute(0, 2, 3, 1, 4).reshape(blocks * k_rows, m, h, d)
    row_of = torch.empty_like(order)
    row_of[order] = slot  # each candidate's row in the blocks
    return pooled.index_select(0, row_of)


def grouped_pooling_attention(q: Tensor, shared_k: Tensor, shared_v: Tensor, group_k: Tensor, group_v: Tensor, group_valid: Tensor,
                              candidate_group: Tensor, *, shared_bias: Tensor | None = None, match: GroupMatch | None = None,
                              scale: float | None = None, backend: Literal["torch", "reference"] = "torch") -> Tensor:
    """The dispatch point (see the module's doc for shapes): ``"torch"`` (default) or ``"reference"``."""
    if q.dim() != 4 or shared_k.dim() != 3 or group_k.dim() != 4:
        raise ValueError(f"q must be [C, M, H, d], shared keys [S, H, d], group keys [G, P, H, d]; got {tuple(q.shape)}, "
                         f"{tuple(shared_k.shape)}, {tuple(group_k.shape)}")
    if shared_k.shape != shared_v.shape or group_k.shape != group_v.shape or group_valid.shape != group_k.shape[:2]:
        raise ValueError("keys, values and group_valid must agree in shape")
    if len(candidate_group) != len(q) or (len(q) and int(candidate_group.max()) >= len(group_k)):
        raise ValueError(f"candidate_group must be [{len(q)}] with groups below {len(group_k)} (-1: none)")
    if shared_bias is not None and shared_bias.shape != (len(q), q.shape[2], len(shared_k)):
        raise ValueError(f"shared_bias must be [{len(q)}, {q.shape[2]}, {len(shared_k)}], got {tuple(shared_bias.shape)}")
    if match is not None and (match.queries.shape[0] != len(q) or match.keys.shape[:2] != group_k.shape[:2]):
        raise ValueError("match: queries [C, V, E] and keys [G, P, V, E] must agree with q and the group keys")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "torch":
        return grouped_pooling_torch(q, shared_k, shared_v, shared_bias, group_k, group_v, group_valid, candidate_group, match, scale)
    if backend == "reference":
        return grouped_pooling_reference(q, shared_k, shared_v, shared_bias, group_k, group_v, group_valid, candidate_group, match, scale)
    raise ValueError(f"backend: 'torch' or 'reference', got {backend!r}")
