"""The partitioned build's driver, the same for every engine (embedded Polars, Spark).

    plan      consumers of the raw tables and their read tasks (:mod:`eventrec.store.sources`)
    scan      one pass over every task: users and their row counts, impression times, checks
              (:mod:`eventrec.store.scan`); input the in-memory loaders would refuse is refused here
    plan      user partitions: ranges of the sorted ids of about ``rows_per_partition`` raw rows
    split     every consumer's rows routed to their user's partition (the engine's shuffle)
    summarize per partition, its share of the training vocabularies and statistics; summed here
    build     per partition, with the fitted encoder, its user rows and example rows
    assemble  users.parquet in partition order, examples.parquet merged by (time, file row)

The engine does scan, split, summarize and build (:class:`Engine`); everything else is here.
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
from eventrec.store.scan import ScanPart, impression_times, refusals, user_key_dtype, users_of
from eventrec.store.sources import ReadTask, Sources, plan_sources, read_tasks, with_offsets
from eventrec.store.splits import check_splits, needs_impression_times, resolve_splits, split_of
from eventrec.store.user_partitions import UserPartitions, plan_partitions

DEFAULT_ROWS_PER_PARTITION = 250_000  # about 30 MB of raw rows of the synthetic world; two in flight


class Engine(Protocol):
    """What runs the partitioned work: the embedded engine in this process, or Spark."""

    def scan(self, schema: Schema, sources: Sources, tasks: list[ReadTask], key_dtype, boundaries) -> list[ScanPart]:
        """One :class:`ScanPart` per task (same order)."""

    def split(self, sources: Sources, tasks: list[ReadTask], partitions: UserPartitions, work_dir: Path) -> None:
        """Route every consumer's rows to their partitions (kept until :meth:`close`)."""

    def summarize(self, ctx: BuildContext, sources: Sources, partitions: UserPartitions) -> list[TrainingSummary]:
        """One training summary per partition."""

    def build(self, ctx: BuildContext, sources: Sources, encoder: AttributeEncoder, partitions: UserPartitions,
              users: RowGroupWriter, parts_dir: Path, user_ids: pl.Series) -> tuple[list[BuildReport], list[Path]]:
        """Write the partitions' user rows to ``users`` in partition order and their example rows to
        part files in ``parts_dir``; return the reports and the part files. ``user_ids``: every user,
        sorted (partition ``p``'s are ``user_ids[offsets[p]:][:user_counts[p]]``)."""

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

    say("scanning the raw logs (users, checks)")
    parts = engine.scan(schema, sources, tasks, key_dtype, fixed)
    scan = ScanPart()
    for part in parts:
        scan.add(part)
    reasons = refusals(schema, sources, scan)
    if reasons:
        raise Refused("; ".join(reasons))
    times = impression_times(schema, scan)
    boundaries = fixed or resolve_splits(schema, times)
    sizes = scan.split_sizes if times is None else np.bincount(split_of(times, boundaries), minlength=len(SPLIT_NAMES))
    check_splits(schema, sizes, boundaries, allow_empty_splits)
    del times
    tasks = _known_offsets(tasks, parts)
    user_rows = users_of(scan.user_rows)
    partitions = plan_partitions(user_rows, rows_per_partition)
    user_ids = user_rows[USER]
    del user_rows
    data_end = scan.data_end
    del scan, parts
    ctx = BuildContext(schema, boundaries, mixed,
                       timestamp_columns={c.key: c.timestamp_column for c in sources.consumers},
                       paths={c.key: str(c.table.path) for c in sources.consumers}, data_end=data_end)

    work = out_dir / "_work"
    try:
        say(f"splitting the raw rows into {partitions.count} user partitions")
        engine.split(sources, tasks, partitions, work / "spill")
        say("learning vocabularies and statistics (training period)")
        encoder = AttributeEncoder(schema, boundaries[0])
        encoder.fit_summaries(engine.summarize(ctx, sources, partitions))
        say("encoding the partitions' users and examples")
        (work / "parts").mkdir(parents=True, exist_ok=True)
        users = RowGroupWriter(out_dir / "users.parquet")
        reports, example_parts = engine.build(ctx, sources, encoder, partitions, users, work / "parts", user_ids)
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


def _known_offsets(tasks: list[ReadTask], parts: list[ScanPart]) -> list[ReadTask]:
    """The tasks with every ``_row`` offset, counted per table from the scan where files do not tell."""
    out: list[ReadTask] = []
    for pattern in dict.fromkeys(t.pattern for t in tasks):
        mine = [(t, p) for t, p in zip(tasks, parts) if t.pattern == pattern]
        out += with_offsets([t for t, _ in mine], [p.table_rows[pattern] for _, p in mine])
    return out


def _remove_work(work: Path) -> None:
    """Remove the work folder this build created (spill and part files only)."""
    shutil.rmtree(work, ignore_errors=True)
