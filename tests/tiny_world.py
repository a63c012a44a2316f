"""A tiny hand-written raw-log world (Parquet files + schema) for fast store and batch tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

SCHEMA = {
    "name": "tiny",
    "events": {"path": "events.parquet", "user_column": "user_id", "timestamp_column": "timestamp", "type_column": "event_type"},
    "streams": [
        {
            "name": "click",
            "event_types": ["click"],
            "max_length": 3,
            "attributes": [
                {"name": "ad_id", "kind": "hashed", "buckets": 97, "vocabulary": "ad_id"},
                {"name": "category", "kind": "categorical", "vocabulary": "category"},
                {"name": "price", "kind": "numeric", "transform": "log1p"},
                {"name": "content", "kind": "embedding", "dim": 2, "table": "ad_content", "key": "ad_id"},
            ],
        },
        {
            "name": "view",
            "event_types": ["view"],
            "max_length": 4,
            "attributes": [
                {"name": "category", "kind": "categorical", "vocabulary": "category"},
                {"name": "topics", "kind": "multi_categorical"},
            ],
        },
    ],
    "impressions": {
        "path": "impressions.parquet",
        "user_column": "user_id",
        "item_column": "ad_id",
        "timestamp_column": "timestamp",
        "request_column": "request_id",
        "labels": ["click", "conversion"],
        "item_attributes": [
            {"name": "ad_id", "kind": "hashed", "buckets": 97, "vocabulary": "ad_id"},
            {"name": "category", "kind": "categorical", "vocabulary": "category"},
            {"name": "content", "kind": "embedding", "dim": 2, "table": "ad_content", "key": "ad_id"},
        ],
        "context_attributes": [{"name": "placement", "kind": "categorical"}],
    },
    "content_tables": [{"name": "ad_content", "path": "ad_content.parquet", "key_column": "ad_id", "vector_column": "embedding", "dim": 2}],
    "splits": {"train_end": 100, "validation_end": 200},
}

EVENTS = [
    # user_id, event_type, timestamp, ad_id, category, price, topics
    (1, "click", 10, 5, "shoes", 10.0, None),
    (1, "view", 12, None, "shoes", None, ["a", "b"]),
    (1, "click", 50, 6, "hats", 20.0, None),
    (1, "click", 50, 7, "hats", 30.0, None),   # same second as the previous event
    (1, "view", 120, None, "hats", None, ["b"]),
    (1, "click", 150, 8, "bags", None, None),  # null price
    (1, "click", 210, 99, "new", 5.0, None),   # category first seen after training
    (2, "view", 5, None, "bags", None, []),
    (2, "click", 300, 5, "shoes", 10.0, None),
    (4, "ignored_type", 1, None, None, None, None),
]

IMPRESSIONS = [
    # request_id, user_id, ad_id, timestamp, category, placement, click, conversion
    (1, 1, 6, 50, "hats", "feed", 1, 0),     # events at t=50 are excluded (equal timestamp)
    (2, 1, 9, 90, "hats", "feed", 0, None),
    (3, 2, 5, 95, "shoes", "story", 0, 0),
    (4, 1, 8, 150, "bags", "feed", 1, 1),
    (5, 3, 5, 160, "shoes", "feed", 0, None),  # user without events
    (6, 1, 99, 250, "new", "side", 0, 0),
    (7, 2, 5, 400, "shoes", "story", 1, 0),
]


def write_tiny_world(directory: Path) -> Path:
    """Write the tiny world's logs and schema into ``directory``; returns the schema path."""
    directory.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        EVENTS,
        schema={"user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "ad_id": pl.Int64,
                "category": pl.String, "price": pl.Float64, "topics": pl.List(pl.String)},
        orient="row",
    ).write_parquet(directory / "events.parquet")
    pl.DataFrame(
        IMPRESSIONS,
        schema={"request_id": pl.Int64, "user_id": pl.Int64, "ad_id": pl.Int64, "timestamp": pl.Int64,
                "category": pl.String, "placement": pl.String, "click": pl.Int8, "conversion": pl.Int8},
        orient="row",
    ).write_parquet(directory / "impressions.parquet")
    pl.DataFrame(
        {"ad_id": [5, 6, 7, 8, 9], "embedding": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]},
        schema={"ad_id": pl.Int64, "embedding": pl.List(pl.Float32)},
    ).write_parquet(directory / "ad_content.parquet")
    path = directory / "schema.yaml"
    path.write_text(yaml.safe_dump(SCHEMA, sort_keys=False))
    return path
