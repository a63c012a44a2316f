"""Naming the file, column and row of a CSV that Polars failed to read.

Polars reports a bad CSV as a bare ``ComputeError`` (``invalid utf-8 sequence``, ``found more fields
than defined in 'Schema'``, ``could not parse 'abc' as dtype f64`` for a row past the rows the types
were inferred from), without the row. On that error path only, :func:`locate_csv_error` reads the file
again, plainly, and finds the first offending row: a row is numbered like ``_row`` (0-based, header
excluded), a line 1-based as an editor shows it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl


def csv_separator(file: Path) -> str:
    """The separator eventrec reads ``file`` with: tab for ``.tsv`` / ``.inter``, else a comma."""
    return "\t" if file.suffix in (".tsv", ".inter") else ","


def _bad_bytes(file: Path, separator: str) -> str | None:
    """The first line holding bytes that are not UTF-8, with its column."""
    with open(file, "rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").rstrip("\r\n").split(separator)
        if "\ufffd" in ",".join(header):
            return "line 1 (the header): bytes that are not UTF-8"
        for row, line in enumerate(handle):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                fields = line.decode("utf-8", errors="replace").split(separator)
                column = next((header[i] if i < len(header) else f"#{i + 1}" for i, f in enumerate(fields) if "\ufffd" in f), "?")
                return f"column {column!r}, row {row} (line {row + 2}): bytes that are not UTF-8"
    return None


def _ragged_row(file: Path, separator: str) -> str | None:
    """The first row whose number of fields differs from the header's."""
    with open(file, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=separator)
        header = next(reader, [])
        for row, fields in enumerate(reader):
            if fields and len(fields) != len(header):
                return (f"row {row} (line {reader.line_num}): {len(fields)} fields, the header has {len(header)} "
                        f"(columns {header[:8]}{'...' if len(header) > 8 else ''})")
    return None


def _unparsable_value(file: Path, separator: str, types: dict[str, pl.DataType]) -> str | None:
    """The first value that does not parse as its column's type (inferred from the first rows)."""
    try:
        text = pl.read_csv(file, separator=separator, infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy")
    except Exception:  # not readable even as text (no header, a broken quote): the caller reports Polars' own words
        return None
    for column, dtype in types.items():
        if column not in text.columns or dtype == pl.String:
            continue
        source = text[column]
        try:
            parsed = source.str.strip_chars().cast(dtype, strict=False)
        except Exception:  # a type Polars cannot cast text to: not the cause
            continue
        bad = (source.is_not_null() & (source.str.strip_chars() != "") & parsed.is_null()).arg_true()
        if len(bad):
            row = int(bad[0])
            return f"column {column!r}, row {row}: cannot parse {source[row]!r} as {dtype} (the type of its first rows)"
    return None


def locate_csv_error(files: list[Path], types: dict[str, pl.DataType]) -> str | None:
    """``"FILE: column C, row R: what"`` for the first problem found in ``files``, or None."""
    for file in files:
        if file.suffix == ".parquet":
            continue
        separator = csv_separator(file)
        for find in (_bad_bytes, _ragged_row):
            found = find(file, separator)
            if found:
                return f"{file}: {found}"
        found = _unparsable_value(file, separator, types)
        if found:
            return f"{file}: {found}"
    return None

