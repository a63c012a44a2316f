"""The partitioned build's driver, the same for every engine (embedded Polars, Spark).

    plan      consumers of the raw tables and their read tasks (:mod:`eventrec.store.sources`)
    count     a pass over the user id columns only: each user's table rows, each task's rows
              (:mod:`eventrec.store.scan`); the Spark engine also reads the checked columns
              and checks here
    plan      user partitions: ranges of the sorted ids of about ``rows_per_partition`` raw rows
    split     every consumer's rows routed to their user's partition (the engine's shuffle), and
              checked on the way (the embedded engine; Spark checked in its count): impression
              times, checks; input the in-memory loaders would refuse is refused here
    summarize per partition, its share of the training vocabularies and statistics (summed here)
              and its users (the offsets of the partitions' rows of users.parquet)
    build     per partition, with the fitted encoder, its user rows and example rows
    assemble  users.parquet in partition order, examples.parquet merged by (time, file row)

The raw rows are read twice: their user ids (and, with Spark, the checked columns) once, every
needed column once. The engine does count, split, summarize and build (:class:`Engine`); everything
else is here.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from eventrec.schema import Schema
from eventrec.store.assemble import RowGroupWriter, merge_sorted
from eventrec.store.encoding import AttributeEncoder, BuildReport, TrainingSummary
from eventrec.store.layout import SPLIT_NAMES, USER
from eventrec.store.load import Progress, _unused_event_rows
from eventrec.store.metadata import finish_store
from eventrec.store.partition import SORT_ROW, SORT_TIME, BuildContext, merge_reports
from eventrec.store.raw_logs import DataError
from eventrec.store.scan import ScanPart, impression_times, refusals, user_key_dtype
from eventrec.store.sources import ReadTask, Sources, plan_sources, read_tasks, with_offsets
from eventrec.store.splits import check_splits, needs_impression_times, resolve_splits, split_of
from eventrec.store.user_partitions import UserPartitions, plan_partitions

DEFAULT_ROWS_PER_PARTITION = 200_000  # about 25 MB of raw rows of the synthetic world; two in flight


class Engine(Protocol):
    """What runs the partitioned work: the embedded engine in this process, or Spark."""

    def count(self, schema: Schema, sources: Sources, tasks: list[ReadTask], key_dtype, boundaries) -> tuple[list[int], pl.DataFrame]:
        """Each task's rows (same order) and every user id with its table rows (:func:`count_batch`,
        summed: :func:`users_of`). An engine may run the checks of :meth:`split` here, on
        :meth:`Consumer.check_view` of the checked columns (``boundaries``: as for :meth:`split`)."""

    def split(self, schema: Schema, sources: Sources, tasks: list[ReadTask], partitions: UserPartitions, work_dir: Path,
              boundaries) -> list[ScanPart]:
        """Route every consumer's rows to their partitions (kept until :meth:`close`); return each
        task's checks (:func:`check_rows`, here or from :meth:`count`; ``boundaries``: the schema's,
        None for fractions)."""

    def summarize(self, ctx: BuildContext, sources: Sources, partitions: UserPartitions) -> tuple[list[TrainingSummary], list[int]]:
        """One training summary per partition, and the users of each partition."""

    def build(self, ctx: BuildContext, sources: Sources, encoder: AttributeEncoder, partitions: UserPartitions,
              users: RowGroupWriter, parts_dir: Path) -> tuple[list[BuildReport], list[Path]]:
        """Write the partitions' user rows to ``users`` in partition order and their example rows to
        part files in ``parts_dir``; return the reports and the part files."""

    def close(self) -> None:
        """Free what :meth:`split` kept."""


class Refused(DataError):
    """Input the in-memory build must judge (it names the first offending row)."""


def build_partitioned(schema: Schema, data_dir: Path, out_dir: Path, engine: Engine, say: Progress,
                      allow_empty_splits: bool = False, rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION) -> dict:
    """Write the store's files into the existing, empty ``out_dir`` (work files in ``out_dir/_work``,
    removed); return the manifest (not written). Raises :class:`Refused` for input the in-memory
    loaders would refuse."""
    say("planning the raw tables")
    sources = plan_sources(schema, data_dir)
    key_dtype = user_key_dtype(sources)
    mixed = len({c.empty().schema[USER] for c in sources.consumers if c.kind != "derived"}) > 1
    fixed = None if needs_impression_times(schema) else resolve_splits(schema, None)
    tasks = [task for pattern, table in sources.tables.items() for task in read_tasks(pattern, table)]

    say("counting the raw rows per user")
    task_rows, user_rows = engine.count(schema, sources, tasks, key_dtype, fixed)
    table_rows = ScanPart()
    for task, rows in zip(tasks, task_rows):
        table_rows.add(ScanPart(table_rows={task.pattern: rows}))
    tasks = _known_offsets(tasks, task_rows)
    partitions = plan_partitions(user_rows, rows_per_partition)
    del user_rows
    work = out_dir / "_work"
    try:
        say(f"splitting the raw rows into {partitions.count} user partitions (and checking them)")
        scan = table_rows
        for part in engine.split(schema, sources, tasks, partitions, work / "spill", fixed):
            scan.add(part)
        reasons = refusals(schema, sources, scan)
        if reasons:
            raise Refused("; ".join(reasons))
        times = impression_times(schema, scan)
        boundaries = fixed or resolve_splits(schema, times)
        sizes = scan.split_sizes if times is None else np.bincount(split_of(times, boundaries), minlength=len(SPLIT_NAMES))
        check_splits(schema, sizes, boundaries, allow_empty_splits)
        del times
        ctx = BuildContext(schema, boundaries, mixed,
                           timestamp_columns={c.key: c.timestamp_column for c in sources.consumers},
                           paths={c.key: str(c.table.path) for c in sources.consumers}, data_end=scan.data_end)
        del scan
        say("learning vocabularies and statistics (training period)")
        encoder = AttributeEncoder(schema, boundaries[0])
        summaries, user_counts = engine.summarize(ctx, sources, partitions)
        encoder.fit_summaries(summaries)
        del summaries  # the numeric attributes' training values: not kept through the build
        partitions = partitions.with_user_counts(user_counts)
        say("encoding the partitions' users and examples")
        (work / "parts").mkdir(parents=True, exist_ok=True)
        users = RowGroupWriter(out_dir / "users.parquet")
        reports, example_parts = engine.build(ctx, sources, encoder, partitions, users, work / "parts")
        users.close()
        engine.close()  # the spill is no longer needed
        say("merging the examples by time")
        examples = RowGroupWriter(out_dir / "examples.parquet")
        for table in merge_sorted(example_parts, SORT_TIME, SORT_ROW):
            examples.write(table.drop_columns([SORT_TIME, SORT_ROW]))
        examples.close()
    finally:
        engine.close()
        _remove_work(work)
    report = merge_reports(reports)
    report.drop("events.rows_of_no_stream", _unused_event_rows(data_dir, schema, report))
    return finish_store(schema, data_dir, encoder, report, boundaries, out_dir)


def _known_offsets(tasks: list[ReadTask], rows: list[int]) -> list[ReadTask]:
    """The tasks with every ``_row`` offset, from each task's rows as counted (files may not tell)."""
    out: list[ReadTask] = []
    for pattern in dict.fromkeys(t.pattern for t in tasks):
        mine = [(t, n) for t, n in zip(tasks, rows) if t.pattern == pattern]
        out += with_offsets([t for t, _ in mine], [n for _, n in mine])
    return out


def _remove_work(work: Path) -> None:
    """Remove the work folder this build created (spill and part files only)."""
    shutil.rmtree(work, ignore_errors=True)
