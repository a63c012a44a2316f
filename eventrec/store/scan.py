"""What a partitioned build must know of all the raw rows, from its two passes over them.

- The **count pass** reads only the user columns: each table's rows per user (:func:`count_batch`),
  which plan the user partitions, and each read task's row count (the ``_row`` offsets of CSV files).
  Counts are of table rows, whichever consumers keep them: they balance the partitions, nothing else.
- The **split** pass checks every consumer's rows as it routes them (:func:`check_rows`): the
  impression times (to resolve fraction splits) or the impressions per split, each derived label's
  last source timestamp, the request ids' users and times, and whether any row fails a check of the
  in-memory loaders (null user id, unparsable, null or out-of-range timestamp, label other than
  0/1/null, a request spanning users or times, an empty file). Such input is handed to the in-memory
  build, which names the first offending row exactly as it always did.

Each piece is a :class:`ScanPart` that adds up: the Spark engine runs the read tasks in parallel and
merges their parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from eventrec.schema import Schema
from eventrec.store.layout import TIME, USER
from eventrec.store.raw_logs import MAX_TIMESTAMP_SECONDS
from eventrec.store.sources import Consumer, Sources, data_end_expr
from eventrec.store.splits import needs_impression_times, split_of
from eventrec.store.user_partitions import ROWS

COMPACT_ROWS = 1_000_000  # see ScanPart.compact


@dataclass
class ScanPart:
    """What a pass over some batches saw (:func:`count_batch`, :func:`check_rows`), summed by :meth:`add`."""

    table_rows: dict[str, int] = field(default_factory=dict)
    consumer_rows: dict[str, int] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    user_rows: list[pl.DataFrame] = field(default_factory=list)
    impression_times: list[np.ndarray] = field(default_factory=list)
    split_sizes: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    requests: list[pl.DataFrame] = field(default_factory=list)
    data_end: dict[str, int] = field(default_factory=dict)

    def add(self, other: "ScanPart") -> None:
        for name, n in other.table_rows.items():
            self.table_rows[name] = self.table_rows.get(name, 0) + n
        for name, n in other.consumer_rows.items():
            self.consumer_rows[name] = self.consumer_rows.get(name, 0) + n
        self.refused |= other.refused
        self.user_rows += other.user_rows
        self.impression_times += other.impression_times
        self.split_sizes = self.split_sizes + other.split_sizes
        self.requests += other.requests  # distinct per batch: (request, user, time), checked once at the end
        for name, end in other.data_end.items():
            self.data_end[name] = max(end, self.data_end.get(name, end))
        self.compact()

    def compact(self, threshold: int = COMPACT_ROWS) -> None:
        """Sum the partial per-user counts once they hold more rows than ``threshold`` and twice the
        users summed so far (a log in time order repeats most users in every batch)."""
        if len(self.user_rows) > 1:
            summed = self.user_rows[0].height
            if sum(f.height for f in self.user_rows) - summed > max(threshold, 2 * summed):
                self.user_rows = [users_of(self.user_rows)]


def users_of(parts: list[pl.DataFrame], key_dtype: pl.DataType | None = None) -> pl.DataFrame:
    """The sorted distinct users of per-user count frames, with their summed ``rows`` (sorted first,
    then grouped in order: about half the memory of a hash grouping of a million users); no parts:
    no users (of ``key_dtype``)."""
    if not parts:
        return pl.DataFrame({USER: pl.Series([], dtype=key_dtype or pl.Int64), ROWS: pl.Series([], dtype=pl.Int64)})
    return pl.concat(parts).sort(USER).group_by(USER, maintain_order=True).agg(pl.col(ROWS).sum())


def requests_span(parts: list[pl.DataFrame]) -> bool:
    """Whether a request id of the distinct (request, user, time) frames has two users or times
    (a sort by request, then neighbours compared: no hash table over every request)."""
    if not parts:
        return False
    ordered = pl.concat(parts).sort("request")
    same = pl.col("request") == pl.col("request").shift(1)
    return bool(ordered.select((same & ((pl.col(USER) != pl.col(USER).shift(1)) | (pl.col(TIME) != pl.col(TIME).shift(1)))).any()).item())


def user_key_dtype(sources: Sources) -> pl.DataType:
    """The dtype users are compared in: the files' own, or String when the impressions and streams
    disagree (as :func:`eventrec.store.load.read_logs`)."""
    dtypes = {c.empty().schema[USER] for c in sources.consumers if c.kind != "derived"}
    return dtypes.pop() if len(dtypes) == 1 else pl.String


def count_batch(sources: Sources, pattern: str, batch: pl.DataFrame, key_dtype: pl.DataType) -> ScanPart:
    """The count pass's part of a batch of the table of ``pattern`` (its user columns,
    :meth:`Sources.user_columns`): the batch's rows per user (null ids left out, and ids that do not
    cast to the key's dtype, which no impression can match)."""
    part = ScanPart(table_rows={pattern: batch.height})
    for column in sources.user_columns(pattern):
        users = batch.select(pl.col(column).cast(key_dtype, strict=False).alias(USER) if batch.schema[column] != key_dtype else pl.col(column).alias(USER))
        part.user_rows.append(users.drop_nulls().group_by(USER).agg(pl.len().cast(pl.Int64).alias(ROWS)))
    part.compact()
    return part


def _bad_timestamp(frame: pl.DataFrame) -> bool:
    t = pl.col(TIME)
    return bool(frame.select((t.is_null() | (t < 0) | (t >= MAX_TIMESTAMP_SECONDS)).any()).item())


def check_rows(schema: Schema, consumer: Consumer, rows: pl.DataFrame, batch: pl.DataFrame,
               boundaries: tuple[int, int] | None) -> ScanPart:
    """What the split keeps of one consumer's ``rows`` (:meth:`Consumer.rows`) of a ``batch`` of
    its table (``boundaries``: the schema's time split boundaries, None when they are fractions of
    the impressions)."""
    part = ScanPart(consumer_rows={consumer.key: rows.height})
    imp = schema.impressions
    if _bad_timestamp(rows):
        part.refused.add(f"{consumer.key}: timestamps")
        return part
    if consumer.kind == "derived":
        derived = next(d for d in imp.derived_labels if d.name == consumer.name)
        end = batch.select(data_end_expr(schema, derived, consumer.table)).item()
        if end is not None:
            part.data_end[consumer.name] = int(end)
        return part
    if rows[USER].null_count():
        part.refused.add(f"{consumer.key}: null user ids")
        return part
    if consumer.kind != "impressions":
        return part
    for label in imp.labels:
        if rows.select((pl.col(label).is_not_null() & ~pl.col(label).cast(pl.Float64).is_in([0.0, 1.0])).any()).item():
            part.refused.add(f"impressions: label {label}")
    times = rows[TIME].to_numpy()
    if boundaries is None:
        part.impression_times.append(times)
    elif len(times):
        part.split_sizes = part.split_sizes + np.bincount(split_of(times, boundaries), minlength=3)
    if imp.request_column:
        keyed = rows.filter(pl.col(imp.request_column).is_not_null())
        part.requests.append(keyed.select(pl.col(imp.request_column).alias("request"), USER, TIME).unique())
    return part


def refusals(schema: Schema, sources: Sources, scan: ScanPart) -> list[str]:
    """Every reason the in-memory loaders would refuse the input, from the whole input's checks."""
    out = sorted(scan.refused)
    if scan.consumer_rows.get("impressions:impressions", 0) == 0:
        out.append("impressions: no rows")
    for consumer in sources.consumers:
        if consumer.kind == "stream" and scan.consumer_rows.get(consumer.key, 0) == 0:
            pattern = next(p for p, t in sources.tables.items() if t is consumer.table)
            if scan.table_rows.get(pattern, 0) == 0:
                out.append(f"{consumer.key}: an empty events file")
    if requests_span(scan.requests):
        out.append("impressions: a request spanning several users or times")
    return out


def impression_times(schema: Schema, scan: ScanPart) -> np.ndarray | None:
    """All impression times (any order) when the splits are fractions, else None."""
    if not needs_impression_times(schema):
        return None
    return np.concatenate(scan.impression_times) if scan.impression_times else np.zeros(0, dtype=np.int64)
