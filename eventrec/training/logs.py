"""The run directory's CSV logs (``train_log.csv``, ``eval_log.csv``, ``score_log.csv``), appended row by row."""

from __future__ import annotations

import csv
import os
from pathlib import Path


class CsvLog:
    """A CSV file with fixed ``columns`` (the first one the step); the header is written once (a
    resumed run appends, after :meth:`drop_after` removed the rows it will write again)."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])

    def drop_after(self, step: int) -> int:
        """Keep only the rows of steps ``<= step`` (and the header), atomically; returns how many were
        dropped. A run killed after its last checkpoint logged steps it redoes when resumed from that
        checkpoint: without this they would appear twice. A row cut short by the kill is dropped too."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        keep = [row for row in rows[1:] if len(row) == len(self.columns) and row[0].isdigit() and int(row[0]) <= step]
        if len(keep) == len(rows) - 1:
            return 0
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows([self.columns, *keep])
        os.replace(tmp, self.path)
        return len(rows) - 1 - len(keep)
