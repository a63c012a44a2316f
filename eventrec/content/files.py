"""Reading keyed side tables (item text, item vectors) with errors that name the file, the column and
the row, and writing Parquet files atomically (a temporary file beside the target, then a rename)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from eventrec.store.raw_logs import ROW, DataError, check_not_null, require_columns, scan_table


def read_keyed(path: Path, key: str, column: str, purpose: str) -> pl.DataFrame:
    """``path``'s ``key`` and ``column`` (plus ``_row``, the 0-based file row), sorted by key.

    ``purpose``: ``"text"`` (a string column) or ``"vector"`` (a list/array of floats). A missing or
    mistyped column, a null key or value, or a key given twice raises :class:`DataError` naming the
    file, the column and the first offending row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    table = scan_table(path.parent, path.name)
    require_columns(table, {key: "id"} | ({column: "vector"} if purpose == "vector" else {}))
    if purpose == "text":
        have = table.columns()
        if column not in have:
            raise DataError(f"{table.path}: missing column {column!r} (needed as text); columns: {sorted(c for c in have if c != ROW)}")
        if have[column] != pl.String:
            raise DataError(f"{table.path}: column {column!r} has type {have[column]}, expected text (a string)")
    frame = table.collect(table.frame.select(ROW, key, column))
    check_not_null(table, frame, key, "key")
    check_not_null(table, frame, column, purpose)
    repeated = frame.sort(ROW).filter(~pl.col(key).is_first_distinct())  # the first row that repeats an earlier key
    if repeated.height:
        row, value = repeated.sort(ROW).select(ROW, key).row(0)
        raise DataError(f"{table.path}: column {key!r}, row {row}: key {value!r} appears more than once")
    return frame.sort(key)


def vectors_of(frame: pl.DataFrame, column: str, path: Path) -> np.ndarray:
    """The ``column`` of :func:`read_keyed` as ``[n, dim]`` float32; rows of unequal length or with
    non-finite values raise :class:`DataError` naming the row."""
    lengths = frame[column].list.len() if isinstance(frame.schema[column], pl.List) else None
    if lengths is not None and lengths.n_unique() > 1:
        dim = int(lengths[0])
        position = int(np.argmax((lengths != dim).to_numpy()))
        raise DataError(f"{path}: column {column!r}, row {frame[ROW][position]}: {lengths[position]} floats, the row of the first key has {dim}")
    dim = int(lengths[0]) if lengths is not None else frame.schema[column].size  # type: ignore[union-attr]
    vectors = np.asarray(frame[column].cast(pl.Array(pl.Float32, dim)).to_numpy(), dtype=np.float32).reshape(len(frame), dim)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise DataError(f"{path}: column {column!r}, row {int(frame[ROW][int(np.argmin(finite))])}: not all values are finite")
    return vectors


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` (deterministic settings) through a temporary file and a rename:
    a kill leaves the previous file or none, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        frame.write_parquet(tmp, compression="zstd", compression_level=3, statistics=True, row_group_size=1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
