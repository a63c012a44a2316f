"""Rule baselines: the one-line scores a ranking engineer tries before any model.

Every rule scores each impression from the same point-in-time store (higher = more likely positive):

* ``count of <attr> in history``: the user's events strictly before the impression whose id equals
  the candidate's ``attr`` (summed over every stream holding that vocabulary; e.g. "how many times
  did this user view this item before", "... items of this category");
* ``recency of <attr>``: minus the seconds since the last such event (no such event: lowest);
* ``user's <label> rate``: the user's earlier impressions with a known label, smoothed towards the
  training base rate with one pseudo-impression: ``(positives + rate) / (impressions + 1)``. An
  earlier impression counts once its label was known: strictly before for logged labels, its
  attribution window closed (``t + window < T``) for labels derived from later events;
* ``item <label> popularity``: the item's positives among the training impressions (a
  training-period statistic, so it is point-in-time for validation and test impressions);
* ``count of <attr> by all users``: the events of *all* users strictly before the impression whose
  id equals the candidate's ``attr`` (summed over the streams holding that vocabulary; the item
  counters of :mod:`eventrec.data.item_counters`, e.g. "how often was this item bought before").

:func:`rule_metrics` scores the rules on a split (AUC and gAUC, as the models are measured);
:func:`best_rule` picks one per task on the *validation* split, so that the test figure of "the
best rule" is not chosen on test.
"""

from __future__ import annotations

import numpy as np

from eventrec.data.candidate_match import match_pairs, match_statistics
from eventrec.data.item_counters import item_counters_of
from eventrec.evaluation.metrics import auc, group_auc
from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.store.reader import EventStore

NEVER = -1e18  # the recency score of an impression with no matching event


def item_attribute_rules(store: EventStore, index: np.ndarray) -> dict[str, np.ndarray]:
    """Count and recency rules of every candidate attribute shared with some stream ``{name: [B]}``."""
    counts: dict[str, np.ndarray] = {}
    since: dict[str, np.ndarray] = {}
    for pair in match_pairs(store.schema):
        stats = match_statistics(store, index, pair, {"all": None})
        attribute = pair.item_attribute
        counts[attribute] = counts.get(attribute, 0) + stats.counts[:, 0].astype(np.float64)
        earlier = since.get(attribute, np.full(len(index), np.inf))
        since[attribute] = np.fmin(earlier, stats.seconds_since_last)
    out = {}
    for attribute in counts:
        out[f"count of {attribute} in history"] = counts[attribute]
        out[f"recency of {attribute}"] = np.where(np.isfinite(since[attribute]), -since[attribute], NEVER)
    return out


def label_delays(store: EventStore) -> np.ndarray:
    """Seconds after an impression at which each label ``[T]`` is known: 0 for logged labels
    (known before any later impression: strictly-earlier impressions count), the attribution window
    for derived labels."""
    derived = {d.name: d.window_seconds for d in store.schema.impressions.derived_labels}
    return np.array([derived.get(name, 0) for name in store.label_names], dtype=np.int64)


def user_positive_rates(store: EventStore, index: np.ndarray) -> np.ndarray:
    """``[B, T]``: each example's user's smoothed positive rate over earlier impressions whose label
    was known at the example's time (see the module)."""
    train = store.split_indices("train")
    delays = label_delays(store)
    out = np.zeros((len(index), len(store.label_names)))
    rows, times = store.user_rows, store.timestamps
    num_users = int(rows.max()) + 1 if len(rows) else 0
    for task, delay in enumerate(delays):
        labels = store.labels[:, task]
        known = np.flatnonzero(~np.isnan(labels))
        base = float(np.nanmean(store.labels[train, task])) if len(train) else 0.5
        # per user, the labelled impressions sorted by the time their label is known (a SegmentedTimeIndex over them)
        order = known[np.lexsort((times[known] + delay, rows[known]))]
        user_offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[order], minlength=num_users), out=user_offsets[1:])
        positives = np.concatenate([[0.0], np.cumsum(labels[order])])
        user_start = user_offsets[rows[index]]
        # labels known strictly before the example's time (for delay 0: impressions strictly earlier)
        known_before = SegmentedTimeIndex(user_offsets, times[order] + delay).position_before(rows[index], times[index])
        number = known_before - user_start
        hits = positives[known_before] - positives[user_start]
        out[:, task] = (hits + base) / (number + 1)
    return out


def item_popularity(store: EventStore, index: np.ndarray) -> np.ndarray:
    """``[B, T]``: positives of each example's item among the training impressions."""
    train = store.split_indices("train")
    out = np.zeros((len(index), len(store.label_names)))
    items = store.item_ids
    catalogue, inverse = np.unique(items, return_inverse=True)
    inverse = inverse.reshape(-1)
    for task in range(len(store.label_names)):
        labels = np.nan_to_num(store.labels[train, task], nan=0.0)
        positives = np.bincount(inverse[train], weights=labels, minlength=len(catalogue))
        out[:, task] = positives[inverse[index]]
    return out


def rule_scores(store: EventStore, index: np.ndarray) -> dict[str, np.ndarray]:
    """Every rule's scores ``{name: [B, T]}`` for the examples ``index [B]`` (count and recency
    rules give the same score to every task)."""
    index = np.asarray(index, dtype=np.int64)
    tasks = len(store.label_names)
    out = {name: np.repeat(score[:, None], tasks, axis=1) for name, score in item_attribute_rules(store, index).items()}
    out["user's earlier positive rate"] = user_positive_rates(store, index)
    out["item popularity in training"] = item_popularity(store, index)
    for name, score in item_counter_rules(store, index).items():
        out[name] = np.repeat(score[:, None], tasks, axis=1)
    return out


def item_counter_rules(store: EventStore, index: np.ndarray) -> dict[str, np.ndarray]:
    """``{"count of <attr> by all users": [B]}``: the whole-history item counters per candidate attribute."""
    counters = item_counters_of(store)
    counts = counters.counts_of_examples(store, index, ())
    out: dict[str, np.ndarray] = {}
    for column, pair in enumerate(counters.pairs):
        name = f"count of {pair.item_attribute} by all users"
        out[name] = out.get(name, 0) + counts[:, column].astype(np.float64)
    return out


def rule_metrics(store: EventStore, split: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{rule: {task: {auc, gauc, count}}}`` on a split (gAUC over users, as :func:`metrics_by_task`)."""
    index = store.split_indices(split)
    groups = store.user_rows[index]
    out: dict = {}
    for name, scores in rule_scores(store, index).items():
        out[name] = {}
        for task, label in enumerate(store.label_names):
            y = store.labels[index, task]
            present = ~np.isnan(y)
            out[name][label] = {"count": int(present.sum()), "auc": auc(y[present], scores[present, task]),
                                "gauc": group_auc(y[present], scores[present, task], groups[present])}
    return out


def best_rule(validation: dict, task: str) -> str:
    """The rule with the highest validation AUC on ``task`` (from :func:`rule_metrics` of ``validation``)."""
    def key(name: str) -> float:
        value = validation[name][task]["auc"]
        return -np.inf if np.isnan(value) else value

    return max(validation, key=key)


def rule_report(store: EventStore, split: str) -> dict:
    """``{"metrics": rule_metrics(split), "best_on_validation": {task: rule}}``: what ``evaluate`` prints."""
    validation = rule_metrics(store, "validation")
    metrics = validation if split == "validation" else rule_metrics(store, split)
    return {"metrics": metrics, "best_on_validation": {task: best_rule(validation, task) for task in store.label_names}}
