"""Ranking-quality metrics, vectorised with numpy: NE, AUC, gAUC, logloss, calibration.

* logloss: mean binary cross-entropy of the predicted probabilities.
* NE (normalised entropy, He et al. 2014): logloss divided by the entropy of the base rate
  (the logloss of always predicting the mean label). Lower is better; 1.0 = no information.
* AUC: probability that a random positive scores above a random negative (ties count one half),
  from average ranks (Mann-Whitney U).
* gAUC: the impression-weighted mean of per-group (per user or per request) AUCs over groups with
  both classes, all groups at once with one lexsort (no per-group Python loop or process pool).
* calibration: sum of predictions over sum of labels (1.0 = calibrated).

Every metric refuses non-finite scores (NaN, ±inf) with :class:`NonFiniteScores`, naming the rows:
NaN compares false with everything, so ranks and sums of such scores are numbers without meaning
(all-NaN scores gave an AUC of 0.47 before this check).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7
SHOWN_ROWS = 10  # rows named in a NonFiniteScores message


class NonFiniteScores(ValueError):
    """Scores holding NaN or ±inf: a broken model (e.g. NaN weights), not a metric value."""


def require_finite(scores: np.ndarray, rows: np.ndarray | None = None, what: str = "scores") -> None:
    """Raise :class:`NonFiniteScores` when ``scores [n]`` or ``[n, T]`` hold NaN or ±inf, naming the
    count and the first rows: ``rows [n]`` (e.g. example indices) or else positions in ``scores``."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.ndim > 1:
        bad = bad.any(axis=tuple(range(1, bad.ndim)))
    if not bad.any():
        return
    where = np.flatnonzero(bad)
    named = (where if rows is None else np.asarray(rows)[where])[:SHOWN_ROWS].tolist()
    label = "positions" if rows is None else "rows"
    more = ", ..." if len(where) > SHOWN_ROWS else ""
    raise NonFiniteScores(f"{len(where)} of {len(bad)} {what} are not finite (NaN or inf), at {label} {named}{more}; "
                          "metrics of such scores mean nothing (a model with NaN weights?)")


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    require_finite(probs, what="probabilities")
    p = np.clip(probs.astype(np.float64), EPS, 1 - EPS)
    y = labels.astype(np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    base = float(np.clip(labels.mean(), EPS, 1 - EPS))
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return logloss(labels, probs) / entropy


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    average = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    require_finite(scores)
    y = labels.astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(scores.astype(np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean AUC over groups that have both classes (vectorised)."""
    require_finite(scores)
    y = labels.astype(np.float64)
    s = scores.astype(np.float64)
    _, g = np.unique(groups, return_inverse=True)
    g = g.reshape(-1)
    # ranks within each group, ties averaged: sort by (group, score)
    order = np.lexsort((s, g))
    gs, ss = g[order], s[order]
    new_run = np.ones(len(order), dtype=bool)
    new_run[1:] = (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.concatenate([run_start[1:], [len(order)]])
    # rank within the group = global average rank over the sorted array - (group's first index)
    first_of_group = np.ones(len(order), dtype=bool)
    first_of_group[1:] = gs[1:] != gs[:-1]
    group_start = np.maximum.accumulate(np.where(first_of_group, np.arange(len(order)), 0))
    average = ((run_start + run_end + 1) / 2.0)[run_id] - group_start
    ranks = np.empty(len(order))
    ranks[order] = average
    n = np.bincount(g).astype(np.float64)
    pos = np.bincount(g, weights=y)
    neg = n - pos
    rank_sum = np.bincount(g, weights=ranks * y)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    per_group = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    return float(np.average(per_group, weights=n[valid]))


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    require_finite(probs, what="probabilities")
    total = float(labels.sum())
    return float(probs.sum() / total) if total > 0 else float("nan")


def task_metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
    """All metrics for one task over the impressions whose label is present (NaN = missing); every
    probability must be finite, also where the label is missing (:class:`NonFiniteScores`)."""
    require_finite(probs, what="probabilities")
    present = ~np.isnan(labels)
    y, p = labels[present], probs[present]
    if len(y) == 0:
        return {"count": 0}
    out = {
        "count": int(len(y)),
        "base_rate": float(y.mean()),
        "logloss": logloss(y, p),
        "ne": normalized_entropy(y, p),
        "auc": auc(y, p),
        "calibration": calibration(y, p),
    }
    if groups is not None:
        out["gauc"] = group_auc(y, p, groups[present])
    return out


def json_ready(value):
    """``value`` (nested dicts / lists of numbers) with NaN and ±inf as ``None``, so that
    ``json.dumps`` writes valid JSON (``null`` for an undefined metric, e.g. AUC with one class)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def worse_than_constant(metrics: dict[str, dict], task: str) -> str | None:
    """A warning when ``metrics[task]``'s NE is above 1 (the model predicts worse than its base rate, a
    constant), else None."""
    ne = (metrics.get(task) or {}).get("ne")
    if ne is None or not ne > 1:
        return None
    return (f"warning: {task} NE {ne:.4f} > 1: these scores predict worse than a constant (the base rate); "
            "the model learned nothing usable on this data (compare with a simple rule before using it)")
