"""The embedded engine of the partitioned build: this process, ``workers`` threads (default 2).

The count pass and the split read each table batch by batch (:func:`~eventrec.store.sources.read_batches`),
the read tasks shared among the threads; the split checks every consumer's rows and writes them to
per-partition spill files (:mod:`eventrec.store.spill`), one piece per thread over a contiguous run
of tasks. Each partition is then read for its training summary and its users (its prepared rows,
sorted and without exact duplicates, written back for the build unless they are the raw rows as they
were), and again for its rows: two partitions at a time (Polars, pyarrow and numpy release the GIL),
so peak memory follows the partition size, not the logs. The users are written in partition order as
the partitions complete.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from eventrec.schema import Schema
from eventrec.store.assemble import RowGroupWriter, part_batch_rows, write_ipc
from eventrec.store.encoding import AttributeEncoder, BuildReport, TrainingSummary
from eventrec.store.layout import USER
from eventrec.store.partition import BuildContext, PartitionRows, build_partition, partition_users, prepare, summarize
from eventrec.store.scan import ScanPart, check_rows, count_batch, users_of
from eventrec.store.sources import ReadTask, Sources, read_batches
from eventrec.store.spill import SpillWriter, prepared_path, read_spill, spill_path
from eventrec.store.user_partitions import UserPartitions

COUNT_BATCH_ROWS = 262_144  # the count pass reads the user ids only: larger batches, less overhead
T = TypeVar("T")


class EmbeddedEngine:
    """Runs the partitioned build in this process (see the module docstring), ``workers`` partitions
    at a time in threads (Polars, pyarrow and numpy release the GIL): peak memory grows with it."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(2, os.cpu_count() or 1)
        self.spill: Path | None = None
        self.reports: dict[int, BuildReport] = {}
        self.pieces = 1
        self.unchanged: dict[int, set[str]] = {}
        self.users: dict[int, pl.Series] = {}  # each partition's users, from its summary to its build
        # one pool for every step: the allocators keep per-thread arenas, and memory freed by one step
        # is reused by the next in the same threads
        self._pool = ThreadPoolExecutor(max_workers=self.workers)

    def count(self, schema: Schema, sources: Sources, tasks: list[ReadTask], key_dtype, boundaries=None) -> tuple[list[int], pl.DataFrame]:
        """The user ids alone (the checks run in :meth:`split`, which reads every column anyway)."""
        def one(i: int) -> ScanPart:
            task = tasks[i]
            part = ScanPart(table_rows={task.pattern: 0})
            for batch in read_batches(sources.tables[task.pattern], task, sources.user_columns(task.pattern), COUNT_BATCH_ROWS):
                part.add(count_batch(sources, task.pattern, batch, key_dtype))
            return part

        rows, users = [], ScanPart()
        for task, part in zip(tasks, self._in_order(len(tasks), one)):
            rows.append(part.table_rows[task.pattern])
            users.add(ScanPart(user_rows=part.user_rows))  # summed as the tasks end: a few tasks' users at a time
        return rows, users_of(users.user_rows, key_dtype)

    def split(self, schema: Schema, sources: Sources, tasks: list[ReadTask], partitions: UserPartitions, work_dir: Path,
              boundaries) -> list[ScanPart]:
        """``workers`` writers, each over a contiguous run of the tasks (about equal rows)."""
        self.spill = work_dir
        rows = np.cumsum([task.rows or 0 for task in tasks])
        ends = np.searchsorted(rows, rows[-1] * np.arange(1, self.workers) / self.workers, side="left") + 1 if len(rows) else []
        runs = [run for run in np.split(np.arange(len(tasks)), ends) if len(run)]
        self.pieces = len(runs)

        def write(piece: int) -> list[ScanPart]:
            writer = SpillWriter(work_dir, piece)
            checked = []
            try:
                for i in runs[piece]:
                    task = tasks[i]
                    consumers = [(sources.consumers.index(c), c) for c in sources.of_table(task.pattern)]
                    part = ScanPart()
                    for batch in read_batches(sources.tables[task.pattern], task, sources.raw_columns(task.pattern)):
                        for index, consumer in consumers:
                            rows = consumer.rows(batch)
                            check = check_rows(schema, consumer, rows, batch, boundaries)
                            part.add(check)
                            if not check.refused:  # refused rows are never spilled: the build stops after the split
                                writer.write(index, partitions.assign(rows[USER]), rows)
                    checked.append(part)
            finally:
                writer.close()
            return checked

        return [part for parts in self._in_order(len(runs), write) for part in parts]

    def _rows(self, sources: Sources, partition: int) -> PartitionRows:
        assert self.spill is not None
        return PartitionRows({c.key: read_spill(self.spill, i, partition, self.pieces, c.empty()) for i, c in enumerate(sources.consumers)})

    def _in_order(self, count: int, work: Callable[[int], T]) -> Iterator[T]:
        """``work(p)`` for p in 0..count-1, ``workers`` at a time, results in partition order."""
        pending: deque[Future] = deque()
        try:
            for p in range(count):
                pending.append(self._pool.submit(work, p))
                if len(pending) >= self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            wait(pending)

    def summarize(self, ctx: BuildContext, sources: Sources, partitions: UserPartitions) -> tuple[list[TrainingSummary], list[int]]:
        """Each partition's summary and users; its prepared rows replace its raw rows in the spill
        (with the counts of :func:`prepare`), so that :meth:`build` does not prepare them again."""
        spill = self.spill
        assert spill is not None

        def one(p: int) -> TrainingSummary:
            report = BuildReport()
            prepared = prepare(ctx, self._rows(sources, p), report)
            summary = summarize(ctx, prepared)
            self.users[p] = partition_users(ctx.schema, prepared)[USER]
            for i, consumer in enumerate(sources.consumers):
                if consumer.key in prepared.unchanged:  # the build reads its raw spill again
                    continue
                write_ipc(prepared.frames[consumer.key].to_arrow(compat_level=pl.CompatLevel.newest()), prepared_path(spill, i, p), None)
                for piece in range(self.pieces):
                    spill_path(spill, i, p, piece).unlink(missing_ok=True)
            self.reports[p] = report
            self.unchanged[p] = prepared.unchanged
            return summary

        summaries = list(self._in_order(partitions.count, one))
        return summaries, [len(self.users[p]) for p in range(partitions.count)]

    def _prepared(self, ctx: BuildContext, sources: Sources, partition: int) -> PartitionRows:
        """The rows :meth:`summarize` prepared: written back, or raw rows it left as they were."""
        assert self.spill is not None
        frames = {}
        for i, consumer in enumerate(sources.consumers):
            if consumer.key in self.unchanged[partition]:
                raw = read_spill(self.spill, i, partition, self.pieces, consumer.empty(), remove=True)
                frames[consumer.key] = raw.drop(ctx.timestamp_columns[consumer.key])
                continue
            path = prepared_path(self.spill, i, partition)
            with pa.OSFile(str(path)) as file:
                frames[consumer.key] = pl.from_arrow(ipc.open_file(file).read_all(), rechunk=False)
            path.unlink()
        return PartitionRows(frames)  # type: ignore[arg-type]

    def build(self, ctx: BuildContext, sources: Sources, encoder: AttributeEncoder, partitions: UserPartitions,
              users: RowGroupWriter, parts_dir: Path) -> tuple[list[BuildReport], list[Path]]:
        offsets = partitions.offsets

        def one(p: int) -> tuple[pa.Table, Path]:
            mine = self.users.pop(p)
            users_table, examples = build_partition(ctx, encoder, self._prepared(ctx, sources, p), offsets[p], self.reports[p], mine)
            path = parts_dir / f"examples-{p}.arrow"
            write_ipc(examples, path, part_batch_rows(partitions.count))
            return users_table, path

        parts = []
        for users_table, path in self._in_order(partitions.count, one):
            users.write(users_table)  # in partition order
            parts.append(path)
        return [self.reports[p] for p in range(partitions.count)], parts

    def close(self) -> None:
        self.spill = None
        self.users.clear()
        self._pool.shutdown(wait=True)
