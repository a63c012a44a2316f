"""The loss functions of the training objectives, as pure tensor functions (tested against loops).

Each returns a scalar to minimise (and, for the per-task ones, the detached per-task values ``[T]``
that the training log records). The objectives of :mod:`eventrec.training.objectives` call them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def request_softmax_loss(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Listwise loss: softmax cross-entropy over each request's candidates, per task.

    ``logits, labels [B, T]``, ``groups [B]`` (request of each row). For every positive row:
    ``-(z_pos - logsumexp(z of its request))``; the per-task loss is the mean over positives
    (missing labels, NaN, are left out of the request). Returns (sum over tasks, per-task ``[T]``).
    """
    _, group = torch.unique(groups, return_inverse=True)
    num_groups = int(group.max()) + 1 if group.numel() else 0
    present = ~torch.isnan(labels)
    per_task = []
    for t in range(logits.shape[1]):
        z = torch.where(present[:, t], logits[:, t], torch.full_like(logits[:, t], -torch.inf))
        peak = torch.full((num_groups,), -torch.inf, dtype=z.dtype, device=z.device).scatter_reduce(0, group, z, "amax")
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()
        total = torch.zeros(num_groups, dtype=z.dtype, device=z.device).index_add(0, group, torch.exp(z - peak[group]))
        log_normalizer = torch.log(total.clamp(min=torch.finfo(z.dtype).tiny)) + peak
        positive = present[:, t] & (labels[:, t] > 0.5)
        if positive.any():
            per_task.append((log_normalizer[group] - z)[positive].mean())
        else:
            per_task.append(logits.sum() * 0.0)
    stacked = torch.stack(per_task)
    return stacked.sum(), stacked.detach()


def _mean_over_positives(labels: torch.Tensor, loss, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per task t, ``loss(t, rows)`` over the rows ``[P]`` with a positive label (0, still attached to
    ``source``'s graph, when there is none). Returns (sum over tasks, per-task ``[T]``)."""
    per_task = []
    for t in range(labels.shape[1]):
        rows = ((~torch.isnan(labels[:, t])) & (labels[:, t] > 0.5)).nonzero().squeeze(1)
        per_task.append(loss(t, rows) if rows.numel() else source.sum() * 0.0)
    stacked = torch.stack(per_task)
    return stacked.sum(), stacked.detach()


def catalogue_softmax_loss(users: torch.Tensor, catalogue: torch.Tensor, labels: torch.Tensor, history_index: torch.Tensor,
                           positive_item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full softmax of a factorised score over a whole catalogue of items, per task.

    ``users [G, T, D]`` (one per history), ``catalogue [C, D]`` (one vector per catalogue item),
    ``labels [B, T]``, ``history_index [B]`` (the history of each row), ``positive_item [B]`` (each
    row's position in the catalogue). For each positive row p of history g:
    ``-(s_g,c(p) - logsumexp_c s_gc)`` with ``s_gc = <users[g, t], catalogue[c]>`` over all C items
    (SASRec's training loss: every other item is a negative, no sampling). The per-task loss is the
    mean over positives. Returns (sum over tasks, per-task ``[T]``)."""
    def loss(t: int, rows: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(users[history_index[rows], t] @ catalogue.T, positive_item[rows])  # scores [P, C]

    return _mean_over_positives(labels, loss, catalogue)


def dot_sampled_catalogue_loss(positive: torch.Tensor, log_normalizer: torch.Tensor, residuals: torch.Tensor,
                               kept: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of a whole logit ``z = r + d`` over a whole catalogue, estimated from S
    items drawn from the softmax of its dot term ``d`` alone (importance sampling: the proposal
    ``q_c = exp(d_c) / Z_d`` is known exactly, so each drawn item's ``exp(z_c) / q_c`` is
    ``Z_d·exp(r_c)``). Per positive p:

        ``-z_p + log(exp(z_p) + Z_d/S · Σ_j kept_j · exp(r_j))``

    ``positive [P]``: the positives' whole logits; ``log_normalizer [P]``: ``log Z_d`` over the
    catalogue; ``residuals [P, S]``: ``z - d`` of the drawn items; ``kept [P, S]`` (bool): false for a
    draw of the positive itself (left out: the sum then estimates every other item's term, unbiased).
    Returns the mean over positives (a scalar)."""
    draws = residuals.shape[1]
    corrected = residuals + (log_normalizer - math.log(draws)).unsqueeze(1)
    corrected = corrected.masked_fill(~kept, -torch.inf)
    return (torch.logsumexp(torch.cat([positive.unsqueeze(1), corrected], dim=1), dim=1) - positive).mean()


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor, weights: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy per task over the labels that are present (NaN = missing).

    ``logits, labels [B, T]`` → (the weighted sum over tasks of each task's mean loss, per-task
    means ``[T]``). A task with no label in the batch contributes 0.
    """
    present = ~torch.isnan(labels)
    safe = torch.where(present, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, safe, reduction="none") * present
    per_task = losses.sum(0) / present.sum(0).clamp(min=1)
    w = torch.ones_like(per_task) if weights is None else torch.tensor(weights, dtype=per_task.dtype, device=per_task.device)
    return (per_task * w).sum(), per_task.detach()
