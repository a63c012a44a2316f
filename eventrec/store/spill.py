"""The embedded engine's spill: each consumer's raw rows, split by user partition, in Arrow IPC files.

One pass over the raw tables writes ``{consumer}-{partition}-{piece}.arrow`` (uncompressed Arrow IPC,
string views kept as they are) inside the build's temporary folder, one piece per writer (writers
take contiguous runs of read tasks, so pieces in order are rows in file order); each partition's
files are then read for its summary. The files are removed with that folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc


class SpillWriter:
    """Appends row batches to one IPC file per (consumer, partition); :meth:`close` finishes them."""

    def __init__(self, folder: Path, piece: int = 0):
        self.folder = folder
        self.piece = piece
        folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[tuple[int, int], ipc.RecordBatchFileWriter] = {}

    def write(self, consumer: int, partitions: np.ndarray, frame: pl.DataFrame) -> None:
        """Append ``frame``'s rows to their partitions' files (``partitions [rows]``; -1: dropped)."""
        if frame.height == 0:
            return
        if (partitions == partitions[0]).all():  # e.g. logs sorted by user: no gather
            ordered = partitions
        else:
            order = np.argsort(partitions, kind="stable")
            ordered, frame = partitions[order], frame[order]
        table = frame.to_arrow(compat_level=pl.CompatLevel.newest())
        edges = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1], [True]]))
        for start, end in zip(edges[:-1], edges[1:]):
            partition = int(ordered[start])
            if partition < 0:
                continue
            writer = self._writers.get((consumer, partition))
            if writer is None:
                writer = ipc.new_file(spill_path(self.folder, consumer, partition, self.piece), table.schema)
                self._writers[(consumer, partition)] = writer
            writer.write_table(table.slice(start, end - start))

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def spill_path(folder: Path, consumer: int, partition: int, piece: int) -> Path:
    return folder / f"{consumer}-{partition}-{piece}.arrow"


def prepared_path(folder: Path, consumer: int, partition: int) -> Path:
    """The rows of :func:`eventrec.store.partition.prepare`, written back by the summary step."""
    return folder / f"prepared-{consumer}-{partition}.arrow"


def read_spill(folder: Path, consumer: int, partition: int, pieces: int, empty: pl.DataFrame, remove: bool = False) -> pl.DataFrame:
    """One consumer's rows of one partition, its ``pieces`` in order (``empty``, its columns, when
    it has none); ``remove``: delete the files once read."""
    frames = []
    for piece in range(pieces):
        path = spill_path(folder, consumer, partition, piece)
        if not path.exists():
            continue
        with pa.OSFile(str(path)) as file:  # read, not memory-mapped: the pages are freed with the frame
            frame = pl.from_arrow(ipc.open_file(file).read_all(), rechunk=False)
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame.cast(dict(empty.schema)) if frame.schema != empty.schema else frame)
        if remove:
            path.unlink()
    if not frames:
        return empty
    return pl.concat(frames, rechunk=False) if len(frames) > 1 else frames[0]
