"""One user partition of a build: its raw rows in, its rows of ``users.parquet`` and ``examples.parquet`` out.

Both engines run these functions on the raw rows of each partition's users (the embedded engine from
its spill files, one partition after the other; Spark inside a grouped Arrow task):

1. :func:`prepare`: what the in-memory loaders do to the rows (sort, drop exact duplicate events,
   count), restricted to the partition's users; every step is per user, so the rows are the same;
2. :func:`summarize`: the partition's share of the training-period vocabularies and statistics
   (:class:`~eventrec.store.encoding.TrainingSummary`, summed over partitions by the driver);
3. :func:`build_partition`: with the fitted encoder, the partition's user rows and example rows
   (:mod:`eventrec.store.columns`, the functions of the in-memory build), the latter with their
   sort keys (time, file row) for the final merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import polars as pl
import pyarrow as pa

from eventrec.schema import Schema
from eventrec.store.columns import encode_streams, example_columns
from eventrec.store.encoding import AttributeEncoder, BuildReport, TrainingSummary
from eventrec.store.layout import SPLIT_NAMES, TIME, USER
from eventrec.store.later_labels import label_keys, later_label_from_events
from eventrec.store.load import _drop_exact_duplicates, _sorted_by
from eventrec.store.raw_logs import ROW
from eventrec.store.splits import split_of

SORT_TIME, SORT_ROW = "__sort_t", "__sort_row"  # the examples' merge keys, dropped when merged


@dataclass(frozen=True)
class BuildContext:
    """What every partition needs to know of the whole build (small; Spark ships it to the tasks)."""

    schema: Schema
    boundaries: tuple[int, int]
    mixed_user_types: bool
    timestamp_columns: dict[str, str]   # consumer key → raw timestamp column (dropped by prepare)
    paths: dict[str, str]               # consumer key → the table's path, for error messages
    data_end: dict[str, int] = field(default_factory=dict)


@dataclass
class PartitionRows:
    """The raw rows of one partition, by consumer key (``impressions:impressions``, ``stream:NAME``,
    ``derived:NAME``), as :meth:`~eventrec.store.sources.Consumer.rows` gives them."""

    frames: dict[str, pl.DataFrame]
    unchanged: set[str] = field(default_factory=set)  # after prepare: streams whose rows it kept as they were


def prepare(ctx: BuildContext, rows: PartitionRows, report: BuildReport) -> PartitionRows:
    """The partition's rows as the in-memory loaders leave them (:func:`eventrec.store.load.read_logs`,
    :func:`eventrec.store.later_labels._events`): impressions sorted by (time, file row) and their
    exact repeats counted; each stream sorted by (user, time, file row), exact duplicates dropped and
    counted; each derived label's events with null keys dropped. Counts go to ``report``."""
    schema, out = ctx.schema, {}
    cast_user = [pl.col(USER).cast(pl.String)] if ctx.mixed_user_types else []
    key = "impressions:impressions"
    impressions = _sorted_by(rows.frames[key].drop(ctx.timestamp_columns[key]), [TIME, ROW])
    repeated = impressions.height - _drop_exact_duplicates(impressions, sorted_by_user=False).height
    if repeated:
        report.counts["impressions.duplicate_rows_kept"] = repeated
    out[key] = impressions.with_columns(cast_user) if cast_user else impressions
    unchanged = set()
    for stream in schema.streams:
        key = f"stream:{stream.name}"
        raw = rows.frames[key].drop(ctx.timestamp_columns[key])
        df = _sorted_by(raw, [USER, TIME, ROW])
        before = df.height
        df = _drop_exact_duplicates(df)
        report.drop(f"streams.{stream.name}.duplicate_events", before - df.height)
        report.counts[f"streams.{stream.name}.raw_rows"] = before
        out[key] = df.with_columns(cast_user).sort([USER, TIME, ROW]) if cast_user else df
        if out[key] is raw:  # already in order, no duplicate: the raw rows less the raw timestamp
            unchanged.add(key)
    for derived in schema.impressions.derived_labels:
        key = f"derived:{derived.name}"
        keys = label_keys(derived)
        out[key] = rows.frames[key].select(keys + [TIME]).drop_nulls(keys)
    return PartitionRows(out, unchanged)


def partition_users(schema: Schema, prepared: PartitionRows) -> pl.DataFrame:
    """The partition's users (one row each, sorted by id): those of its impressions and streams."""
    frames = [prepared.frames["impressions:impressions"].select(USER)]
    frames += [prepared.frames[f"stream:{s.name}"].select(USER) for s in schema.streams]
    return pl.concat(frames).unique().sort(USER)


def _places(schema: Schema, prepared: PartitionRows) -> list[tuple[str, list, pl.DataFrame, list[str]]]:
    """The encoder's places; impressions ordered by (time, file row), their order in the examples."""
    places = [(f"streams.{s.name}", s.attributes, prepared.frames[f"stream:{s.name}"], [ROW]) for s in schema.streams]
    imp = schema.impressions
    places.append(("impressions", imp.item_attributes + imp.context_attributes, prepared.frames["impressions:impressions"], [TIME, ROW]))
    return places


def summarize(ctx: BuildContext, prepared: PartitionRows) -> TrainingSummary:
    """The partition's share of the training-period vocabularies and statistics."""
    return AttributeEncoder(ctx.schema, ctx.boundaries[0]).training_summary(_places(ctx.schema, prepared))


def build_partition(ctx: BuildContext, encoder: AttributeEncoder, prepared: PartitionRows, user_offset: int,
                    report: BuildReport, user_ids: pl.Series | None = None) -> tuple[pa.Table, pa.Table]:
    """The partition's rows of ``users.parquet`` and of ``examples.parquet`` (the latter in (time,
    file row) order, with the two sort keys as the last columns). ``user_offset``: the
    ``users.parquet`` row of the partition's first user; ``user_ids``: the partition's users if
    known (sorted; else :func:`partition_users`). Counts go to ``report``."""
    schema = ctx.schema
    users = partition_users(schema, prepared) if user_ids is None else user_ids.alias(USER).to_frame()
    streams = {s.name: (ctx.paths[f"stream:{s.name}"], prepared.frames.pop(f"stream:{s.name}")) for s in schema.streams}
    user_columns, indexes = encode_streams(schema, streams, users, encoder, report, lambda _message: None)
    users_table = pa.table(user_columns)
    del user_columns, streams

    impressions = prepared.frames["impressions:impressions"]
    times = impressions[TIME].to_numpy().astype(np.int64)
    split = split_of(times, ctx.boundaries)
    columns = example_columns(schema, impressions, users, indexes, encoder, report, ctx.paths["impressions:impressions"], split, user_offset)
    del indexes
    for derived in schema.impressions.derived_labels:
        events = prepared.frames[f"derived:{derived.name}"]
        label = later_label_from_events(derived, events, ctx.data_end.get(derived.name, 0), impressions, split, ctx.boundaries, report)
        columns[f"label__{derived.name}"] = pa.array(label)  # labels from later events: never a history
    columns[SORT_TIME] = pa.array(times)
    columns[SORT_ROW] = impressions[ROW].to_arrow()
    report.counts["users"] = users.height
    report.counts["impressions"] = int(len(times))
    for i, name in enumerate(SPLIT_NAMES):
        report.counts[f"examples.{name}"] = int((split == i).sum())
    return users_table, pa.table(columns)


def merge_reports(reports: list[BuildReport]) -> BuildReport:
    """The sum of the partitions' reports (every count, drop and null of a build adds up)."""
    total = BuildReport()
    for report in reports:
        for name, n in report.counts.items():
            total.counts[name] = total.counts.get(name, 0) + n
        for name, n in report.drops.items():
            total.drops[name] = total.drops.get(name, 0) + n
        for name, n in report.nulls.items():
            total.nulls[name] = total.nulls.get(name, 0) + n
    return total
