"""Reading and checking the raw logs of a build: impressions sorted by time, each stream's events
sorted by (user, time, file row) with exact duplicates dropped (counted), and the users.

Every check names the file, the column and the first offending row (:mod:`eventrec.store.raw_logs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from eventrec.schema import EmbeddingAttribute, EventsSource, Impressions, Schema, Stream
from eventrec.store.encoding import BuildReport
from eventrec.store.layout import TIME, USER
from eventrec.store.raw_logs import ROW, DataError, RawTable, check_not_null, check_timestamps, first_row, require_columns, scan_table, timestamp_seconds
from eventrec.store.sampling_values import EVENT_TYPE, needs_event_type

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


def _impressions_columns(imp: Impressions) -> dict[str, str]:
    """Raw column → purpose for every column the impressions are read with (user, time, labels,
    attributes, request id, extra columns and the impression side of later labels' matches)."""
    needed = {imp.user_column: "id", imp.timestamp_column: "timestamp"}
    needed |= {label: "label" for label in imp.labels}
    needed |= _source_columns(imp.item_attributes + imp.context_attributes)
    if imp.request_column:
        needed[imp.request_column] = "id"
    needed |= {c: "number" for c in imp.extra_columns}
    for match in (m for derived in imp.derived_labels for m in derived.match_columns):
        needed.setdefault(match.impression, "id")  # the attribute of a later label (store/later_labels.py)
    return needed


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
    df = table.collect(frame.select(
        pl.col(ROW),
        pl.col(source.user_column).alias(USER),
        pl.col(source.timestamp_column),
        timestamp_seconds(table, source.timestamp_column, source.timestamp_unit).alias(TIME),
        *[pl.col(c) for c in attribute_columns],
        # the raw type, for a value policy's per-event values only (other stores stay byte-identical)
        *([pl.col(source.type_column).cast(pl.String).alias(EVENT_TYPE)] if needs_event_type(stream) and source.type_column else []),
    ), streaming=True)
    # one read of the file; the checks then run on the rows in memory
    if df.height == 0 and table.collect(table.frame.select(pl.len())).item() == 0:
        raise DataError(f"{table.path}: no data rows (an empty events file)")
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


def _drop_exact_duplicates(df: pl.DataFrame, sorted_by_user: bool = True) -> pl.DataFrame:
    """Drop rows equal to an earlier row (in ``df``'s order) in user, time and every other column.

    Only the rows of (user, time) groups of two or more are compared in full: adjacent ones when
    ``df`` is sorted by (user, time, file row) (events), else found by a group count (impressions,
    sorted by time); list and vector values are compared through their elements' text.
    """
    if sorted_by_user:
        same = (pl.col(USER) == pl.col(USER).shift(1)) & (pl.col(TIME) == pl.col(TIME).shift(1))
        candidate = df.select((same | same.shift(-1)).fill_null(False)).to_series().to_numpy()
    else:
        candidate = df.select(pl.len().over(USER, TIME) > 1).to_series().to_numpy()
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
        total = int(table.collect(table.frame.select(pl.len())).item())
        return total - sum(report.counts[f"streams.{s.name}.raw_rows"] for s in shared)
    column = pl.col(schema.events.type_column).cast(pl.String)
    return int(table.collect(table.frame.filter(~column.is_in(types) | column.is_null()).select(pl.len())).item())


def _load_impressions(data_dir: Path, schema: Schema, report: BuildReport) -> tuple[RawTable, pl.DataFrame]:
    """The checked impressions: ``_row``, ``_user``, ``_t`` and the needed columns, sorted by time,
    exact duplicate rows kept and counted (``counts.impressions.duplicate_rows_kept``)."""
    imp = schema.impressions
    imp_table = scan_table(data_dir, imp.path)
    needed = _impressions_columns(imp)
    require_columns(imp_table, needed)
    columns = sorted(set(needed) - {imp.user_column, imp.timestamp_column})
    frame = imp_table.collect(imp_table.frame.select(
        pl.col(ROW),
        pl.col(imp.user_column).alias(USER),
        pl.col(imp.timestamp_column),
        timestamp_seconds(imp_table, imp.timestamp_column, imp.timestamp_unit).alias(TIME),
        *[pl.col(c) for c in columns],
    ), streaming=True)
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
    if imp.request_column:
        _check_requests(imp_table, frame, imp.request_column, imp.user_column, imp.timestamp_column)
    frame = _sorted_by(frame.drop(imp.timestamp_column), [TIME, ROW])
    # exact duplicate impressions are kept (negatives sampled with replacement repeat rows on purpose)
    # and counted, so that a logging duplicate is visible in the manifest
    repeated = frame.height - _drop_exact_duplicates(frame, sorted_by_user=False).height
    if repeated:
        report.counts["impressions.duplicate_rows_kept"] = repeated
    return imp_table, frame


def _check_requests(table: RawTable, frame: pl.DataFrame, request: str, user: str, timestamp: str) -> None:
    """Refuse a request id shared by impressions of several users or times (one request is one
    user at one time), naming the first row that disagrees with its request's first row."""
    keyed = frame.filter(pl.col(request).is_not_null())
    bad = (pl.col(USER).n_unique().over(request) > 1) | (pl.col(TIME).n_unique().over(request) > 1)
    row = first_row(table, keyed, bad)
    if row is None:
        return
    request_id = keyed.filter(pl.col(ROW) == row)[request].item()
    rows = keyed.filter(pl.col(request) == request_id).sort(ROW)
    first, other = rows.row(0, named=True), rows.filter((pl.col(USER) != rows[USER][0]) | (pl.col(TIME) != rows[TIME][0])).row(0, named=True)
    raise DataError(
        f"{table.path}: column {request!r}, row {other[ROW]}: request {request_id!r} spans several users or times "
        f"(row {first[ROW]}: {user} {first[USER]!r} at {timestamp} {first[TIME]}; row {other[ROW]}: {user} {other[USER]!r} at {other[TIME]})"
    )


def read_logs(schema: Schema, data_dir: Path, report: BuildReport, say: Progress) -> tuple[RawTable, pl.DataFrame, dict[str, tuple[RawTable, pl.DataFrame]], pl.DataFrame]:
    """The checked raw logs: impressions sorted by time, each stream sorted by (user, time, file row)
    with exact duplicates dropped, and the users (one row each, sorted by id; ids compared as strings
    when the files disagree on their type)."""
    # --- impressions -------------------------------------------------------------------------
    say("reading impressions")
    imp_table, impressions = _load_impressions(data_dir, schema, report)

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
    return imp_table, impressions, streams, users
