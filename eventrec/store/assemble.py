"""Writing ``users.parquet`` and ``examples.parquet`` from the partitions' parts, in bounded memory.

The in-memory build writes each file with one :func:`~eventrec.store.layout.write_parquet` call
(row groups of ``ROW_GROUP`` rows). :class:`RowGroupWriter` takes the same rows in pieces and writes
the same row groups with the same writer settings, each from contiguous arrays, so that the file is
byte-identical. Users arrive in partition order (partitions are ranges of the sorted ids); examples
are merged from the partitions' parts by (time, file row) with :func:`merge_sorted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from eventrec.store.layout import write_parquet

ROW_GROUP = 65_536  # the row group size of write_parquet


class RowGroupWriter:
    """Writes tables given in pieces as one Parquet file, as :func:`write_parquet` would the whole."""

    def __init__(self, path: Path):
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
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
        self._writer.write_table(group.combine_chunks(), row_group_size=ROW_GROUP)
        self.rows += group.num_rows
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        """Write the last, partial row group (a file with no rows is written as write_parquet would)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._writer is None:
            write_parquet(self._schema.empty_table(), self.path)
        else:
            self._writer.close()


PART_BATCH = 8_192  # rows per record batch of a part file: the merge holds one batch per part


def write_ipc(table: pa.Table, path: Path) -> None:
    """A part file: ``table`` as uncompressed Arrow IPC, in record batches of ``PART_BATCH`` rows."""
    with ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=PART_BATCH)


def _batches(path: Path) -> Iterator[pa.Table]:
    with pa.OSFile(str(path)) as file:
        reader = ipc.open_file(file)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])


def _count_at_most(times: np.ndarray, rows: np.ndarray, t: int, r: int) -> int:
    """How many (time, row) keys of a sorted run are <= (t, r)."""
    lo, hi = np.searchsorted(times, t, side="left"), np.searchsorted(times, t, side="right")
    return int(lo + np.searchsorted(rows[lo:hi], r, side="right"))


def merge_sorted(parts: list[Path], time_column: str, row_column: str) -> Iterator[pa.Table]:
    """The rows of the part files, each sorted by (``time_column``, ``row_column``), as one run in
    that order, a batch at a time: rows up to the smallest last key among the runs' current batches
    are emitted (merged by a sort of those rows only), then that batch's run reads its next one."""
    runs = [_batches(p) for p in parts]
    current: list[pa.Table | None] = [next(run, None) for run in runs]
    while True:
        for i, table in enumerate(current):  # skip empty batches
            while table is not None and table.num_rows == 0:
                table = current[i] = next(runs[i], None)
        live = [i for i, table in enumerate(current) if table is not None]
        if not live:
            return
        keys = {i: (current[i].column(time_column).to_numpy(), current[i].column(row_column).to_numpy()) for i in live}  # type: ignore[union-attr]
        frontier = min((int(keys[i][0][-1]), int(keys[i][1][-1])) for i in live)
        pieces, times, rows = [], [], []
        for i in live:
            n = _count_at_most(*keys[i], *frontier)
            if n:
                pieces.append(current[i].slice(0, n))  # type: ignore[union-attr]
                times.append(keys[i][0][:n])
                rows.append(keys[i][1][:n])
                rest = current[i].slice(n)  # type: ignore[union-attr]
                current[i] = rest if rest.num_rows else next(runs[i], None)
        merged = pa.concat_tables(pieces)
        order = np.lexsort((np.concatenate(rows), np.concatenate(times)))
        yield merged.take(pa.array(order)) if len(pieces) > 1 else merged
