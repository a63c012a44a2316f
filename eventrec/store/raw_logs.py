"""Reading raw Parquet/CSV logs lazily, with errors that name the file, the column and the row.

Every raw table is scanned with Polars (lazily, so that only the needed columns are read) and given
a ``_row`` column: the 0-based row number in the file, used to name the first offending row of any
bad value and to keep the file order as the tie-break between events with equal timestamps.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from eventrec.store.csv_errors import csv_separator, locate_csv_error

ROW = "_row"
TIMESTAMP_SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000}
# Timestamps outside [1970-01-01, 2200-01-01) are rejected as out of range.
MAX_TIMESTAMP_SECONDS = 7_258_118_400


class DataError(ValueError):
    """Bad raw data; the message names the file, the column and, where it applies, the first bad row."""


@dataclass(frozen=True)
class RawTable:
    """A lazily scanned raw file plus the path used in error messages and the files it reads."""

    frame: pl.LazyFrame
    path: Path
    files: tuple[Path, ...] = ()

    def columns(self) -> dict[str, pl.DataType]:
        try:
            return dict(self.frame.collect_schema())
        except Exception as error:  # polars raises several types for unreadable files
            raise self.read_error(error, {}) from None

    def collect(self, frame: pl.LazyFrame, streaming: bool = False) -> pl.DataFrame:
        """``frame`` (a query of this table) collected; a read error becomes a :class:`DataError`
        naming the file, the column and the row."""
        try:
            return frame.collect(engine="streaming") if streaming else frame.collect()
        except Exception as error:  # polars raises several types for unreadable files
            raise self.read_error(error, self.columns()) from None

    def read_error(self, error: Exception, types: dict[str, pl.DataType]) -> DataError:
        where = locate_csv_error(list(self.files), {k: v for k, v in types.items() if k != ROW})
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return DataError(where or f"{self.path}: cannot be read: {first_line}")


def resolve_files(data_dir: Path, pattern: str) -> list[Path]:
    """Files named by ``pattern`` (relative to ``data_dir``; globs allowed), sorted for determinism."""
    path = Path(pattern)
    full = path if path.is_absolute() else data_dir / path
    files = sorted(Path(p) for p in glob.glob(str(full)))
    if not files:
        raise DataError(f"{full}: no such file")
    return files


def scan_table(data_dir: Path, pattern: str) -> RawTable:
    """Scan Parquet (``.parquet``) or CSV (anything else; ``.tsv`` is tab-separated) lazily."""
    files = resolve_files(data_dir, pattern)
    frames = []
    for file in files:
        if file.stat().st_size == 0:
            raise DataError(f"{file}: empty file")
        if file.suffix == ".parquet":
            frame = pl.scan_parquet(file)
        else:
            frame = pl.scan_csv(file, separator=csv_separator(file), infer_schema_length=10_000)
        frames.append(frame)
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    frame = frame.with_row_index(ROW)
    table = RawTable(frame, files[0] if len(files) == 1 else data_dir / pattern, tuple(files))
    columns = table.columns()
    if len(columns) <= 1:
        raise DataError(f"{table.path}: no columns found (empty file?)")
    return table


def require_columns(table: RawTable, columns: dict[str, str]) -> None:
    """Check that each column exists and has the expected kind.

    ``columns`` maps a column name to what it is for: "id" (any integer or string), "timestamp",
    "number", "list" (a list of ids), "vector" (a list or array of floats), "label".
    """
    have = table.columns()
    for name, purpose in columns.items():
        if name not in have:
            raise DataError(f"{table.path}: missing column {name!r} (needed as {purpose}); columns: {sorted(c for c in have if c != ROW)}")
        dtype = have[name]
        ok = {
            "id": dtype.is_integer() or dtype in (pl.String, pl.Categorical, pl.Boolean),
            "timestamp": dtype.is_integer() or dtype.is_temporal() or dtype == pl.String,
            "number": dtype.is_numeric() or dtype == pl.Null,
            "label": dtype.is_numeric() or dtype in (pl.Boolean, pl.Null),
            "list": isinstance(dtype, (pl.List, pl.Array)) or dtype == pl.String,
            "vector": isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_float() if isinstance(dtype, (pl.List, pl.Array)) else False,
        }[purpose]
        if not ok:
            raise DataError(f"{table.path}: column {name!r} has type {dtype}, expected {purpose}")


def first_row(table: RawTable, frame: pl.DataFrame | pl.LazyFrame, condition: pl.Expr) -> int | None:
    """The file row number of the first row where ``condition`` holds, or None."""
    lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    hit = lazy.filter(condition).select(pl.col(ROW).min()).collect().item()
    return None if hit is None else int(hit)


def timestamp_seconds(table: RawTable, column: str, unit: str) -> pl.Expr:
    """An expression giving ``column`` as int64 seconds since the epoch (floor for ms/us)."""
    dtype = table.columns()[column]
    col = pl.col(column)
    if dtype.is_temporal():
        expr = col.cast(pl.Datetime("us")).dt.epoch("s")
    elif dtype == pl.String:
        # integers in the schema's unit, else ISO dates/datetimes (UTC when no zone is given)
        as_int = col.str.strip_chars().str.to_integer(strict=False) // TIMESTAMP_SCALE[unit]
        as_date = col.str.to_datetime(strict=False, time_zone="UTC", time_unit="us").dt.epoch("s")
        expr = pl.coalesce(as_int, as_date)
    else:  # beyond Int64 (UInt64 above 2^63): null here, reported as out of range by check_timestamps
        expr = col.cast(pl.Int64, strict=False) // TIMESTAMP_SCALE[unit]
    return expr.cast(pl.Int64)


def check_timestamps(table: RawTable, frame: pl.DataFrame | pl.LazyFrame, raw_column: str, seconds_column: str) -> None:
    """Reject null, unparsable or out-of-range timestamps, naming the first offending row."""
    frame = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    bad_parse = pl.col(seconds_column).is_null()
    row = first_row(table, frame, bad_parse & pl.col(raw_column).is_not_null())
    if row is not None:
        value = frame.filter(pl.col(ROW) == row).select(raw_column).collect().item()
        what = "out of range" if frame.collect_schema()[raw_column].is_integer() else "unparsable"
        raise DataError(f"{table.path}: column {raw_column!r}, row {row}: {what} timestamp {value!r}")
    row = first_row(table, frame, pl.col(raw_column).is_null())
    if row is not None:
        raise DataError(f"{table.path}: column {raw_column!r}, row {row}: null timestamp")
    out_of_range = (pl.col(seconds_column) < 0) | (pl.col(seconds_column) >= MAX_TIMESTAMP_SECONDS)
    row = first_row(table, frame, out_of_range)
    if row is not None:
        value = frame.filter(pl.col(ROW) == row).select(raw_column).collect().item()
        raise DataError(
            f"{table.path}: column {raw_column!r}, row {row}: timestamp {value!r} out of range "
            "(expected 1970..2200 in the schema's timestamp_unit)"
        )


def check_not_null(table: RawTable, frame: pl.DataFrame | pl.LazyFrame, column: str, what: str, raw_name: str | None = None) -> None:
    """Reject nulls in ``column`` (called ``raw_name`` in the file), naming the first offending row."""
    row = first_row(table, frame, pl.col(column).is_null())
    if row is not None:
        raise DataError(f"{table.path}: column {(raw_name or column)!r}, row {row}: null {what}")
