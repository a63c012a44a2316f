"""The encoded columns of ``users.parquet`` and ``examples.parquet`` for one set of users.

Both builders call these functions: the in-memory reference (:mod:`eventrec.store.build_in_memory`)
once over every user, the partitioned build (:mod:`eventrec.store.partition`) once per range of
users. A user's list columns and an impression's cuts depend on that user's rows only, so the two
give the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from eventrec.schema import Schema, Stream
from eventrec.store.encoding import AttributeEncoder, BuildReport
from eventrec.store.layout import TIME, USER
from eventrec.store.load import Progress
from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.store.raw_logs import ROW
from eventrec.store.sampling_values import EVENT_TYPE, sampling_values, value_column, value_sampling


def arrow_list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    """A large-list array of ``values`` split at ``offsets [rows+1]``."""
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values)


def arrow_values(encoded: dict[str, np.ndarray]) -> pa.Array:
    """One encoded attribute (``values`` and maybe ``offsets``) as an Arrow array."""
    values = encoded["values"]
    if "offsets" in encoded:
        return arrow_list(encoded["offsets"], pa.array(values))
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def encode_stream(stream: Stream, source: Path | str, df: pl.DataFrame, user_ids: pl.Series, encoder: AttributeEncoder,
                  report: BuildReport, user_columns: dict[str, pa.Array]) -> SegmentedTimeIndex:
    """Add the stream's list columns to ``user_columns``; return its time index.

    ``df`` is sorted by (user, time, file row) and ``user_ids`` is sorted, so each user's events are
    the segment ``[offsets[u], offsets[u + 1])``.
    """
    user_offsets = np.empty(len(user_ids) + 1, dtype=np.int64)
    user_offsets[:-1] = df[USER].search_sorted(user_ids, side="left").to_numpy()
    user_offsets[-1] = df.height
    times = df[TIME].to_numpy().astype(np.int64, copy=False)
    user_columns[f"{stream.name}__timestamp"] = arrow_list(user_offsets, pa.array(times))
    sampling = value_sampling(stream)
    if sampling is not None:  # per-event values of a value policy (store/sampling_values.py), from the raw rows
        numbers = df[stream.attribute(sampling.attribute).source_column] if sampling.attribute else None
        values = sampling_values(stream, df.height, df[EVENT_TYPE] if EVENT_TYPE in df.columns else None, numbers)
        user_columns[value_column(stream.name)] = arrow_list(user_offsets, pa.array(values))
    uses: dict[str, int] = {}
    for attribute in stream.attributes:
        uses[attribute.source_column] = uses.get(attribute.source_column, 0) + 1
    for attribute in stream.attributes:
        encoded = encoder.encode(f"streams.{stream.name}", attribute, df, report, source)
        if encoded:
            user_columns[f"{stream.name}__{attribute.name}"] = arrow_list(user_offsets, arrow_values(encoded))
        del encoded
        uses[attribute.source_column] -= 1
        if not uses[attribute.source_column] and attribute.source_column in df.columns and attribute.source_column not in (USER, TIME, ROW):
            df = df.drop(attribute.source_column)  # its memory is freed once the caller lets go too
    report.counts[f"streams.{stream.name}.events"] = int(len(times))
    report.counts[f"streams.{stream.name}.users_with_events"] = int((np.diff(user_offsets) > 0).sum())
    return SegmentedTimeIndex(user_offsets, times)


def stream_layout(stream: Stream) -> dict[str, Any]:
    """The stream's entry in the manifest's ``streams``."""
    return {
        "max_length": stream.max_length,
        "sampling": stream.sampling if isinstance(stream.sampling, str) else stream.sampling.model_dump(mode="json"),
        "attributes": {attribute.name: attribute.kind for attribute in stream.attributes},
    }


def encode_streams(schema: Schema, streams: dict[str, tuple[Path | str, pl.DataFrame]], users: pl.DataFrame, encoder: AttributeEncoder,
                   report: BuildReport, say: Progress) -> tuple[dict[str, pa.Array], dict[str, SegmentedTimeIndex]]:
    """Per-stream list columns of ``users.parquet`` (sorted by user row, time, file row) and each
    stream's time index for the cuts. ``streams``: stream name → (source path for errors, rows sorted
    by (user, time, file row)); emptied as it goes: each raw column is freed once encoded."""
    user_columns: dict[str, pa.Array] = {"user_id": users[USER].to_arrow()}
    indexes: dict[str, SegmentedTimeIndex] = {}
    for stream in schema.streams:
        say(f"encoding stream {stream.name}")
        # popped, not held here: encode_stream frees each raw column once it is encoded
        indexes[stream.name] = encode_stream(stream, *streams.pop(stream.name), users[USER], encoder, report, user_columns)
    return user_columns, indexes


def query_order(rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A permutation sorting queries by (user row, time): binary searches of sorted queries
    touch the events' keys in order, several times faster than random ones."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    t_min, span = int(times.min()), int(times.max()) - int(times.min()) + 1
    if (int(rows.max()) + 1) * span < 2**62:  # one int64 key: faster to sort than two columns
        return pl.Series(rows * span + (times - t_min)).arg_sort().to_numpy()
    return pl.DataFrame({"r": rows, "t": times}).select(pl.arg_sort_by(["r", "t"])).to_series().to_numpy()


def example_columns(schema: Schema, impressions: pl.DataFrame, users: pl.DataFrame, indexes: dict[str, SegmentedTimeIndex],
                    encoder: AttributeEncoder, report: BuildReport, source: Path | str, split: np.ndarray,
                    user_row_offset: int = 0) -> dict[str, pa.Array]:
    """The columns of ``examples.parquet``, one row per impression (in ``impressions``' order), the
    labels from later events excepted (:mod:`eventrec.store.later_labels`). ``users`` are the sorted
    users whose rows start at ``user_row_offset`` in ``users.parquet``."""
    imp = schema.impressions
    user_rows = users[USER].search_sorted(impressions[USER], side="left").to_numpy().astype(np.int64)
    times = impressions[TIME].to_numpy().astype(np.int64)
    order = query_order(user_rows, times)
    columns: dict[str, pa.Array] = {
        "user_row": pa.array(user_rows + user_row_offset),
        "timestamp": pa.array(times),
        "split": pa.array(split),
    }
    if imp.request_column:
        columns["request_id"] = impressions[imp.request_column].to_arrow()
    columns["item_id"] = impressions[imp.item_column].to_arrow() if imp.item_column in impressions.columns else pa.nulls(len(times))
    for stream in schema.streams:
        columns[f"cut__{stream.name}"] = pa.array(indexes[stream.name].count_before(user_rows, times, order=order))
    for group, attributes in (("item", imp.item_attributes), ("context", imp.context_attributes)):
        for attribute in attributes:
            encoded = encoder.encode("impressions", attribute, impressions, report, source)
            if encoded:
                columns[f"{group}__{attribute.name}"] = arrow_values(encoded)
    for label in imp.labels:
        values = impressions[label].cast(pl.Float32).fill_null(np.nan).to_numpy()
        columns[f"label__{label}"] = pa.array(values)
        report.counts[f"labels.{label}.missing"] = int(np.isnan(values).sum())
    for column in imp.extra_columns:
        columns[f"extra__{column}"] = impressions[column].cast(pl.Float64).to_arrow()
    return columns
