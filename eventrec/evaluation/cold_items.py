"""Cold items: impressions whose item never appears in the training period, and metrics on them.

An example's item is **cold** when no training-split impression has the same raw item id
(``examples.item_id``) and no event before the store's ``train_end`` carries its encoded id in an
attribute of the item id's vocabulary (e.g. ``movie_id`` in the rating events). Event ids are
compared encoded (the store keeps no raw event ids): an unknown categorical id (out of vocabulary, 1)
or a missing one (0) counts as no evidence; a hashed id shared with a training item by a hash
collision counts as seen (so "cold" errs on the side of fewer items).
"""

from __future__ import annotations

import numpy as np

from eventrec.evaluation.metrics import task_metrics
from eventrec.store.reader import EventStore


def item_id_attribute(store: EventStore) -> str | None:
    """The impressions' item attribute read from the item column (its id), or None."""
    imp = store.schema.impressions
    return next((a.name for a in imp.item_attributes if a.kind in ("categorical", "hashed") and a.source_column == imp.item_column), None)


def cold_item_mask(store: EventStore, indices: np.ndarray) -> np.ndarray:
    """``[n]`` bool: whether the item of each example of ``indices`` is cold (see the module doc)."""
    indices = np.asarray(indices, dtype=np.int64)
    train = store.split_indices("train")
    warm_raw = set(store.item_ids[train].tolist())
    cold = np.array([item not in warm_raw for item in store.item_ids[indices].tolist()], dtype=bool)
    name = item_id_attribute(store)
    if name is None:
        return cold
    attribute = store.schema.impressions.item_attribute(name)
    vocabulary, first_known = attribute.vocabulary_name, (1 if attribute.kind == "hashed" else 2)
    train_end = int(store.manifest["splits"]["train_end"])
    seen: list[np.ndarray] = []
    for stream in store.schema.streams:
        data = store.streams[stream.name]
        for a in stream.attributes:
            if a.kind in ("categorical", "hashed") and a.vocabulary_name == vocabulary:
                ids = np.asarray(data.attributes[a.name])[data.timestamps < train_end]
                seen.append(ids[ids >= first_known])
    if seen:
        item_ids = np.asarray(store.item[name])[indices]
        cold &= ~np.isin(item_ids, np.concatenate(seen))
    return cold


def cold_item_metrics(store: EventStore, indices: np.ndarray, probs: np.ndarray, mask: np.ndarray) -> dict[str, dict]:
    """``{task: metrics}`` (NE, AUC, gAUC, logloss, calibration) on the examples ``indices[mask]``,
    with ``positives`` beside the labelled ``count``; ``probs [n, T]`` are the predictions of ``indices``."""
    out = {}
    for t, name in enumerate(store.label_names):
        labels = store.labels[indices[mask], t]
        metrics = task_metrics(labels, probs[mask, t], store.user_rows[indices[mask]])
        out[name] = {**metrics, "positives": int(np.nansum(labels))}
    return out
