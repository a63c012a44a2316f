"""Interaction layers and task heads shared by both models (the losses: :mod:`eventrec.training.objectives.losses`)."""

from __future__ import annotations

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
