"""The Spark engine of the partitioned build: the same partitions, run by Apache Spark.

The driver (:mod:`eventrec.store.partitioned`) is the same as the embedded engine's; Spark runs the
four distributed steps with the same functions, so the store is the same, byte for byte:

- **count**: one Spark task per read task (a Parquet row group or a CSV file), each reading its user
  ids and the columns the checks read (:meth:`~eventrec.store.sources.Sources.check_columns`) with
  the embedded reader (:func:`~eventrec.store.sources.read_batches`: pyarrow, the dtypes of the
  Polars scan) and returning its counts and its :func:`~eventrec.store.scan.check_rows` parts (on
  :meth:`~eventrec.store.sources.Consumer.check_view`): the driver refuses bad input before any
  shuffle;
- **split**: the read tasks again (every needed column), each emitting ``(partition,
  (consumer, Arrow IPC bytes))`` for every consumer's rows, shuffled with ``partitionBy`` so that
  Spark partition ``p`` holds exactly user partition ``p`` (kept on disk for the next two steps);
- **summarize**: per Spark partition, the training summary of its rows and its users;
- **build**: per Spark partition, with the fitted encoder (broadcast), its user rows and example rows
  written as part files into the build's work folder; the driver writes ``users.parquet`` from them
  in partition order and merges the examples.

Spark reads the raw files through the embedded reader rather than ``spark.read``: Spark's own readers
convert types (unsigned integers, timestamps to the session time zone, CSV inference), and the
point of this engine is the same store. The raw files and the store's folder must be at the same
path on the driver and every executor (a shared file system), and eventrec installed on the
executors' Python. See ``docs/spark_build.md``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

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
from eventrec.store.sources import BATCH_ROWS, ReadTask, Sources, plan_sources, read_batches
from eventrec.store.user_partitions import UserPartitions

COUNT_BATCH_ROWS = 262_144
DEFAULT_MASTER = "local[*]"


def spark_session(master: str | None) -> Any:
    """The active session (e.g. a test's), else the session of ``spark-submit`` (its master), else a
    new one on ``master`` (default ``local[*]``; local workers run this Python)."""
    from pyspark.sql import SparkSession

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ValueError("engine 'spark': no Java runtime (java not on PATH, JAVA_HOME unset); Spark 4 needs Java 17+ "
                         "(Debian: apt-get install openjdk-17-jre-headless; make spark does it as root)")
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    builder = SparkSession.builder.appName("eventrec build").config("spark.ui.showConsoleProgress", "false")
    if master is None and "PYSPARK_GATEWAY_PORT" in os.environ:
        return builder.getOrCreate()  # under spark-submit: its --master and --conf
    master = master or DEFAULT_MASTER
    if master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        os.environ["PYSPARK_PYTHON"] = sys.executable  # local workers run this Python (and its eventrec)
    return builder.master(master).getOrCreate()


# -- what the executors run (module-level functions: pickled by reference) -----------------------

def _count_task(schema: Schema, data_dir: str, task: ReadTask, key_dtype: pl.DataType, boundaries: tuple[int, int] | None) -> bytes:
    """The task's counts and its checks, from its user ids and checked columns only."""
    sources = plan_sources(schema, Path(data_dir))
    counted, checked = ScanPart(table_rows={task.pattern: 0}), ScanPart()
    for batch in read_batches(sources.tables[task.pattern], task, sources.check_columns(task.pattern), COUNT_BATCH_ROWS):
        counted.add(count_batch(sources, task.pattern, batch, key_dtype))
        for consumer in sources.of_table(task.pattern):
            checked.add(check_rows(schema, consumer, consumer.check_view(batch), batch, boundaries))
    return pickle.dumps((counted, checked))


def _split_task(schema: Schema, data_dir: str, task: ReadTask, partitions: UserPartitions) -> Iterator[tuple[int, tuple[int, bytes]]]:
    sources = plan_sources(schema, Path(data_dir))
    consumers = [(sources.consumers.index(c), c) for c in sources.of_table(task.pattern)]
    for batch in read_batches(sources.tables[task.pattern], task, sources.raw_columns(task.pattern), BATCH_ROWS):
        for index, consumer in consumers:
            rows = consumer.rows(batch)
            assigned = partitions.assign(rows[USER])
            order = np.argsort(assigned, kind="stable")
            assigned, rows = assigned[order], rows[order]
            edges = np.flatnonzero(np.concatenate([[True], assigned[1:] != assigned[:-1], [True]])) if len(assigned) else []
            for start, end in zip(edges[:-1], edges[1:]):
                if assigned[start] >= 0:  # -1: no user id (a derived label's event): in no partition
                    yield int(assigned[start]), (index, _ipc_bytes(rows.slice(int(start), int(end - start))))


def _ipc_bytes(frame: pl.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _rows(schema: Schema, data_dir: str, pieces: Iterator[tuple[int, tuple[int, bytes]]]) -> PartitionRows:
    """The partition's rows by consumer, from its shuffled pieces (any order: prepare sorts)."""
    sources = plan_sources(schema, Path(data_dir))
    frames: dict[int, list[pl.DataFrame]] = {}
    for _, (index, payload) in pieces:
        frame = pl.from_arrow(ipc.open_stream(payload).read_all(), rechunk=False)
        frames.setdefault(index, []).append(frame)  # type: ignore[arg-type]
    out = {}
    for index, consumer in enumerate(sources.consumers):
        empty = consumer.empty()
        parts = [f.cast(dict(empty.schema)) if f.schema != empty.schema else f for f in frames.get(index, [])]
        out[consumer.key] = pl.concat(parts) if parts else empty
    return PartitionRows(out)


def _summarize_partition(ctx: BuildContext, data_dir: str, pieces: Iterator) -> Iterator[bytes]:
    prepared = prepare(ctx, _rows(ctx.schema, data_dir, pieces), BuildReport())
    yield pickle.dumps((summarize(ctx, prepared), partition_users(ctx.schema, prepared).height))


def _build_partition(ctx: BuildContext, data_dir: str, encoder: AttributeEncoder, offsets: list[int], parts_dir: str,
                     partition: int, pieces: Iterator) -> Iterator[bytes]:
    report = BuildReport()
    prepared = prepare(ctx, _rows(ctx.schema, data_dir, pieces), report)
    users, examples = build_partition(ctx, encoder, prepared, offsets[partition], report)
    write_ipc(users, Path(parts_dir) / f"users-{partition}.arrow")
    write_ipc(examples, Path(parts_dir) / f"examples-{partition}.arrow", part_batch_rows(len(offsets)))
    yield pickle.dumps((partition, report))


class SparkEngine:
    """Runs the partitioned build on Spark (see the module docstring)."""

    def __init__(self, master: str | None = None):
        self.spark = spark_session(master)
        self.context = self.spark.sparkContext
        self._split: Any = None
        self._job: tuple[Schema, str] | None = None
        self._checked: list[ScanPart] = []

    def count(self, schema: Schema, sources: Sources, tasks: list[ReadTask], key_dtype, boundaries=None) -> tuple[list[int], pl.DataFrame]:
        """Counts and checks in one job over the user ids and the checked columns (the checks are
        what :meth:`split` returns)."""
        data_dir = str(sources.data_dir)
        rdd = self.context.parallelize(tasks, max(1, len(tasks)))
        rows, users, self._checked = [], ScanPart(), []
        for task, payload in zip(tasks, rdd.map(lambda task: _count_task(schema, data_dir, task, key_dtype, boundaries)).collect()):
            counted, checked = pickle.loads(payload)
            rows.append(counted.table_rows[task.pattern])
            users.add(ScanPart(user_rows=counted.user_rows))
            self._checked.append(checked)
        return rows, users_of(users.user_rows, key_dtype)

    def split(self, schema: Schema, sources: Sources, tasks: list[ReadTask], partitions: UserPartitions, work_dir: Path,
              boundaries) -> list[ScanPart]:
        from pyspark import StorageLevel

        data_dir = str(sources.data_dir)
        self._job = (schema, data_dir)
        rdd = self.context.parallelize(tasks, max(1, len(tasks)))
        pieces = rdd.flatMap(lambda task: _split_task(schema, data_dir, task, partitions))
        self._split = pieces.partitionBy(partitions.count, lambda partition: partition).persist(StorageLevel.DISK_ONLY)  # lazy: runs in summarize
        return self._checked  # from count

    def summarize(self, ctx: BuildContext, sources: Sources, partitions: UserPartitions) -> tuple[list[TrainingSummary], list[int]]:
        assert self._job is not None
        data_dir = self._job[1]
        results = [pickle.loads(r) for r in self._split.mapPartitions(lambda pieces: _summarize_partition(ctx, data_dir, pieces)).collect()]
        return [summary for summary, _ in results], [users for _, users in results]

    def build(self, ctx: BuildContext, sources: Sources, encoder: AttributeEncoder, partitions: UserPartitions,
              users: RowGroupWriter, parts_dir: Path) -> tuple[list[BuildReport], list[Path]]:
        assert self._job is not None
        data_dir, offsets, folder = self._job[1], partitions.offsets, str(parts_dir)
        shared = self.context.broadcast(encoder)
        results = self._split.mapPartitionsWithIndex(
            lambda p, pieces: _build_partition(ctx, data_dir, shared.value, offsets, folder, p, pieces)).collect()
        reports = dict(pickle.loads(r) for r in results)
        for p in range(partitions.count):  # users.parquet in partition order, a batch at a time
            path = parts_dir / f"users-{p}.arrow"
            with pa.OSFile(str(path)) as file:
                reader = ipc.open_file(file)
                for i in range(reader.num_record_batches):
                    users.write(pa.Table.from_batches([reader.get_batch(i)]))
            path.unlink()
        return [reports[p] for p in range(partitions.count)], [parts_dir / f"examples-{p}.arrow" for p in range(partitions.count)]

    def close(self) -> None:
        if self._split is not None:
            self._split.unpersist()
            self._split = None
