"""Build the people-centric event store and the point-in-time examples from raw logs.

Output directory (written to a temporary sibling, then renamed into place)::

    manifest.json       schema, resolved split boundaries, counts, drops, column layout
    vocabularies.json   per vocabulary: its values (training period only) or its hash buckets
    statistics.json     per numeric attribute: training-period mean/std after the transform
    users.parquet       one row per user: ``user_id`` and, per stream, list columns sorted by time:
                        ``{stream}__timestamp`` and ``{stream}__{attribute}`` (encoded)
    examples.parquet    one row per impression, time-ordered: ``user_row``, ``timestamp``,
                        ``split`` (0 train, 1 validation, 2 test), ``cut__{stream}`` (number of the
                        user's events strictly before the impression), encoded item and context
                        attributes, labels (float, NaN when missing), extra columns
    content__{table}__{vocabulary}.npy   side-table vectors aligned with the key's encoded ids

The same input gives byte-identical output. See ``docs/store.md``.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import pyarrow as pa

from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.store.raw_logs import (
    ROW,
    DataError,
    RawTable,
    check_not_null,
    check_timestamps,
    first_row,
    require_columns,
    scan_table,
    timestamp_seconds,
)
from eventrec.schema import (
    EmbeddingAttribute,
    EventsSource,
    Schema,
    Stream,
    boundary_to_seconds,
)
from eventrec.store.encoding import AttributeEncoder, BuildReport
from eventrec.store.layout import FORMAT_VERSION, SPLIT_NAMES, TIME, USER, recover_interrupted_swap, schema_fingerprint, swap_into_place, write_json, write_parquet


Progress = Callable[[str], None]


def _source_columns(attributes: list) -> dict[str, str]:
    """Raw column → purpose for a list of attributes (table-looked-up embeddings need none)."""
    purposes = {"categorical": "id", "hashed": "id", "multi_categorical": "list", "numeric": "number"}
    out: dict[str, str] = {}
    for attribute in attributes:
        if isinstance(attribute, EmbeddingAttribute):
            if attribute.table is None:
                out[attribute.source_column] = "vector"
        else:
            out[attribute.source_column] = purposes[attribute.kind]
    return out


def _load_stream(data_dir: Path, schema: Schema, stream: Stream, report: BuildReport) -> tuple[RawTable, pl.DataFrame]:
    """The stream's raw rows: ``_user``, ``_t`` (seconds), ``_row`` and its attribute columns.

    The rows come back sorted by (user, time, file row), which is also the stored order (user rows
    are numbered in user id order), with exact duplicates dropped and counted.
    """
    source: EventsSource = stream.source or schema.events  # type: ignore[assignment]
    table = scan_table(data_dir, source.path)
    needed = {source.user_column: "id", source.timestamp_column: "timestamp"} | _source_columns(stream.attributes)
    if source.type_column and stream.event_types:
        needed[source.type_column] = "id"
    require_columns(table, needed)
    frame = table.frame
    if source.type_column and stream.event_types:
        frame = frame.filter(pl.col(source.type_column).cast(pl.String).is_in(stream.event_types))
    attribute_columns = sorted(set(_source_columns(stream.attributes)) - {source.user_column, source.timestamp_column})
    df = frame.select(
        pl.col(ROW),
        pl.col(source.user_column).alias(USER),
        pl.col(source.timestamp_column),
        timestamp_seconds(table, source.timestamp_column, source.timestamp_unit).alias(TIME),
        *[pl.col(c) for c in attribute_columns],
    ).collect(engine="streaming")
    # one read of the file; the checks then run on the rows in memory
    check_not_null(table, df, USER, f"user id (stream {stream.name!r})", source.user_column)
    check_timestamps(table, df, source.timestamp_column, TIME)
    df = _sorted_by(df.drop(source.timestamp_column), [USER, TIME, ROW])
    before = df.height
    df = _drop_exact_duplicates(df)
    report.drop(f"streams.{stream.name}.duplicate_events", before - df.height)
    report.counts[f"streams.{stream.name}.raw_rows"] = before
    return table, df


def _sorted_by(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``df`` sorted by ``keys`` (ascending, no nulls; the last key unique, so the order is unique).

    Logs usually arrive in this order already: checking it costs a few vectorised passes, whereas a
    sort gathers every column into a copy (over a gigabyte for 8M events with list columns).
    """
    if df.height < 2:
        return df
    ordered = pl.lit(False)
    for key in reversed(keys):  # lexicographic: a > b at the first key that differs
        column, previous = pl.col(key), pl.col(key).shift(1)
        ordered = (column > previous) | ((column == previous) & ordered)
    if df.select(ordered.slice(1).all()).item():
        return df
    return df.sort(keys)  # an eager sort is faster here than a lazy one


def _drop_exact_duplicates(df: pl.DataFrame) -> pl.DataFrame:
    """Drop rows equal to an earlier row (by file row) in user, time and every attribute.

    ``df`` is sorted by (user, time, file row), so duplicates are adjacent in (user, time): only the
    rows of (user, time) groups of two or more are compared in full; list and vector values are
    compared through their elements' text.
    """
    same = (pl.col(USER) == pl.col(USER).shift(1)) & (pl.col(TIME) == pl.col(TIME).shift(1))
    candidate = df.select((same | same.shift(-1)).fill_null(False)).to_series().to_numpy()
    if not candidate.any():
        return df
    positions = np.flatnonzero(candidate)
    subset = df[positions]
    key_columns = [c for c in df.columns if c != ROW]
    hashable = [pl.col(c).cast(pl.List(pl.String)).list.join("\x1f") if isinstance(df.schema[c], (pl.List, pl.Array)) else pl.col(c) for c in key_columns]
    first = subset.select(pl.struct(hashable).is_first_distinct()).to_series().to_numpy()
    if first.all():
        return df
    keep = np.ones(df.height, dtype=bool)
    keep[positions[~first]] = False
    return df.filter(pl.Series(keep))


def _unused_event_rows(data_dir: Path, schema: Schema, report: BuildReport) -> int:
    """Rows of the shared events file whose type no stream reads (reported, not silently lost).

    When the streams of the shared file select disjoint event types, this is the file's row count
    minus the rows the streams read (known from ``report``); otherwise the file is scanned again.
    """
    if schema.events is None or not schema.events.type_column:
        return 0
    shared = [s for s in schema.streams if s.source is None]
    types = sorted({t for s in shared for t in (s.event_types or [])})
    table = scan_table(data_dir, schema.events.path)
    disjoint = all(s.event_types for s in shared) and sum(len(set(s.event_types or [])) for s in shared) == len(types)
    if disjoint:
        total = int(table.frame.select(pl.len()).collect().item())
        return total - sum(report.counts[f"streams.{s.name}.raw_rows"] for s in shared)
    column = pl.col(schema.events.type_column).cast(pl.String)
    return int(table.frame.filter(~column.is_in(types) | column.is_null()).select(pl.len()).collect().item())


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


def _arrow_list(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), values)


def _arrow_values(encoded: dict[str, np.ndarray]) -> pa.Array:
    values = encoded["values"]
    if "offsets" in encoded:
        return _arrow_list(encoded["offsets"], pa.array(values))
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def _load_impressions(data_dir: Path, schema: Schema) -> tuple[RawTable, pl.DataFrame]:
    """The checked impressions: ``_row``, ``_user``, ``_t`` and the needed columns, sorted by time."""
    imp = schema.impressions
    imp_table = scan_table(data_dir, imp.path)
    needed = {imp.user_column: "id", imp.timestamp_column: "timestamp"}
    needed |= {label: "label" for label in imp.labels}
    needed |= _source_columns(imp.item_attributes + imp.context_attributes)
    if imp.request_column:
        needed[imp.request_column] = "id"
    needed |= {c: "number" for c in imp.extra_columns}
    require_columns(imp_table, needed)
    columns = sorted(set(needed) - {imp.user_column, imp.timestamp_column})
    frame = imp_table.frame.select(
        pl.col(ROW),
        pl.col(imp.user_column).alias(USER),
        pl.col(imp.timestamp_column),
        timestamp_seconds(imp_table, imp.timestamp_column, imp.timestamp_unit).alias(TIME),
        *[pl.col(c) for c in columns],
    ).collect(engine="streaming")
    # one read of the file; the checks then run on the rows in memory
    check_not_null(imp_table, frame, USER, "user id", imp.user_column)
    check_timestamps(imp_table, frame, imp.timestamp_column, TIME)
    for label in imp.labels:
        bad = pl.col(label).is_not_null() & ~pl.col(label).cast(pl.Float64).is_in([0.0, 1.0])
        row = first_row(imp_table, frame, bad)
        if row is not None:
            value = frame.filter(pl.col(ROW) == row)[label].item()
            raise DataError(f"{imp_table.path}: column {label!r}, row {row}: label must be 0, 1 or null, got {value!r}")
    if frame.height == 0:
        raise DataError(f"{imp_table.path}: no impressions")
    return imp_table, _sorted_by(frame.drop(imp.timestamp_column), [TIME, ROW])


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


def build_store(schema: Schema, data_dir: Path | str, out_dir: Path | str, progress: Progress | None = None) -> dict:
    """Build the store for ``schema`` from the raw logs in ``data_dir`` into ``out_dir``.

    Returns the manifest (also written as ``manifest.json``). Raises :class:`DataError` on bad input.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    recover_interrupted_swap(out_dir)
    report = BuildReport()

    # --- impressions -------------------------------------------------------------------------
    say("reading impressions")
    imp = schema.impressions
    imp_table, impressions = _load_impressions(data_dir, schema)
    train_end, validation_end = _resolve_splits(schema, impressions[TIME].to_numpy())

    # --- streams: sorted by (user, time, file row), exact duplicates dropped ------------------
    streams: dict[str, tuple[RawTable, pl.DataFrame]] = {}
    for stream in schema.streams:
        say(f"reading stream {stream.name}")
        streams[stream.name] = _load_stream(data_dir, schema, stream, report)
    report.drop("events.rows_of_no_stream", _unused_event_rows(data_dir, schema, report))

    # --- users: one row each, sorted by id ---------------------------------------------------
    id_frames = [impressions.select(USER)] + [df.select(USER) for _, df in streams.values()]
    if len({f.schema[USER] for f in id_frames}) > 1:
        # mixed id types: compare as strings (and re-sort the streams in string order)
        id_frames = [f.with_columns(pl.col(USER).cast(pl.String)) for f in id_frames]
        impressions = impressions.with_columns(pl.col(USER).cast(pl.String))
        streams = {k: (t, df.with_columns(pl.col(USER).cast(pl.String)).sort([USER, TIME, ROW])) for k, (t, df) in streams.items()}
    users = pl.concat(id_frames).unique().sort(USER)
    del id_frames
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
        # --- per-stream list columns, sorted by (user row, time, file row) -------------------
        user_columns: dict[str, pa.Array] = {"user_id": users[USER].to_arrow()}
        indexes: dict[str, SegmentedTimeIndex] = {}
        stream_layout: dict[str, Any] = {}
        for stream in schema.streams:
            say(f"encoding stream {stream.name}")
            # popped, not held here: _encode_stream frees each raw column once it is encoded
            indexes[stream.name] = _encode_stream(stream, *streams.pop(stream.name), users[USER], encoder, report, user_columns)
            stream_layout[stream.name] = {
                "max_length": stream.max_length,
                "sampling": stream.sampling,
                "attributes": {attribute.name: attribute.kind for attribute in stream.attributes},
            }
        # users.parquet is compressed and written in the background while the examples are computed,
        # then examples.parquet alongside it (pyarrow releases the GIL: one core each)
        writer = ThreadPoolExecutor(max_workers=2)
        users_written = writer.submit(write_parquet, pa.table(user_columns), tmp / "users.parquet")
        del user_columns

        # --- examples: one per impression, pointing at the user's history --------------------
        say("computing point-in-time examples")
        times = impressions[TIME].to_numpy().astype(np.int64)
        split = np.where(times < train_end, 0, np.where(times < validation_end, 1, 2)).astype(np.int8)
        example_columns = _example_columns(schema, impressions, users, indexes, encoder, report, imp_table, split)
        del impressions, indexes
        say("writing users and examples")
        examples_written = writer.submit(write_parquet, pa.table(example_columns), tmp / "examples.parquet")
        writer.shutdown(wait=False)
        del example_columns
        users_written.result()
        examples_written.result()

        # --- content tables aligned with the key's encoded ids -------------------------------
        content_files: dict[str, str] = {}
        for table_spec in schema.content_tables:
            keys = sorted({(a.table, a.key, owner) for owner, a in schema.all_attributes() if isinstance(a, EmbeddingAttribute) and a.table == table_spec.name})
            vocab_names = set()
            for _, key, owner in keys:
                attrs = schema.stream(owner.split(".", 1)[1]).attributes if owner.startswith("streams.") else imp.item_attributes + imp.context_attributes
                vocab_names.add(next(a for a in attrs if a.name == key).vocabulary_name)
            if not vocab_names:
                continue
            raw = scan_table(data_dir, table_spec.path)
            require_columns(raw, {table_spec.key_column: "id", table_spec.vector_column: "vector"})
            side = raw.frame.select(ROW, table_spec.key_column, table_spec.vector_column).collect()
            lengths = side[table_spec.vector_column].list.len() if isinstance(side.schema[table_spec.vector_column], pl.List) else None
            if lengths is not None and (lengths != table_spec.dim).any():
                position = int(np.argmax((lengths != table_spec.dim).to_numpy()))
                raise DataError(f"{raw.path}: column {table_spec.vector_column!r}, row {position}: expected {table_spec.dim} floats")
            vectors = np.asarray(side[table_spec.vector_column].cast(pl.Array(pl.Float32, table_spec.dim)).to_numpy(), dtype=np.float64).reshape(-1, table_spec.dim)
            bad = ~np.isfinite(vectors).all(axis=1)
            report.drop(f"content_tables.{table_spec.name}.non_finite_vectors", int(bad.sum()))
            for vocab_name in sorted(vocab_names):
                vocabulary = encoder.vocabularies[vocab_name]
                ids = vocabulary.encode(side[table_spec.key_column]).to_numpy()
                keep = ~bad & (ids >= 2 if not vocabulary.hashed else ids >= 1)
                matrix = np.zeros((vocabulary.num_embeddings, table_spec.dim), dtype=np.float64)
                counts = np.bincount(ids[keep], minlength=vocabulary.num_embeddings)
                np.add.at(matrix, ids[keep], vectors[keep])
                matrix /= np.maximum(counts, 1)[:, None]
                report.counts[f"content_tables.{table_spec.name}.{vocab_name}.shared_slots"] = int((counts > 1).sum())
                name = f"content__{table_spec.name}__{vocab_name}.npy"
                np.save(tmp / name, matrix.astype(np.float32), allow_pickle=False)
                content_files[f"{table_spec.name}/{vocab_name}"] = name

        # --- metadata --------------------------------------------------------------------------
        report.counts["users"] = num_users
        report.counts["impressions"] = int(len(times))
        for i, name in enumerate(SPLIT_NAMES):
            report.counts[f"examples.{name}"] = int((split == i).sum())
        write_json({name: v.to_json() for name, v in sorted(encoder.vocabularies.items())}, tmp / "vocabularies.json")
        write_json({name: s.to_json() for name, s in sorted(encoder.statistics.items())}, tmp / "statistics.json")
        manifest = {
            "format_version": FORMAT_VERSION,
            "schema": schema.model_dump(mode="json"),
            "schema_fingerprint": schema_fingerprint(schema),
            "splits": {"train_end": train_end, "validation_end": validation_end},
            "equal_timestamp_rule": "events at the impression's timestamp or later are excluded",
            "streams": stream_layout,
            "content_files": content_files,
            "counts": dict(sorted(report.counts.items())),
            "drops": dict(sorted(report.drops.items())),
            "nulls_encoded_as_missing": dict(sorted(report.nulls.items())),
        }
        write_json(manifest, tmp / "manifest.json")
        swap_into_place(tmp, out_dir)
    except BaseException:
        if writer is not None:
            writer.shutdown(wait=True)  # no write into tmp after it is removed
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    return manifest
