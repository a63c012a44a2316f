"""Checks shared by the adapter tests: data location, schema conformance, store + batch.

The datasets are read from ``$EVENTREC_DATA_DIR`` if set, else ``../shared/data`` next to the
project's root; tests that need one skip (with the path in the reason) when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from eventrec.adapters import ADAPTERS, SOURCE_FOLDERS
from eventrec.schema import Schema, builtin_schema_path, load_schema

DATA_DIR = Path(os.environ.get("EVENTREC_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")


def source_dir(name: str) -> Path:
    path = DATA_DIR / SOURCE_FOLDERS[name]
    if not path.is_dir():
        pytest.skip(f"dataset {name!r} not found at {path} (set EVENTREC_DATA_DIR)")
    return path


def schema_of(name: str) -> Schema:
    return load_schema(builtin_schema_path(ADAPTERS[name][1]))


def _kind_ok(kind: str, dtype: pl.DataType) -> bool:
    if kind in ("categorical", "hashed"):
        return dtype.is_integer() or dtype == pl.String
    if kind == "multi_categorical":
        return isinstance(dtype, pl.List) and (dtype.inner.is_integer() or dtype.inner == pl.String)
    if kind == "numeric":
        return dtype.is_numeric()
    if kind == "embedding":
        return isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_float()
    raise AssertionError(kind)


def check_output_against_schema(out_dir: Path, schema: Schema) -> None:
    """Every column the schema names exists in the output with a dtype its kind can read."""
    ev = schema.events
    events = pl.read_parquet(out_dir / ev.path)
    for column in (ev.user_column, ev.timestamp_column, ev.type_column):
        assert column in events.columns, column
    assert events[ev.timestamp_column].dtype.is_integer()
    assert events[ev.user_column].null_count() == 0
    assert events[ev.timestamp_column].null_count() == 0
    for stream in schema.streams:
        rows = events.filter(pl.col(ev.type_column).is_in(stream.event_types))
        assert rows.height > 0, f"stream {stream.name} has no events"
        for attribute in stream.attributes:
            column = attribute.source_column
            assert column in events.columns, f"{stream.name}.{attribute.name}: no column {column!r}"
            assert _kind_ok(attribute.kind, events.schema[column]), (stream.name, attribute.name, events.schema[column])
            assert rows[column].null_count() < rows.height, f"{stream.name}.{attribute.name} is all null"
    imp = schema.impressions
    impressions = pl.read_parquet(out_dir / imp.path)
    for column in (imp.user_column, imp.item_column, imp.timestamp_column, imp.request_column):
        assert column in impressions.columns, column
        assert impressions[column].null_count() == 0, column
    for label in imp.labels:
        assert impressions[label].dtype.is_integer(), label
        assert set(impressions[label].drop_nulls().unique().to_list()) <= {0, 1}
    for attribute in imp.item_attributes + imp.context_attributes:
        column = attribute.source_column
        assert column in impressions.columns, column
        assert _kind_ok(attribute.kind, impressions.schema[column]), (attribute.name, impressions.schema[column])
    for column in imp.extra_columns:
        assert impressions[column].dtype.is_numeric(), column


def examples_beside_impressions(out_dir: Path, schema: Schema, store_dir: Path, columns: list[str]) -> tuple[pl.DataFrame, dict]:
    """Build a store from a prepared output: (its examples' ``columns`` beside the impressions, row for
    row; the manifest). The store keeps the impressions' order (checked)."""
    from eventrec.store.build import build_store

    manifest = build_store(schema, out_dir, store_dir)
    examples = pl.read_parquet(store_dir / "examples.parquet")
    impressions = pl.read_parquet(out_dir / "impressions.parquet")
    assert examples.height == impressions.height
    assert (examples["request_id"] == impressions["request_id"]).all(), "examples keep the impressions' order"
    return pl.concat([examples.select(columns), impressions], how="horizontal"), manifest


def files_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def check_store_and_batch(out_dir: Path, schema: Schema, store_dir: Path, impressions: int) -> None:
    """Build the store from the adapter's output and draw one batch; histories precede the request."""
    from eventrec.data.gather import make_batch
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

    manifest = build_store(schema, out_dir, store_dir)
    assert manifest["drops"] == {}, manifest["drops"]
    assert manifest["counts"]["impressions"] == impressions
    store = EventStore.open(store_dir)
    for split in ("train", "validation", "test"):
        assert len(store.split_indices(split)) > 0, split
    index = store.split_indices("test")[:256]
    batch = make_batch(store, index)
    assert batch.batch_size == len(index)
    assert batch.labels.shape == (len(index), len(schema.impressions.all_labels))  # logged, then derived
    request_times = batch.request_timestamps.numpy()
    # histories are one row per impression, or (newer batches) one per distinct (user, request time)
    # with ``history_index [B]`` pointing each impression at its row
    history_times = request_times
    if getattr(batch, "history_index", None) is not None:
        history_times = batch.history_timestamps.numpy()
        assert (history_times[batch.history_index.numpy()] == request_times).all()
    for stream in schema.streams:
        part = batch.streams[stream.name]
        offsets = part.offsets.numpy()
        assert offsets[0] == 0 and len(offsets) == len(history_times) + 1
        assert (np.diff(offsets) <= stream.max_length).all()
        owner = np.repeat(np.arange(len(history_times)), np.diff(offsets))
        assert (part.timestamps.numpy() < history_times[owner]).all(), f"{stream.name}: history at or after its request"
    assert sum(int(batch.streams[s.name].offsets[-1]) for s in schema.streams) > 0, "no history at all in a test batch"


def raw_trivago() -> pl.DataFrame:
    """The raw trivago file with the hotel id parsed where there is one (``hotel``, null otherwise)."""
    from eventrec.adapters import trivago

    frame = pl.read_parquet(source_dir("trivago") / trivago.FILE)
    return frame.with_columns(
        pl.col("user_id").cast(pl.String),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("reference").cast(pl.Int64, strict=False).alias("hotel"),
    )
