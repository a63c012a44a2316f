"""Build the people-centric event store and the point-in-time examples from raw logs.

Output directory (written to a temporary sibling, then renamed into place)::

    manifest.json       schema, resolved split boundaries, counts, drops, column layout
    vocabularies.json   per vocabulary: its values (training period only) or its hash buckets
    statistics.json     per numeric attribute: training-period mean/std after the transform
    users.parquet       one row per user: ``user_id`` and, per stream, list columns sorted by time:
                        ``{stream}__timestamp`` and ``{stream}__{attribute}`` (encoded); with a value
                        sampling policy also ``{stream}___sampling_value`` (store/sampling_values.py)
    examples.parquet    one row per impression, time-ordered: ``user_row``, ``timestamp``,
                        ``split`` (0 train, 1 validation, 2 test), ``cut__{stream}`` (number of the
                        user's events strictly before the impression), encoded item and context
                        attributes, labels (float, NaN when missing; derived labels from later
                        events last, see ``store/later_labels.py``), extra columns
    content__{table}__{vocabulary}.npy   side-table vectors aligned with the key's encoded ids

The same input gives byte-identical output. See ``docs/store.md``.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.schema import Schema, Stream, boundary_to_seconds
from eventrec.store.content_tables import write_content_tables
from eventrec.store.encoding import AttributeEncoder, BuildReport
from eventrec.store.later_labels import later_label_columns
from eventrec.store.load import Progress, read_logs
from eventrec.store.raw_logs import ROW, DataError, RawTable
from eventrec.store.sampling_values import EVENT_TYPE, sampling_values, value_column, value_sampling
from eventrec.store.layout import (FORMAT_VERSION, SPLIT_NAMES, TIME, USER, check_replaceable, recover_interrupted_swap, remove_stale_temporaries,
                                   schema_fingerprint, swap_into_place, write_json, write_parquet)



def _resolve_splits(schema: Schema, impression_times: np.ndarray) -> tuple[int, int]:
    splits = schema.splits
    if splits.train_end is not None:
        train_end, validation_end = boundary_to_seconds(splits.train_end), boundary_to_seconds(splits.validation_end)
        if validation_end < train_end:
            raise DataError(f"schema splits: validation_end ({validation_end}) is before train_end ({train_end})")
        return train_end, validation_end
    ordered = np.sort(impression_times)
    n = len(ordered)
    train_end = int(ordered[min(n - 1, int(n * splits.train_fraction))])
    validation_end = int(ordered[min(n - 1, int(n * (splits.train_fraction + splits.validation_fraction)))])
    return train_end, validation_end


def _check_splits(schema: Schema, split: np.ndarray, boundaries: tuple[int, int], allow_empty_splits: bool) -> None:
    """Refuse a split without impressions when the schema's boundaries are timestamps beyond the data:
    training would have nothing to validate or test on. Fraction splits are resolved inside the data
    and are empty only with a handful of impressions (the next-item benchmarks then assign their own
    splits after the build): allowed. ``allow_empty_splits`` is the way out for time boundaries."""
    sizes = np.bincount(split, minlength=len(SPLIT_NAMES))
    empty = [name for name, size in zip(SPLIT_NAMES, sizes) if size == 0]
    if empty and not allow_empty_splits and schema.splits.train_end is not None:
        raise DataError(
            f"schema splits ({schema.splits.model_dump(exclude_none=True)}; resolved train_end={boundaries[0]}, "
            f"validation_end={boundaries[1]}): no impression in the {' and '.join(empty)} split(s) "
            f"({', '.join(f'{n} {c}' for n, c in zip(SPLIT_NAMES, sizes.tolist()))}); move the boundaries inside the data "
            "or pass allow_empty_splits (--allow-empty-splits)"
        )


def _arrow_list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values)


def _arrow_values(encoded: dict[str, np.ndarray]) -> pa.Array:
    values = encoded["values"]
    if "offsets" in encoded:
        return _arrow_list(encoded["offsets"], pa.array(values))
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def _encode_stream(stream: Stream, table: RawTable, df: pl.DataFrame, user_ids: pl.Series, encoder: "AttributeEncoder",
                   report: BuildReport, user_columns: dict[str, pa.Array]) -> SegmentedTimeIndex:
    """Add the stream's list columns to ``user_columns``; return its time index.

    ``df`` is sorted by (user, time, file row) and ``user_ids`` is sorted, so each user's events are
    the segment ``[offsets[u], offsets[u + 1])``.
    """
    user_offsets = np.empty(len(user_ids) + 1, dtype=np.int64)
    user_offsets[:-1] = df[USER].search_sorted(user_ids, side="left").to_numpy()
    user_offsets[-1] = df.height
    times = df[TIME].to_numpy().astype(np.int64, copy=False)
    user_columns[f"{stream.name}__timestamp"] = _arrow_list(user_offsets, pa.array(times))
    sampling = value_sampling(stream)
    if sampling is not None:  # per-event values of a value policy (store/sampling_values.py), from the raw rows
        numbers = df[next(a.source_column for a in stream.attributes if a.name == sampling.attribute)] if sampling.attribute else None
        values = sampling_values(stream, df.height, df[EVENT_TYPE] if EVENT_TYPE in df.columns else None, numbers)
        user_columns[value_column(stream.name)] = _arrow_list(user_offsets, pa.array(values))
    uses: dict[str, int] = {}
    for attribute in stream.attributes:
        uses[attribute.source_column] = uses.get(attribute.source_column, 0) + 1
    for attribute in stream.attributes:
        encoded = encoder.encode(f"streams.{stream.name}", attribute, df, report, table.path)
        if encoded:
            user_columns[f"{stream.name}__{attribute.name}"] = _arrow_list(user_offsets, _arrow_values(encoded))
        del encoded
        uses[attribute.source_column] -= 1
        if not uses[attribute.source_column] and attribute.source_column in df.columns and attribute.source_column not in (USER, TIME, ROW):
            df = df.drop(attribute.source_column)  # its memory is freed once the caller lets go too
    report.counts[f"streams.{stream.name}.events"] = int(len(times))
    report.counts[f"streams.{stream.name}.users_with_events"] = int((np.diff(user_offsets) > 0).sum())
    return SegmentedTimeIndex(user_offsets, times)


def _example_columns(schema: Schema, impressions: pl.DataFrame, users: pl.DataFrame, indexes: dict[str, SegmentedTimeIndex],
                     encoder: "AttributeEncoder", report: BuildReport, imp_table: RawTable, split: np.ndarray) -> dict[str, pa.Array]:
    """The columns of ``examples.parquet``, one row per impression (in ``impressions``' order)."""
    imp = schema.impressions
    user_rows = users[USER].search_sorted(impressions[USER], side="left").to_numpy().astype(np.int64)
    times = impressions[TIME].to_numpy().astype(np.int64)
    columns: dict[str, pa.Array] = {
        "user_row": pa.array(user_rows),
        "timestamp": pa.array(times),
        "split": pa.array(split),
    }
    if imp.request_column:
        columns["request_id"] = impressions[imp.request_column].to_arrow()
    columns["item_id"] = impressions[imp.item_column].to_arrow() if imp.item_column in impressions.columns else pa.nulls(len(times))
    order = _query_order(user_rows, times)
    for stream in schema.streams:
        columns[f"cut__{stream.name}"] = pa.array(indexes[stream.name].count_before(user_rows, times, order=order))
    for group, attributes in (("item", imp.item_attributes), ("context", imp.context_attributes)):
        for attribute in attributes:
            encoded = encoder.encode("impressions", attribute, impressions, report, imp_table.path)
            if encoded:
                columns[f"{group}__{attribute.name}"] = _arrow_values(encoded)
    for label in imp.labels:
        values = impressions[label].cast(pl.Float32).fill_null(np.nan).to_numpy()
        columns[f"label__{label}"] = pa.array(values)
        report.counts[f"labels.{label}.missing"] = int(np.isnan(values).sum())
    for column in imp.extra_columns:
        columns[f"extra__{column}"] = impressions[column].cast(pl.Float64).to_arrow()
    return columns


def _query_order(rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A permutation sorting queries by (user row, time): binary searches of sorted queries
    touch the events' keys in order, several times faster than random ones."""
    if len(times) == 0:
        return np.zeros(0, dtype=np.int64)
    t_min, span = int(times.min()), int(times.max()) - int(times.min()) + 1
    if (int(rows.max()) + 1) * span < 2**62:  # one int64 key: faster to sort than two columns
        return pl.Series(rows * span + (times - t_min)).arg_sort().to_numpy()
    return pl.DataFrame({"r": rows, "t": times}).select(pl.arg_sort_by(["r", "t"])).to_series().to_numpy()


def _encode_streams(schema: Schema, streams: dict[str, tuple[RawTable, pl.DataFrame]], users: pl.DataFrame, encoder: AttributeEncoder,
                    report: BuildReport, say: Progress) -> tuple[dict[str, pa.Array], dict[str, SegmentedTimeIndex], dict[str, Any]]:
    """Per-stream list columns of ``users.parquet`` (sorted by user row, time, file row), each stream's
    time index for the cuts, and its layout for the manifest. Empties ``streams`` as it goes: each raw
    column is freed once encoded."""
    user_columns: dict[str, pa.Array] = {"user_id": users[USER].to_arrow()}
    indexes: dict[str, SegmentedTimeIndex] = {}
    stream_layout: dict[str, Any] = {}
    for stream in schema.streams:
        say(f"encoding stream {stream.name}")
        # popped, not held here: _encode_stream frees each raw column once it is encoded
        indexes[stream.name] = _encode_stream(stream, *streams.pop(stream.name), users[USER], encoder, report, user_columns)
        stream_layout[stream.name] = {
            "max_length": stream.max_length,
            "sampling": stream.sampling if isinstance(stream.sampling, str) else stream.sampling.model_dump(mode="json"),
            "attributes": {attribute.name: attribute.kind for attribute in stream.attributes},
        }
    return user_columns, indexes, stream_layout


def _write_metadata(schema: Schema, encoder: AttributeEncoder, report: BuildReport, splits: tuple[int, int], stream_layout: dict,
                    content_files: dict[str, str], out_dir: Path) -> dict:
    """Write ``vocabularies.json`` and ``statistics.json``; return the manifest (written last, by the caller)."""
    write_json({name: v.to_json() for name, v in sorted(encoder.vocabularies.items())}, out_dir / "vocabularies.json")
    write_json({name: s.to_json() for name, s in sorted(encoder.statistics.items())}, out_dir / "statistics.json")
    manifest = {
        "format_version": FORMAT_VERSION,
        "schema": schema.model_dump(mode="json"),
        "schema_fingerprint": schema_fingerprint(schema),
        "splits": {"train_end": splits[0], "validation_end": splits[1]},
        "equal_timestamp_rule": "events at the impression's timestamp or later are excluded",
        "streams": stream_layout,
        "content_files": content_files,
        "counts": dict(sorted(report.counts.items())),
        "drops": dict(sorted(report.drops.items())),
        "nulls_encoded_as_missing": dict(sorted(report.nulls.items())),
    }
    return manifest


def build_store(schema: Schema, data_dir: Path | str, out_dir: Path | str, progress: Progress | None = None,
                allow_empty_splits: bool = False) -> dict:
    """Build the store for ``schema`` from the raw logs in ``data_dir`` into ``out_dir``.

    ``out_dir`` must be absent, empty or a previous store, and neither ``data_dir`` nor inside it.
    A split without impressions is refused unless ``allow_empty_splits``. Returns the manifest (also written as ``manifest.json``). Raises :class:`DataError` on bad input.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    recover_interrupted_swap(out_dir)
    check_replaceable(out_dir, {"--data": data_dir})
    remove_stale_temporaries(out_dir.parent, f".{out_dir.name}.tmp-*")
    report = BuildReport()

    imp = schema.impressions
    imp_table, impressions, streams, users = read_logs(schema, data_dir, report, say)
    train_end, validation_end = _resolve_splits(schema, impressions[TIME].to_numpy())
    times = impressions[TIME].to_numpy().astype(np.int64)
    split = np.where(times < train_end, 0, np.where(times < validation_end, 1, 2)).astype(np.int8)
    _check_splits(schema, split, (train_end, validation_end), allow_empty_splits)
    num_users = users.height

    # --- vocabularies and statistics from the training period only ---------------------------
    say("learning vocabularies and statistics (training period)")
    encoder = AttributeEncoder(schema, train_end)
    places = [(f"streams.{s.name}", s.attributes, streams[s.name][1], [ROW]) for s in schema.streams]
    places.append(("impressions", imp.item_attributes + imp.context_attributes, impressions, []))
    encoder.fit(places)
    del places

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    writer: ThreadPoolExecutor | None = None
    try:
        user_columns, indexes, stream_layout = _encode_streams(schema, streams, users, encoder, report, say)
        # users.parquet is compressed and written in the background while the examples are computed,
        # then examples.parquet alongside it (pyarrow releases the GIL: one core each)
        writer = ThreadPoolExecutor(max_workers=2)
        users_written = writer.submit(write_parquet, pa.table(user_columns), tmp / "users.parquet")
        del user_columns

        # --- examples: one per impression, pointing at the user's history --------------------
        say("computing point-in-time examples")
        example_columns = _example_columns(schema, impressions, users, indexes, encoder, report, imp_table, split)
        for column, values in later_label_columns(schema, data_dir, impressions, split, (train_end, validation_end), report).items():
            example_columns[column] = pa.array(values)  # labels from later events: never a history
        del impressions, indexes
        say("writing users and examples")
        examples_written = writer.submit(write_parquet, pa.table(example_columns), tmp / "examples.parquet")
        writer.shutdown(wait=False)
        del example_columns
        users_written.result()
        examples_written.result()

        content_files = write_content_tables(schema, data_dir, encoder.vocabularies, report, tmp)

        report.counts["users"] = num_users
        report.counts["impressions"] = int(len(times))
        for i, name in enumerate(SPLIT_NAMES):
            report.counts[f"examples.{name}"] = int((split == i).sum())
        manifest = _write_metadata(schema, encoder, report, (train_end, validation_end), stream_layout, content_files, tmp)
        write_json(manifest, tmp / "manifest.json")
        swap_into_place(tmp, out_dir)
    except BaseException:
        if writer is not None:
            writer.shutdown(wait=True)  # no write into tmp after it is removed
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    return manifest
