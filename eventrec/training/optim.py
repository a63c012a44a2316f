"""Optimizers and the learning-rate schedule: AdamW, and SparseAdam for embedding tables with sparse
gradients; linear warm-up then cosine decay; gradient clipping of the dense parameters."""

from __future__ import annotations

import math

import torch

from eventrec.training.config import TrainConfig


def build_optimizers(model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """``{"adamw": ..., "sparse_adam": ...}`` (the latter only when the model has sparse embedding tables)."""
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    sparse_ids = {id(p) for p in sparse}
    decay = [p for n, p in model.named_parameters() if id(p) not in sparse_ids and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if id(p) not in sparse_ids and p.dim() < 2]
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate,
        )
    }
    if sparse:
        optimizers["sparse_adam"] = torch.optim.SparseAdam(sparse, lr=config.learning_rate)
    return optimizers


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_step(optimizers: dict[str, torch.optim.Optimizer], loss: torch.Tensor, lr: float, clip_norm: float) -> None:
    """Set the learning rate, back-propagate ``loss``, clip the dense gradients' norm, step every optimizer."""
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = lr
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    dense = [p for group in optimizers["adamw"].param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(dense, clip_norm)
    for optimizer in optimizers.values():
        optimizer.step()
