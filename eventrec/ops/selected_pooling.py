"""Keyed pooling of one user's candidates over *selected* positions: a shared set plus a few per candidate.

The bounded-cost form of keyed pooling for long histories (SIM's idea: search first, then attend):
every candidate ``c`` attends over the positions every candidate reads (``S`` shared keys: the summary
token and the most recent events) and over its own few extra positions (the events that a search
picked for it, e.g. those with its item id or category). The cost per candidate is
``O(M·H·d·(S + T_c))``, independent of the history's length ``N``.

Shapes: ``q [C, M, H, d]`` (M query rows per candidate), ``shared_k, shared_v [S, H, d]``,
``shared_bias [C, H, S]`` (or None), ``extra_k, extra_v [T, H, d]`` with ``extra_candidate [T]``
(int64, non-decreasing: the candidate each extra key belongs to) and ``extra_bias [T, H]`` (or None)
→ ``[C, M, H, d]``. Scores are ``scale · <q, k> + bias``, softmax over each candidate's ``S + T_c``
keys; a candidate with no key at all pools to zeros. Dispatch: :func:`selected_pooling_attention`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def selected_pooling_reference(q: Tensor, shared_k: Tensor, shared_v: Tensor, shared_bias: Tensor | None, extra_k: Tensor, extra_v: Tensor,
                               extra_bias: Tensor | None, extra_candidate: Tensor, scale: float) -> Tensor:
    """The definition, one candidate at a time: its keys are the shared ones, then its extras."""
    out = q.new_zeros(q.shape)
    for c in range(len(q)):
        mine = (extra_candidate == c).nonzero().squeeze(1)
        keys = torch.cat([shared_k, extra_k[mine]])  # [S + T_c, H, d]
        values = torch.cat([shared_v, extra_v[mine]])
        if len(keys) == 0:
            continue
        scores = torch.einsum("mhd,jhd->mhj", q[c], keys) * scale
        bias = [shared_bias[c] if shared_bias is not None else q.new_zeros(q.shape[2], len(shared_k)),
                extra_bias[mine].T if extra_bias is not None else q.new_zeros(q.shape[2], len(mine))]
        scores = scores + torch.cat(bias, dim=1).unsqueeze(0)
        out[c] = torch.einsum("mhj,jhd->mhd", torch.softmax(scores, dim=-1), values)
    return out


def selected_pooling_torch(q: Tensor, shared_k: Tensor, shared_v: Tensor, shared_bias: Tensor | None, extra_k: Tensor, extra_v: Tensor,
                           extra_bias: Tensor | None, extra_candidate: Tensor, scale: float) -> Tensor:
    """Dense batched products: the extras padded per candidate to ``[C, T_max, H, d]`` (T_max: the most
    any candidate has), scores ``[C, M, H, S + T_max]`` with ``-inf`` on the padding, one softmax."""
    c, m, h, d = q.shape
    counts = torch.bincount(extra_candidate, minlength=c)
    most = int(counts.max()) if len(extra_candidate) else 0
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(extra_candidate), device=q.device) - starts[extra_candidate]  # each extra's place in its candidate's row
    flat = extra_candidate * most + slot
    index = torch.zeros(c * most, dtype=torch.int64, device=q.device)
    index[flat] = torch.arange(len(extra_candidate), device=q.device)
    valid = torch.zeros(c * most, dtype=torch.bool, device=q.device)
    valid[flat] = True
    index, valid = index.view(c, most), valid.view(c, most)
    keys = extra_k[index]  # [C, T_max, H, d]
    scores = [torch.einsum("cmhd,shd->cmhs", q, shared_k) * scale, torch.einsum("cmhd,cthd->cmht", q, keys) * scale]
    if shared_bias is not None:
        scores[0] = scores[0] + shared_bias.unsqueeze(1)
    any_key = (counts > 0) | (len(shared_k) > 0)  # [C]: a candidate without keys keeps finite scores, zero weights
    padding = torch.zeros(c, most, h, dtype=q.dtype, device=q.device).masked_fill_((~valid & any_key.unsqueeze(1)).unsqueeze(-1), float("-inf"))
    if extra_bias is not None:
        padding = padding + extra_bias[index]
    scores[1] = scores[1] + padding.permute(0, 2, 1).unsqueeze(1)
    weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1) * any_key.view(c, 1, 1, 1)  # [C, M, H, S + T_max]
    s = len(shared_k)
    return torch.einsum("cmhs,shd->cmhd", weights[..., :s], shared_v) + torch.einsum("cmht,cthd->cmhd", weights[..., s:], extra_v[index])


def selected_pooling_attention(q: Tensor, shared_k: Tensor, shared_v: Tensor, extra_k: Tensor, extra_v: Tensor, extra_candidate: Tensor, *,
                               shared_bias: Tensor | None = None, extra_bias: Tensor | None = None, scale: float | None = None,
                               backend: Literal["torch", "reference"] = "torch") -> Tensor:
    """The dispatch point (see the module's doc for shapes): ``"torch"`` (default) or ``"reference"``."""
    if q.dim() != 4 or shared_k.dim() != 3 or extra_k.dim() != 3:
        raise ValueError(f"q must be [C, M, H, d], keys [S or T, H, d]; got {tuple(q.shape)}, {tuple(shared_k.shape)}, {tuple(extra_k.shape)}")
    if shared_k.shape != shared_v.shape or extra_k.shape != extra_v.shape or len(extra_candidate) != len(extra_k):
        raise ValueError("keys, values and extra_candidate must agree in length")
    if shared_bias is not None and shared_bias.shape != (len(q), q.shape[2], len(shared_k)):
        raise ValueError(f"shared_bias must be [{len(q)}, {q.shape[2]}, {len(shared_k)}], got {tuple(shared_bias.shape)}")
    if extra_bias is not None and extra_bias.shape != (len(extra_k), q.shape[2]):
        raise ValueError(f"extra_bias must be [{len(extra_k)}, {q.shape[2]}], got {tuple(extra_bias.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "torch":
        return selected_pooling_torch(q, shared_k, shared_v, shared_bias, extra_k, extra_v, extra_bias, extra_candidate, scale)
    if backend == "reference":
        return selected_pooling_reference(q, shared_k, shared_v, shared_bias, extra_k, extra_v, extra_bias, extra_candidate, scale)
    raise ValueError(f"backend: 'torch' or 'reference', got {backend!r}")
