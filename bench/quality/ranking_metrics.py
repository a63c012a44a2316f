"""Metrics of the quality benchmark that the library's ``eventrec.evaluation.metrics`` does not have.

* MRR of the clicked item within each list (trivago): per request with exactly one or more
  positives, 1 / (rank of the best-ranked positive), ranks 1-based, ties broken pessimistically
  (a positive tied with k negatives ranks below all of them), averaged over requests.
* HR@K and NDCG@K of full-catalogue next-item ranking (one held-out item per user): rank of the
  target among all scored items, ties broken pessimistically; HR@K = 1[rank <= K],
  NDCG@K = 1[rank <= K] / log2(rank + 1).
"""

from __future__ import annotations

import numpy as np

from eventrec.evaluation.metrics import task_metrics


def mean_reciprocal_rank(labels: np.ndarray, scores: np.ndarray, requests: np.ndarray) -> float:
    """MRR over requests that contain a positive. ``labels``, ``scores``, ``requests``: ``[n]``."""
    labels = labels.astype(bool)
    scores = scores.astype(np.float64)
    _, group = np.unique(requests, return_inverse=True)
    group = group.reshape(-1)
    # best positive score per request
    best_positive = np.full(group.max() + 1, -np.inf)
    np.maximum.at(best_positive, group[labels], scores[labels])
    has_positive = np.isfinite(best_positive)
    # rank = 1 + number of items of the request scoring >= the best positive, other than itself
    beats = (scores >= best_positive[group]) & ~labels
    above = np.bincount(group, weights=beats, minlength=len(best_positive))
    ranks = 1.0 + above[has_positive]
    return float((1.0 / ranks).mean())


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based pessimistic rank of each row's target. ``scores``: ``[U, I]``; ``targets``: ``[U]``."""
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= target_scores).sum(axis=1)  # counts the target itself: rank 1 = nothing ties or beats it


def hit_rate_and_ndcg(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k from 1-based ranks ``[U]``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks <= k
    return float(hit.mean()), float((hit / np.log2(ranks + 1)).mean())


def click_metrics(labels: np.ndarray, probs: np.ndarray, requests: np.ndarray) -> dict[str, float]:
    """AUC, gAUC over requests (clickouts), NE, logloss, calibration and MRR of one model."""
    out = task_metrics(labels, probs, groups=requests)
    out["mrr"] = mean_reciprocal_rank(labels, probs, requests)
    return out
