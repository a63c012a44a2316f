"""Writing ``users.parquet`` and ``examples.parquet`` from the partitions' parts, in bounded memory.

The in-memory build writes each file with one :func:`~eventrec.store.layout.write_parquet` call
(row groups of ``ROW_GROUP`` rows). :class:`RowGroupWriter` takes the same rows in pieces and writes
the same row groups with the same writer settings, each from contiguous arrays, so that the file is
byte-identical. Users arrive in partition order (partitions are ranges of the sorted ids); examples
are merged from the partitions' parts by (time, file row) with :func:`merge_sorted`.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from eventrec.store.layout import write_parquet

ROW_GROUP = 65_536  # the row group size of write_parquet


class RowGroupWriter:
    """Writes tables given in pieces as one Parquet file, as :func:`write_parquet` would the whole.
    Row groups are compressed and written by a background thread (one in flight: pyarrow releases
    the GIL), so that the caller computes the next rows meanwhile."""

    def __init__(self, path: Path):
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._in_flight: Future | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None and not self._pending and not self.rows:
            self._schema = table.schema
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def _flush(self, rows: int) -> None:
        pending = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        group, rest = pending.slice(0, rows), pending.slice(rows)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self._schema, compression="zstd", write_statistics=True, store_schema=False)
        self._wait()
        self._in_flight = self._thread.submit(self._write_group, group)
        self.rows += group.num_rows
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _write_group(self, group: pa.Table) -> None:
        assert self._writer is not None
        self._writer.write_table(group.combine_chunks(), row_group_size=ROW_GROUP)  # contiguous arrays, as write_parquet's

    def _wait(self) -> None:
        if self._in_flight is not None:
            self._in_flight.result()
            self._in_flight = None

    def close(self) -> None:
        """Write the last, partial row group (a file with no rows is written as write_parquet would)."""
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
            self._wait()
            if self._writer is None:
                write_parquet(self._schema.empty_table(), self.path)
            else:
                self._writer.close()
        finally:
            self._thread.shutdown(wait=True)


def write_ipc(table: pa.Table, path: Path, batch_rows: int | None = ROW_GROUP) -> None:
    """A part file: ``table`` as uncompressed Arrow IPC, in record batches of ``batch_rows`` rows
    (None: the table's own chunks)."""
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)


def part_batch_rows(parts: int) -> int:
    """The record batch size of the example parts of ``parts`` partitions: one batch of every part
    together is about one row group, so that :func:`merge_sorted` holds about two row groups."""
    return max(1_024, ROW_GROUP // max(parts, 1))


def _count_before(times: np.ndarray, rows: np.ndarray, t: int, r: int) -> int:
    """How many (time, row) keys of a sorted run are < (t, r)."""
    lo, hi = np.searchsorted(times, t, side="left"), np.searchsorted(times, t, side="right")
    return int(lo + np.searchsorted(rows[lo:hi], r, side="left"))


def _frontiers(parts: list[Path], time_column: str, row_column: str, target_rows: int) -> list[tuple[int, int]]:
    """Keys splitting the merged run into rounds of about ``target_rows`` rows: from the first key and
    the length of every batch of every part (read through a memory map: a page per batch)."""
    starts = []
    for path in parts:
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                if batch.num_rows:
                    starts.append((int(batch.column(time_column)[0].as_py()), int(batch.column(row_column)[0].as_py()), batch.num_rows))
    starts.sort()
    frontiers, rows = [], 0
    for t, r, n in starts:
        if rows >= target_rows:
            frontiers.append((t, r))
            rows = 0
        rows += n
    return frontiers


class _Run:
    """One part file read a batch at a time, with the rows read but not yet emitted (and their keys)."""

    def __init__(self, path: Path, time_column: str, row_column: str):
        self._file = pa.OSFile(str(path))
        self._reader = ipc.open_file(self._file)
        self._next = 0
        self._columns = (time_column, row_column)
        self.buffer: pa.Table | None = None
        self.times = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros(0, dtype=np.int64)

    def _read(self) -> bool:
        if self._next >= self._reader.num_record_batches:
            return False
        batch = pa.Table.from_batches([self._reader.get_batch(self._next)])
        self._next += 1
        self.buffer = batch if self.buffer is None or not self.buffer.num_rows else pa.concat_tables([self.buffer, batch])
        self.times = np.concatenate([self.times, batch.column(self._columns[0]).to_numpy()])
        self.rows = np.concatenate([self.rows, batch.column(self._columns[1]).to_numpy()])
        return True

    def take_before(self, frontier: tuple[int, int] | None) -> tuple[pa.Table | None, np.ndarray, np.ndarray]:
        """The buffered rows with keys < ``frontier`` (None: all rows left), with their keys."""
        while not len(self.times) or frontier is None or (int(self.times[-1]), int(self.rows[-1])) < frontier:
            if not self._read():
                break
        if not len(self.times):
            return None, self.times, self.rows
        n = len(self.times) if frontier is None else _count_before(self.times, self.rows, *frontier)
        if not n:
            return None, self.times[:0], self.rows[:0]
        assert self.buffer is not None
        taken, times, rows = self.buffer.slice(0, n), self.times[:n], self.rows[:n]
        self.buffer, self.times, self.rows = self.buffer.slice(n), self.times[n:], self.rows[n:]
        return taken, times, rows

    def close(self) -> None:
        self._file.close()


def _sorted_round(pieces: list[pa.Table], times: list[np.ndarray], rows: list[np.ndarray]) -> pa.Table:
    if len(pieces) == 1:
        return pieces[0]
    order = np.lexsort((np.concatenate(rows), np.concatenate(times)))
    return pa.concat_tables(pieces).take(pa.array(order))  # gathers across the chunks: one copy, not two


def merge_sorted(parts: list[Path], time_column: str, row_column: str, target_rows: int = ROW_GROUP, threads: int = 2) -> Iterator[pa.Table]:
    """The rows of the part files, each sorted by (``time_column``, ``row_column``), as one run in
    that order, about ``target_rows`` at a time: each round takes from every part its rows before the
    round's frontier key (:func:`_frontiers`) and sorts those only, ``threads`` rounds at once
    (pyarrow's gathers release the GIL). Memory: ``threads`` rounds' rows plus about one batch per part."""
    runs = [_Run(path, time_column, row_column) for path in parts]
    pool = ThreadPoolExecutor(max_workers=threads)
    in_flight: deque[Future] = deque()
    try:
        for frontier in [*_frontiers(parts, time_column, row_column, target_rows), None]:
            pieces, times, rows = [], [], []
            for run in runs:
                taken, t, r = run.take_before(frontier)
                if taken is not None:
                    pieces.append(taken)
                    times.append(t)
                    rows.append(r)
            if pieces:
                in_flight.append(pool.submit(_sorted_round, pieces, times, rows))
            if len(in_flight) >= threads:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for run in runs:
            run.close()
