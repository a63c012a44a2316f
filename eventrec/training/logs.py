"""The run directory's CSV logs (``train_log.csv``, ``eval_log.csv``, ``score_log.csv``), appended row by row."""

from __future__ import annotations

import csv
from pathlib import Path


class CsvLog:
    """A CSV file with fixed ``columns``; the header is written once (a resumed run appends)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])
