"""The raw rows a partitioned build reads, batch by batch: who reads which file, and the read tasks.

A **consumer** is one reader of a raw table, with the row filter and the columns of the in-memory
loaders (:mod:`eventrec.store.load`, :mod:`eventrec.store.later_labels`): the impressions, each
stream, and each label derived from later events. Applied to a batch of a table's rows it gives
exactly the rows the in-memory loader would hold for those file rows.

A **read task** is one piece of a table: a row group of a Parquet file (its needed columns read whole
by Polars when they decode to about ``NATIVE_READ_BYTES`` at most, else with pyarrow in batches of
``BATCH_ROWS``, so that memory does not grow with the row group's size) or a whole CSV file (read
with Polars as :func:`~eventrec.store.raw_logs.scan_table` does). Tasks are what the Spark engine
distributes; the embedded engine runs them in order. Every batch carries ``_row``, the row's number in
the table (the concatenation of its sorted files), and has the dtypes of the table's Polars scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from eventrec.schema import DerivedLabel, EventsSource, Schema, Stream
from eventrec.store.csv_errors import csv_separator
from eventrec.store.layout import TIME, USER
from eventrec.store.load import _impressions_columns, _source_columns
from eventrec.store.raw_logs import ROW, DataError, RawTable, require_columns, scan_table, timestamp_seconds
from eventrec.store.sampling_values import EVENT_TYPE, needs_event_type

BATCH_ROWS = 65_536
NATIVE_READ_BYTES = 16 << 20  # a row group whose needed columns decode to about this much is read whole


@dataclass(frozen=True)
class Consumer:
    """One reader of a raw table: ``kind`` "impressions", "stream" or "derived" (a label from later
    events), ``name`` (the stream's or the label's), the rows it keeps (``row_filter``) and the
    columns it selects from them (``select``: ``_row``, ``_user``, the raw timestamp, ``_t``, ...),
    its raw user id column (``user_column``, what the count pass reads), and what the checks of
    :func:`~eventrec.store.scan.check_rows` read (``check_select`` of the raw ``check_columns``,
    which include the row filter's): the same rows as :meth:`rows`, fewer columns."""

    kind: str
    name: str
    table: RawTable
    timestamp_column: str
    raw_columns: tuple[str, ...]
    select: tuple[pl.Expr, ...]
    user_column: str
    row_filter: pl.Expr | None = None
    check_select: tuple[pl.Expr, ...] = ()
    check_columns: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def rows(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The consumer's rows of a batch of its table (same columns as its in-memory loader)."""
        kept = batch.filter(self.row_filter) if self.row_filter is not None else batch
        return kept.select(self.select)

    def check_view(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The consumer's rows of a batch holding at least :attr:`check_columns`, with only what the
        checks read (``_user``, ``_t`` and, for the impressions, the labels and the request id)."""
        kept = batch.filter(self.row_filter) if self.row_filter is not None else batch
        return kept.select(self.check_select)

    def empty(self) -> pl.DataFrame:
        """No rows, with the columns and dtypes of :meth:`rows`."""
        frame = self.table.frame.head(0)
        return (frame.filter(self.row_filter) if self.row_filter is not None else frame).select(self.select).collect()


@dataclass
class Sources:
    """Every consumer of a schema, grouped by the table they read (``tables``: path pattern → table)."""

    consumers: list[Consumer]
    data_dir: Path
    tables: dict[str, RawTable] = field(default_factory=dict)

    def of_table(self, pattern: str) -> list[Consumer]:
        """The consumers reading the table of ``pattern``, in schema order."""
        return [c for c in self.consumers if c.table is self.tables[pattern]]

    def raw_columns(self, pattern: str) -> list[str]:
        """The raw columns any consumer reads from the table of ``pattern``."""
        return sorted({column for c in self.of_table(pattern) for column in c.raw_columns})

    def user_columns(self, pattern: str) -> list[str]:
        """The raw user id columns of the consumers of the table of ``pattern`` (the count pass's)."""
        return sorted({c.user_column for c in self.of_table(pattern)})

    def check_columns(self, pattern: str) -> list[str]:
        """The raw columns a count pass that also checks reads (the Spark engine's): the user id
        columns and every consumer's :attr:`Consumer.check_columns`."""
        return sorted(set(self.user_columns(pattern)) | {column for c in self.of_table(pattern) for column in c.check_columns})


def _impressions(schema: Schema, table: RawTable) -> Consumer:
    """As :func:`eventrec.store.load._load_impressions`."""
    imp = schema.impressions
    needed = _impressions_columns(imp)
    require_columns(table, needed)
    columns = sorted(set(needed) - {imp.user_column, imp.timestamp_column})
    time = timestamp_seconds(table, imp.timestamp_column, imp.timestamp_unit).alias(TIME)
    select = (pl.col(ROW), pl.col(imp.user_column).alias(USER), pl.col(imp.timestamp_column), time, *[pl.col(c) for c in columns])
    checked = sorted(set(imp.labels) | ({imp.request_column} if imp.request_column else set()))
    return Consumer("impressions", "impressions", table, imp.timestamp_column, tuple(sorted(needed)), select, imp.user_column,
                    check_select=(pl.col(imp.user_column).alias(USER), time, *[pl.col(c) for c in checked]),
                    check_columns=tuple(sorted({imp.user_column, imp.timestamp_column, *checked})))


def _stream(schema: Schema, stream: Stream, table: RawTable) -> Consumer:
    """As :func:`eventrec.store.load._load_stream`."""
    source: EventsSource = stream.source or schema.events  # type: ignore[assignment]
    needed = {source.user_column: "id", source.timestamp_column: "timestamp"} | _source_columns(stream.attributes)
    typed = bool(source.type_column and stream.event_types)
    if typed:
        needed[source.type_column] = "id"
    require_columns(table, needed)
    attribute_columns = sorted(set(_source_columns(stream.attributes)) - {source.user_column, source.timestamp_column})
    carries_type = needs_event_type(stream) and bool(source.type_column)
    time = timestamp_seconds(table, source.timestamp_column, source.timestamp_unit).alias(TIME)
    select = (
        pl.col(ROW), pl.col(source.user_column).alias(USER), pl.col(source.timestamp_column), time,
        *[pl.col(c) for c in attribute_columns],
        *([pl.col(source.type_column).cast(pl.String).alias(EVENT_TYPE)] if carries_type else []),
    )
    raw = set(needed) | ({source.type_column} if carries_type else set())
    row_filter = pl.col(source.type_column).cast(pl.String).is_in(stream.event_types) if typed else None
    checked = {source.user_column, source.timestamp_column} | ({source.type_column} if typed else set())
    return Consumer("stream", stream.name, table, source.timestamp_column, tuple(sorted(raw)), select, source.user_column, row_filter,
                    (pl.col(source.user_column).alias(USER), time), tuple(sorted(checked)))


def _derived(schema: Schema, derived: DerivedLabel, table: RawTable) -> Consumer:
    """As :func:`eventrec.store.later_labels._events` (before its null keys are dropped)."""
    source: EventsSource = derived.source or schema.events  # type: ignore[assignment]
    needed = {source.user_column: "id", source.timestamp_column: "timestamp", str(source.type_column): "id"}
    for match in derived.match_columns:
        needed.setdefault(match.event, "id")
    require_columns(table, needed)
    keys = [f"_match{i}" for i in range(len(derived.match_columns))]
    time = timestamp_seconds(table, source.timestamp_column, source.timestamp_unit).alias(TIME)
    select = (pl.col(ROW), pl.col(source.timestamp_column), pl.col(source.user_column).alias(USER), time,
              *[pl.col(m.event).alias(key) for m, key in zip(derived.match_columns, keys)])
    row_filter = pl.col(str(source.type_column)).cast(pl.String).is_in(derived.events)
    checked = (source.user_column, source.timestamp_column, str(source.type_column))  # the data end reads every row's time
    return Consumer("derived", derived.name, table, source.timestamp_column, tuple(sorted(needed)), select, source.user_column, row_filter,
                    (pl.col(source.user_column).alias(USER), time), tuple(sorted(set(checked))))


def plan_sources(schema: Schema, data_dir: Path) -> Sources:
    """The consumers of ``schema``'s raw logs (checks every needed column: :class:`DataError`)."""
    sources = Sources([], Path(data_dir))

    def table(pattern: str) -> RawTable:
        if pattern not in sources.tables:
            sources.tables[pattern] = scan_table(data_dir, pattern)
        return sources.tables[pattern]

    sources.consumers.append(_impressions(schema, table(schema.impressions.path)))
    for stream in schema.streams:
        source: EventsSource = stream.source or schema.events  # type: ignore[assignment]
        sources.consumers.append(_stream(schema, stream, table(source.path)))
    for derived in schema.impressions.derived_labels:
        source = derived.source or schema.events  # type: ignore[assignment]
        sources.consumers.append(_derived(schema, derived, table(source.path)))
    return sources


def data_end_expr(schema: Schema, derived: DerivedLabel, table: RawTable) -> pl.Expr:
    """The derived label source's last timestamp (seconds) over all its rows, any event type."""
    source: EventsSource = derived.source or schema.events  # type: ignore[assignment]
    return timestamp_seconds(table, source.timestamp_column, source.timestamp_unit).max()


# -- read tasks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadTask:
    """One piece of a table: ``row_group`` of a Parquet ``file``, or a whole CSV file (``row_group``
    None); ``rows`` its row count (None for CSV until read) and ``offset`` its first ``_row``."""

    pattern: str
    file: str
    row_group: int | None
    rows: int | None
    offset: int | None


def read_tasks(pattern: str, table: RawTable) -> list[ReadTask]:
    """The table's tasks in row order, with their offsets where the files tell their row counts."""
    tasks: list[ReadTask] = []
    offset: int | None = 0
    for file in table.files:
        if file.suffix == ".parquet":
            try:
                metadata = pq.ParquetFile(file).metadata
            except Exception as error:  # pyarrow raises several types for unreadable files
                raise table.read_error(error, {}) from None
            for group in range(metadata.num_row_groups):
                rows = metadata.row_group(group).num_rows
                tasks.append(ReadTask(pattern, str(file), group, rows, offset))
                offset = None if offset is None else offset + rows
        else:
            tasks.append(ReadTask(pattern, str(file), None, None, offset))
            offset = None
    return tasks


def with_offsets(tasks: list[ReadTask], rows: list[int]) -> list[ReadTask]:
    """The tasks with every offset known, from each task's row count (``rows``, as counted)."""
    out, offset = [], 0
    for task, count in zip(tasks, rows):
        out.append(ReadTask(task.pattern, task.file, task.row_group, count, offset))
        offset += count
    return out


def _row_bytes(schema: pa.Schema, columns: list[str]) -> int:
    """About the decoded bytes of a row of ``columns``: fixed-width values their width, others
    (strings, lists) 32 bytes (Parquet's own sizes are of encoded pages, often much smaller)."""
    total = 0
    for name in columns:
        dtype = schema.field(name).type
        total += dtype.byte_width if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_temporal(dtype) else 32
    return total


def read_batches(table: RawTable, task: ReadTask, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pl.DataFrame]:
    """The task's rows (``columns`` and ``_row``; ``_row`` counts from 0 when the offset is unknown),
    in file order, at most ``batch_rows`` at a time for Parquet, in the dtypes of the table's scan."""
    types = table.columns()
    offset = task.offset or 0
    try:
        if task.row_group is None:
            file = Path(task.file)
            frame = pl.scan_csv(file, separator=csv_separator(file), infer_schema_length=10_000).select(columns).collect()
            batches: Iterator[pl.DataFrame] = iter([frame])
        else:
            reader = pq.ParquetFile(task.file, pre_buffer=False, buffer_size=1 << 20)
            group = reader.metadata.row_group(task.row_group)
            if group.num_rows * _row_bytes(reader.schema_arrow, columns) <= NATIVE_READ_BYTES:  # decoded at once: Polars' reader, about twice as fast
                start = sum(reader.metadata.row_group(g).num_rows for g in range(task.row_group))
                batches = iter([pl.scan_parquet(task.file).select(columns).slice(start, group.num_rows).collect()])
            else:  # a bounded batch at a time, whatever the row group's size
                batches = (pl.from_arrow(batch) for batch in reader.iter_batches(batch_rows, row_groups=[task.row_group], columns=columns, use_threads=False))  # type: ignore[misc]
        for frame in batches:
            casts = {c: types[c] for c in columns if frame.schema[c] != types[c]}
            frame = frame.cast(casts) if casts else frame  # type: ignore[arg-type]
            yield frame.with_row_index(ROW, offset=offset)
            offset += frame.height
    except DataError:
        raise
    except Exception as error:  # polars and pyarrow raise several types for unreadable files
        raise table.read_error(error, types) from None
