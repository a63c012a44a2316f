"""Predictions and metrics over a split, per task, overall and by segment.

Segments: history length (events strictly before the impression, all streams) in buckets, and the
set of streams the user has any event in before the impression.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from eventrec.evaluation.metrics import require_finite, task_metrics
from eventrec.store.reader import EventStore

LENGTH_BUCKETS = (0, 1, 5, 20, 100, 10**9)


@torch.no_grad()
def predict(model: nn.Module, store: EventStore, indices: np.ndarray, batch_fn: Callable, batch_size: int = 2048) -> np.ndarray:
    """Probabilities ``[len(indices), T]`` in the order of ``indices``."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        batch = batch_fn(store, indices[start : start + batch_size])
        out.append(torch.sigmoid(model(batch)).float().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(store.label_names)), dtype=np.float32)


def history_lengths(store: EventStore, indices: np.ndarray) -> np.ndarray:
    """Events strictly before each impression, summed over streams ``[n]``."""
    return sum(store.cuts[name][indices] for name in store.streams)


def metrics_by_task(store: EventStore, indices: np.ndarray, probs: np.ndarray, group_by: str = "user") -> dict[str, dict]:
    """``{task: metrics}``; gAUC groups by user (or by request when ``group_by='request'``).
    Non-finite ``probs [n, T]`` raise :class:`~eventrec.evaluation.metrics.NonFiniteScores` naming the example rows."""
    require_finite(probs, indices, "predictions")
    groups = store.user_rows[indices] if group_by == "user" or store.request_ids is None else store.request_ids[indices]
    return {name: task_metrics(store.labels[indices, t], probs[:, t], groups) for t, name in enumerate(store.label_names)}


def metrics_by_segment(store: EventStore, indices: np.ndarray, probs: np.ndarray) -> dict[str, dict]:
    """Primary-task metrics sliced by history length and by which streams the user has."""
    require_finite(probs, indices, "predictions")
    labels = store.labels[indices, 0]
    lengths = history_lengths(store, indices)
    out: dict[str, dict] = {}
    for lo, hi in zip(LENGTH_BUCKETS[:-1], LENGTH_BUCKETS[1:]):
        mask = (lengths >= lo) & (lengths < hi)
        if mask.any():
            label = f"history {lo}" if hi == lo + 1 else f"history {lo}-{hi - 1}" if hi < 10**9 else f"history {lo}+"
            out[label] = task_metrics(labels[mask], probs[mask, 0])
    has = np.stack([store.cuts[name][indices] > 0 for name in store.streams], axis=1)
    names = list(store.streams)
    keys = ["+".join(n for n, h in zip(names, row) if h) or "no events" for row in has]
    for key in sorted(set(keys)):
        mask = np.array([k == key for k in keys])
        out[f"streams: {key}"] = task_metrics(labels[mask], probs[mask, 0])
    return out
