"""Statistics of a built store: users, events per stream, history-length percentiles, label rates."""

from __future__ import annotations

import numpy as np

from eventrec.store.reader import EventStore
from eventrec.store.layout import SPLIT_NAMES

PERCENTILES = (50, 90, 99, 100)


def store_statistics(store: EventStore) -> dict:
    """A JSON-able summary; history lengths are per impression (events strictly before it)."""
    out: dict = {
        "name": store.schema.name,
        "users": store.num_users,
        "impressions": store.num_examples,
        "splits": {name: int((store.splits == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        "split_boundaries": store.manifest["splits"],
        "streams": {},
        "labels": {},
        "drops": store.manifest["drops"],
        "nulls_encoded_as_missing": store.manifest["nulls_encoded_as_missing"],
    }
    for name, data in store.streams.items():
        per_user = np.diff(data.user_offsets)
        history = store.cuts[name]
        truncated = np.minimum(history, data.max_length)
        out["streams"][name] = {
            "events": data.num_events,
            "users_with_events": int((per_user > 0).sum()),
            "max_length": data.max_length,
            "history_length_percentiles": {f"p{p}": float(np.percentile(history, p)) for p in PERCENTILES} if len(history) else {},
            "impressions_with_empty_history": int((history == 0).sum()),
            "impressions_truncated": int((history > truncated).sum()),
        }
    for i, label in enumerate(store.label_names):
        values = store.labels[:, i]
        known = ~np.isnan(values)
        out["labels"][label] = {
            "rate": float(values[known].mean()) if known.any() else None,
            "missing": int((~known).sum()),
            "rate_by_split": {
                name: float(values[known & (store.splits == s)].mean()) if (known & (store.splits == s)).any() else None
                for s, name in enumerate(SPLIT_NAMES)
            },
        }
    return out


def format_statistics(stats: dict) -> str:
    """A human-readable table of :func:`store_statistics`."""
    lines = [
        f"store {stats['name']}: {stats['users']:,} users, {stats['impressions']:,} impressions "
        f"(train {stats['splits']['train']:,} / validation {stats['splits']['validation']:,} / test {stats['splits']['test']:,})",
        "",
        f"{'stream':<20}{'events':>12}{'users':>10}{'max_len':>9}  history length p50/p90/p99/max   empty  truncated",
    ]
    for name, s in stats["streams"].items():
        p = s["history_length_percentiles"]
        percentiles = "/".join(f"{p[k]:.0f}" for k in ("p50", "p90", "p99", "p100")) if p else "-"
        lines.append(
            f"{name:<20}{s['events']:>12,}{s['users_with_events']:>10,}{s['max_length']:>9}  {percentiles:<32}"
            f"{s['impressions_with_empty_history']:>6,}{s['impressions_truncated']:>11,}"
        )
    lines.append("")
    for label, s in stats["labels"].items():
        rate = "n/a" if s["rate"] is None else f"{s['rate']:.4f}"
        by_split = ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in s["rate_by_split"].items())
        lines.append(f"label {label}: rate {rate} ({by_split}); missing {s['missing']:,}")
    if stats["drops"]:
        lines.append("dropped (counted): " + ", ".join(f"{k} {v:,}" for k, v in stats["drops"].items()))
    if stats["nulls_encoded_as_missing"]:
        lines.append("nulls encoded as missing: " + ", ".join(f"{k} {v:,}" for k, v in stats["nulls_encoded_as_missing"].items()))
    return "\n".join(lines)
