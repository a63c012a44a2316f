"""Interaction layers, task heads and the multi-task loss shared by both models."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mlp(input_dim: int, dims: list[int], final_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, dim in enumerate(dims):
        layers.append(nn.Linear(input_dim, dim))
        if final_activation or i < len(dims) - 1:
            layers.append(nn.ReLU())
        input_dim = dim
    return nn.Sequential(*layers)


class CrossNetwork(nn.Module):
    """DCNv2 cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``; ``[B, F] → [B, F]``.

    With ``rank`` r < F each ``W_l`` is the product ``U_l V_l`` (``[F, r] · [r, F]``, DCNv2's low-rank
    cross): ``2·F·r`` multiply-adds per row instead of ``F²``. ``U_l`` starts at zero, so every layer
    starts as the identity, as the full-rank one nearly does (``W_l`` drawn with std 0.01)."""

    def __init__(self, dim: int, num_layers: int, rank: int | None = None):
        super().__init__()
        if rank is not None and not 1 <= rank:
            raise ValueError(f"rank must be >= 1 (or None for full rank), got {rank}")
        low_rank = rank is not None and rank < dim
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim)) if low_rank else nn.Linear(dim, dim)  # x → V x → U (V x) + b
            for _ in range(num_layers))
        for layer in self.layers:  # after creating them all: the random draws of a full-rank network as before cross_rank existed
            up = layer[1] if low_rank else layer
            nn.init.zeros_(up.bias)
            if low_rank:
                nn.init.zeros_(up.weight)
            else:
                nn.init.normal_(up.weight, std=0.01)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


def interaction_input(pooled: torch.Tensor, candidate: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """The head's input ``[B, M·D + Q + (M+1)M/2]``: pooled ``[B, M, D]``, the candidate ``[B, Q]``, and
    the dot products among the pooled vectors and the projected candidate ``[B, D]``."""
    vectors = torch.cat([pooled, projected.unsqueeze(1)], dim=1)  # [B, M+1, D]
    return torch.cat([pooled.flatten(1), candidate, dot_interaction(vectors)], dim=-1)


def dot_interaction(features: torch.Tensor) -> torch.Tensor:
    """DLRM's pairwise dot products of ``[B, F, E]`` feature vectors → ``[B, F(F-1)/2]``."""
    products = torch.bmm(features, features.transpose(1, 2))
    i, j = torch.triu_indices(features.shape[1], features.shape[1], offset=1, device=features.device)
    return products[:, i, j]


class TaskHeads(nn.Module):
    """An MLP tower, then one logit per task: ``[B, F] → [B, T]``.

    ``calibration_scale`` and ``calibration_bias`` (``[T]`` buffers, identity by default) map each
    logit to ``scale * logit + bias``; they are fitted after training on the validation split
    (Platt scaling, :func:`fit_platt`), never by the optimiser, and saved with the weights.
    """

    def __init__(self, input_dim: int, mlp_dims: list[int], num_tasks: int):
        super().__init__()
        self.tower = mlp(input_dim, mlp_dims)
        self.logits = nn.Linear(mlp_dims[-1] if mlp_dims else input_dim, num_tasks)
        self.register_buffer("calibration_scale", torch.ones(num_tasks))
        self.register_buffer("calibration_bias", torch.zeros(num_tasks))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``[B, T]``."""
        return self.logits(self.tower(x))

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.calibration_scale + self.calibration_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.calibrate(self.raw(x))


def fit_platt(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> tuple[float, float]:
    """Scale and bias minimising the logloss of ``sigmoid(a * logit + b)`` over present labels ``[n]``."""
    present = ~torch.isnan(labels)
    z, y = logits[present].double(), labels[present].double()
    if len(y) == 0 or y.min() == y.max():
        return 1.0, 0.0
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * z + params[1], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = params.detach().tolist()
    return (a, b) if np.isfinite(a) and np.isfinite(b) and a > 0 else (1.0, 0.0)


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


def in_batch_softmax_loss(users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, history_index: torch.Tensor,
                          item_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled softmax of a factorised score against every item of the batch, per task.

    ``users [G, T, D]`` (one per history), ``items [B, D]`` (one per row), ``labels [B, T]``,
    ``history_index [B]`` (the history of each row), ``item_keys [B]`` (the item's identity). For each
    positive row p of history g: ``-(s_gp - logsumexp_r s_gr)`` with ``s_gr = <users[g, t], items[r]>``
    over all B rows r, leaving out the other rows that show p's item (they are not negatives). The
    per-task loss is the mean over positives. Returns (sum over tasks, per-task ``[T]``)."""
    def loss(t: int, rows: torch.Tensor) -> torch.Tensor:
        scores = users[history_index[rows], t] @ items.T  # [P, B]
        same_item = (item_keys[rows].unsqueeze(1) == item_keys.unsqueeze(0)) & (rows.unsqueeze(1) != torch.arange(len(items), device=items.device))
        scores = scores.masked_fill(same_item, -torch.inf)
        return (torch.logsumexp(scores, dim=1) - scores[torch.arange(len(rows)), rows]).mean()

    return _mean_over_positives(labels, loss, items)


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
