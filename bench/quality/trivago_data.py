"""trivago quality benchmark data: one frame per split for the peers, and the recency rule.

Every model of the benchmark sees the same examples, in the same order: the eventrec store's
examples (one per clickout × impressed hotel, sorted by time then file row) and its time split
(80 / 10 / 10 of the clickouts' impressions by time, ``eventrec/schemas/trivago.yaml``).

For the peers (FuxiCTR), each example carries the raw impression features (``item_id``,
``position``, ``price``, ``price_rank``, ``platform``, ``device``, ``city``) and the user's
history as two aligned sequences, most recent last, at most ``HISTORY_LENGTH`` long: the hotel ids
and action types of the user's hotel events (image / info / rating / deals / search-for-item and
earlier clickouts) **strictly before** the clickout's second (the same equal-timestamp rule as the
store). The peers get no hand-made feature: neither count nor recency of the candidate in the history.

The recency rule scores a candidate by how recently the user touched that hotel before the
clickout: ``1 / (1 + seconds since the last such event)``, 0 for hotels never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from eventrec.store.reader import EventStore

HISTORY_LENGTH = 64
SPLITS = ("train", "validation", "test")
ITEM_EVENT_TYPES = [
    "interaction_item_image", "interaction_item_info", "interaction_item_rating",
    "interaction_item_deals", "search_for_item", "clickout_item",
]  # fmt: skip


def examples_in_store_order(store: EventStore, logs: Path) -> pl.DataFrame:
    """The adapter's impressions in the store's example order, with ``split`` and ``example``.

    Checks that request ids, item ids and labels line up with the store row by row.
    """
    impressions = pl.read_parquet(logs / "impressions.parquet").with_row_index("_file_row")
    ordered = impressions.sort(["timestamp", "_file_row"], maintain_order=True).drop("_file_row")
    if ordered.height != store.num_examples:
        raise RuntimeError(f"{ordered.height} impressions in {logs} but {store.num_examples} examples in the store")
    if not (np.array_equal(ordered["request_id"].to_numpy(), store.request_ids.astype(np.int64))
            and np.array_equal(ordered["item_id"].to_numpy(), store.item_ids.astype(np.int64))
            and np.array_equal(ordered["click"].to_numpy().astype(np.float32), store.labels[:, 0])):
        raise RuntimeError("the adapter's impressions and the store's examples are not in the same order")
    split_names = np.array(SPLITS)[store.splits]
    return ordered.with_columns(pl.Series("split", split_names), pl.int_range(pl.len(), dtype=pl.Int64).alias("example"))


def item_events(logs: Path) -> pl.DataFrame:
    """The users' hotel events: ``user_id, timestamp, step, item_id, action``."""
    events = pl.read_parquet(logs / "events.parquet", columns=["user_id", "timestamp", "step", "event_type", "item_id"])
    return (
        events.filter(pl.col("event_type").is_in(ITEM_EVENT_TYPES) & pl.col("item_id").is_not_null())
        .rename({"event_type": "action"})
        .sort(["user_id", "timestamp", "step"], maintain_order=True)
    )


def histories(examples: pl.DataFrame, events: pl.DataFrame, length: int = HISTORY_LENGTH) -> pl.DataFrame:
    """Per request: ``hist_item_id`` and ``hist_action`` (lists, most recent last, ``t < request time``)."""
    requests = examples.select("request_id", "user_id", pl.col("timestamp").alias("request_time")).unique("request_id")
    before = (
        requests.join(events, on="user_id", how="inner")
        .filter(pl.col("timestamp") < pl.col("request_time"))
        .sort(["request_id", "timestamp", "step"])
        .group_by("request_id", maintain_order=True)
        .agg(pl.col("item_id").tail(length).alias("hist_item_id"), pl.col("action").tail(length).alias("hist_action"))
    )
    empty_ids, empty_actions = pl.lit([], dtype=pl.List(pl.Int64)), pl.lit([], dtype=pl.List(pl.String))
    return requests.select("request_id").join(before, on="request_id", how="left").with_columns(
        pl.col("hist_item_id").fill_null(empty_ids), pl.col("hist_action").fill_null(empty_actions)
    )


def recency_scores(examples: pl.DataFrame, events: pl.DataFrame) -> np.ndarray:
    """``[n]`` score per example: ``1 / (1 + seconds since the user last touched the hotel)``, else 0."""
    last = (
        examples.select("example", "user_id", "item_id", pl.col("timestamp").alias("request_time"))
        .join(events.select("user_id", "item_id", "timestamp"), on=["user_id", "item_id"], how="inner")
        .filter(pl.col("timestamp") < pl.col("request_time"))
        .group_by("example")
        .agg((pl.col("request_time") - pl.col("timestamp").max()).first().alias("gap"))
    )
    scores = np.zeros(examples.height)
    scores[last["example"].to_numpy()] = 1.0 / (1.0 + last["gap"].to_numpy().astype(np.float64))
    return scores


def recency_then_position(recency: np.ndarray, position: np.ndarray) -> np.ndarray:
    """The strongest rule's ``[n]`` scores: :func:`recency_scores`, ties (hotels never touched
    included) broken by display position, the first listed first."""
    return recency + 1e-9 / (1.0 + position)


def export_for_peers(store: EventStore, logs: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``{train,validation,test}.parquet`` for the peers (skipped if present); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: out_dir / f"{split}.parquet" for split in SPLITS}
    if all(p.exists() for p in paths.values()):
        return paths
    examples = examples_in_store_order(store, logs)
    frame = examples.join(histories(examples, item_events(logs)), on="request_id", how="left").sort("example")
    columns = ["example", "request_id", "user_id", "item_id", "position", "price", "price_rank",
               "platform", "device", "city", "hist_item_id", "hist_action", "click"]  # fmt: skip
    for split, path in paths.items():
        tmp = path.with_suffix(".tmp")
        frame.filter(pl.col("split") == split).select(columns).write_parquet(tmp)
        tmp.replace(path)
    return paths
