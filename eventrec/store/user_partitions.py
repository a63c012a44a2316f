"""User partitions: contiguous ranges of the sorted user ids, each holding about ``rows_per_partition``
raw rows (table rows of the user's events and impressions), so that a build holds one partition's
rows at a time.

Ranges rather than hash buckets: the users of partition ``p`` are rows ``offsets[p] ..`` of
``users.parquet`` (sorted by id), so the partitions' user tables are written one after the other, and
an impression's user row is its partition's offset plus its rank inside the partition. A user is
never split: a user with more rows than the target gets a partition of their own. The plan is made
from the count pass (every table row of a user id, whichever consumer keeps it); the users of the store
a partition holds are counted once its rows are prepared (:meth:`UserPartitions.with_user_counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from eventrec.store.layout import USER

ROWS = "rows"


@dataclass(frozen=True)
class UserPartitions:
    """``boundaries [P-1]``: the first user id of partitions 1..P-1 (sorted, the user key's dtype);
    ``user_counts [P]``: users per partition; ``row_counts [P]``: raw rows per partition (as planned:
    the users and rows of the count pass, until :meth:`with_user_counts` gives the store's users)."""

    boundaries: pl.Series
    user_counts: tuple[int, ...]
    row_counts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.user_counts)

    @property
    def offsets(self) -> list[int]:
        """``[P]``: the ``users.parquet`` row of each partition's first user."""
        return np.concatenate([[0], np.cumsum(self.user_counts)[:-1]]).astype(np.int64).tolist()

    def with_user_counts(self, user_counts: list[int]) -> "UserPartitions":
        """The same partitions with ``user_counts [P]``: the store's users each one holds."""
        if len(user_counts) != self.count:
            raise ValueError(f"{len(user_counts)} user counts for {self.count} partitions")
        return replace(self, user_counts=tuple(int(n) for n in user_counts))

    def assign(self, users: pl.Series) -> np.ndarray:
        """``[n]`` int64 partition of each user id: -1 for null; an id of another dtype is cast to
        the key's (a derived label's events may name users so), and one that does not cast, which
        no impression can match, goes to partition 0 (it is still counted there)."""
        missing = users.is_null().to_numpy() if users.null_count() else None
        users = users.cast(self.boundaries.dtype, strict=False) if users.dtype != self.boundaries.dtype else users
        if not len(self.boundaries):
            out = np.zeros(len(users), dtype=np.int64)
        else:
            out = self.boundaries.search_sorted(users.fill_null(self.boundaries[0]), side="right").to_numpy().astype(np.int64)
            if users.null_count():
                out[users.is_null().to_numpy()] = 0
        if missing is not None:
            out[missing] = -1
        return out


def plan_partitions(user_rows: pl.DataFrame, rows_per_partition: int) -> UserPartitions:
    """Partitions from ``user_rows`` (``_user`` sorted and distinct, ``rows``: its raw rows): a user
    starts a new partition when the rows before it cross the next multiple of ``rows_per_partition``."""
    if rows_per_partition < 1:
        raise ValueError(f"rows_per_partition must be >= 1, got {rows_per_partition}")
    rows = user_rows[ROWS].to_numpy().astype(np.int64)
    before = np.concatenate([[0], np.cumsum(rows)[:-1]])
    bucket = before // rows_per_partition
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]])) if len(rows) else np.zeros(0, dtype=np.int64)
    edges = np.concatenate([starts, [len(rows)]])
    user_counts = tuple(int(n) for n in np.diff(edges))
    row_counts = tuple(int(rows[a:b].sum()) for a, b in zip(edges[:-1], edges[1:]))
    return UserPartitions(user_rows[USER].gather(starts[1:]), user_counts, row_counts)
