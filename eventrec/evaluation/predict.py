"""Predictions and metrics over a split, per task, overall and by segment.

Segments: history length (events strictly before the impression, all streams) in buckets, and the
set of streams the user has any event in before the impression; segments under
``MIN_SEGMENT_IMPRESSIONS`` labelled impressions, or without both classes, are not measured.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl
import torch
from torch import nn

from eventrec.training.factory import batch_function
from eventrec.evaluation.metrics import require_finite, task_metrics
from eventrec.store.reader import EventStore

LENGTH_BUCKETS = (0, 1, 5, 20, 100, 10**9)
MIN_SEGMENT_IMPRESSIONS = 100  # fewer labelled impressions: a segment's metrics are noise


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


def predict_by_user(model: nn.Module, store: EventStore, indices: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """:func:`predict` on impressions grouped by user (:func:`~eventrec.data.user_batches.make_user_batch`):
    the examples sorted by user, so that a batch encodes each of its users once; probabilities in the
    order of ``indices``."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(store.user_rows[indices], kind="stable")
    probs = predict(model, store, indices[order], batch_function(model.config, user_batches=True), batch_size)
    out = np.empty_like(probs)
    out[order] = probs
    return out


def history_lengths(store: EventStore, indices: np.ndarray) -> np.ndarray:
    """Events strictly before each impression, summed over streams ``[n]``."""
    return sum(store.cuts[name][indices] for name in store.streams)


def metrics_by_task(store: EventStore, indices: np.ndarray, probs: np.ndarray, group_by: str = "user") -> dict[str, dict]:
    """``{task: metrics}``; gAUC groups by user (or by request when ``group_by='request'``).
    Non-finite ``probs [n, T]`` raise :class:`~eventrec.evaluation.metrics.NonFiniteScores` naming the example rows."""
    require_finite(probs, indices, "predictions")
    groups = store.user_rows[indices] if group_by == "user" or store.request_ids is None else store.request_ids[indices]
    return {name: task_metrics(store.labels[indices, t], probs[:, t], groups) for t, name in enumerate(store.label_names)}


def segment_masks(store: EventStore, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``{segment: mask [n]}``: history-length buckets, then the set of streams the user has events in."""
    lengths = history_lengths(store, indices)
    out: dict[str, np.ndarray] = {}
    for lo, hi in zip(LENGTH_BUCKETS[:-1], LENGTH_BUCKETS[1:]):
        mask = (lengths >= lo) & (lengths < hi)
        if mask.any():
            out[f"history {lo}" if hi == lo + 1 else f"history {lo}-{hi - 1}" if hi < 10**9 else f"history {lo}+"] = mask
    has = np.stack([store.cuts[name][indices] > 0 for name in store.streams], axis=1)
    keys = np.array(["+".join(n for n, h in zip(store.streams, row) if h) or "no events" for row in has])
    for key in sorted(set(keys.tolist())):
        out[f"streams: {key}"] = keys == key
    return out


def _measurable(labels: np.ndarray, min_impressions: int) -> bool:
    """Enough labelled impressions ``[n]`` (NaN = missing), with both a positive and a negative."""
    present = labels[~np.isnan(labels)]
    return len(present) >= min_impressions and 0 < present.sum() < len(present)


def metrics_by_segment(store: EventStore, indices: np.ndarray, probs: np.ndarray,
                       min_impressions: int = MIN_SEGMENT_IMPRESSIONS) -> dict[str, dict]:
    """Primary-task metrics sliced by history length and by which streams the user has, for the
    segments with at least ``min_impressions`` labelled impressions and both classes (smaller ones are
    noise, e.g. an NE of 24382 on one impression: :func:`segments_too_small` lists them)."""
    require_finite(probs, indices, "predictions")
    labels = store.labels[indices, 0]
    return {name: task_metrics(labels[mask], probs[mask, 0]) for name, mask in segment_masks(store, indices).items()
            if _measurable(labels[mask], min_impressions)}


def segments_too_small(store: EventStore, indices: np.ndarray, min_impressions: int = MIN_SEGMENT_IMPRESSIONS) -> dict[str, dict]:
    """``{segment: {"count", "positives"}}`` of the segments :func:`metrics_by_segment` leaves out
    (labelled primary-task impressions and positives among them)."""
    labels = store.labels[indices, 0]
    out = {}
    for name, mask in segment_masks(store, indices).items():
        present = labels[mask][~np.isnan(labels[mask])]
        if not _measurable(labels[mask], min_impressions):
            out[name] = {"count": int(len(present)), "positives": int(present.sum())}
    return out


def predictions_frame(store: EventStore, indices: np.ndarray, probs: np.ndarray) -> pl.DataFrame:
    """One row per impression of ``indices``: example row, user and item ids, request id (when the
    schema has one), timestamp, then ``label_TASK`` (null = missing) and ``score_TASK`` per task."""
    columns = {"example": indices, "user_id": store.user_ids[store.user_rows[indices]], "item_id": store.item_ids[indices]}
    if store.request_ids is not None:
        columns["request_id"] = store.request_ids[indices]
    columns["timestamp"] = store.timestamps[indices]
    frame = pl.DataFrame(columns)
    labels = {f"label_{name}": pl.Series(store.labels[indices, t], nan_to_null=True) for t, name in enumerate(store.label_names)}
    scores = {f"score_{name}": probs[:, t] for t, name in enumerate(store.label_names)}
    return frame.with_columns(**labels, **scores)
