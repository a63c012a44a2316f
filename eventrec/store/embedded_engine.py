"""The embedded engine of the partitioned build: this process, one partition at a time.

Scan and split read each table once, batch by batch (:func:`~eventrec.store.sources.read_batches`);
the split writes every consumer's rows to per-partition spill files (:mod:`eventrec.store.spill`).
Each partition is then read twice, for its training summary and for its rows, and freed before the
next: peak memory follows the largest partition, not the logs. The users of a partition are written
by a background thread while the next partition is encoded (pyarrow releases the GIL).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from eventrec.schema import Schema
from eventrec.store.assemble import RowGroupWriter, write_ipc
from eventrec.store.encoding import AttributeEncoder, BuildReport, TrainingSummary
from eventrec.store.layout import USER
from eventrec.store.partition import BuildContext, PartitionRows, build_partition, prepare, summarize
from eventrec.store.scan import ScanPart, scan_batch
from eventrec.store.sources import ReadTask, Sources, read_batches
from eventrec.store.spill import SpillWriter, read_spill
from eventrec.store.user_partitions import UserPartitions

SCAN_BATCH_ROWS = 262_144  # the first pass reads a few columns: larger batches, less overhead


class EmbeddedEngine:
    """Runs the partitioned build in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.spill: Path | None = None

    def scan(self, schema: Schema, sources: Sources, tasks: list[ReadTask], key_dtype, boundaries) -> list[ScanPart]:
        parts = []
        for task in tasks:
            part = ScanPart(table_rows={task.pattern: 0})
            table = sources.tables[task.pattern]
            for batch in read_batches(table, task, sources.raw_columns(task.pattern, scan=True), SCAN_BATCH_ROWS):
                part.add(scan_batch(schema, sources, task.pattern, batch, key_dtype, boundaries))
            parts.append(part)
        return parts

    def split(self, sources: Sources, tasks: list[ReadTask], partitions: UserPartitions, work_dir: Path) -> None:
        self.spill = work_dir
        writer = SpillWriter(work_dir)
        try:
            for task in tasks:
                consumers = [(sources.consumers.index(c), c) for c in sources.of_table(task.pattern)]
                for batch in read_batches(sources.tables[task.pattern], task, sources.raw_columns(task.pattern)):
                    for index, consumer in consumers:
                        rows = consumer.rows(batch)
                        writer.write(index, partitions.assign(rows[USER]), rows)
        finally:
            writer.close()

    def _rows(self, sources: Sources, partition: int) -> PartitionRows:
        assert self.spill is not None
        return PartitionRows({c.key: read_spill(self.spill, i, partition, c.empty()) for i, c in enumerate(sources.consumers)})

    def summarize(self, ctx: BuildContext, sources: Sources, partitions: UserPartitions) -> list[TrainingSummary]:
        return [summarize(ctx, prepare(ctx, self._rows(sources, p), BuildReport())) for p in range(partitions.count)]

    def build(self, ctx: BuildContext, sources: Sources, encoder: AttributeEncoder, partitions: UserPartitions,
              users: RowGroupWriter, parts_dir: Path) -> tuple[list[BuildReport], list[Path]]:
        reports, parts = [], []
        offsets = partitions.offsets
        writer = ThreadPoolExecutor(max_workers=1)
        pending: Future | None = None
        try:
            for p in range(partitions.count):
                report = BuildReport()
                prepared = prepare(ctx, self._rows(sources, p), report)
                users_table, examples = build_partition(ctx, encoder, prepared, offsets[p], report)
                del prepared
                if pending is not None:
                    pending.result()  # one partition's users in flight at most
                pending = writer.submit(users.write, users_table)
                del users_table
                path = parts_dir / f"examples-{p}.arrow"
                write_ipc(examples, path)
                reports.append(report)
                parts.append(path)
            if pending is not None:
                pending.result()
        finally:
            writer.shutdown(wait=True)
        return reports, parts

    def close(self) -> None:
        self.spill = None
