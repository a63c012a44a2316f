"""Point-in-time cuts: how many of a user's events happened strictly before a given time.

A stream's events are stored flat, sorted by (user row, timestamp), with ``user_offsets [U+1]``
marking each user's segment. For an impression of user ``u`` at time ``t`` the history is a prefix
of ``u``'s segment; its length, the *cut*, is the number of events with timestamp ``< t``.

**The equal-timestamp rule**: an event whose timestamp equals the impression's is *excluded* (it may
be the impression's own click, or logged in the same second after it). Only events strictly before
``t`` are history. This loses same-second context but can never leak the label.
"""

from __future__ import annotations

import numpy as np


class SegmentedTimeIndex:
    """Binary search of (user row, time) over events sorted by user row, then time.

    ``user_offsets [U+1]`` int64, ``timestamps [E]`` int64 (sorted within each user's segment).
    Each event gets one int64 key, ``row * span + local(t)``, increasing over the flat array; a
    query's key is built the same way, so one global ``searchsorted`` answers all queries. ``local``
    is ``t - t_min + 1`` (queries clipped into range) when the keys fit in int64, and otherwise the
    rank of ``t`` among the distinct event times (``#{event times < t}``, which keeps ``e < t``
    exactly equivalent to ``local(e) < local(t)``).
    """

    def __init__(self, user_offsets: np.ndarray, timestamps: np.ndarray):
        self.user_offsets = np.asarray(user_offsets, dtype=np.int64)
        self.timestamps = np.asarray(timestamps, dtype=np.int64)
        num_users = len(self.user_offsets) - 1
        self.t_min = int(self.timestamps.min()) if len(self.timestamps) else 0
        self.t_max = int(self.timestamps.max()) if len(self.timestamps) else 0
        self.span = self.t_max - self.t_min + 3
        self.distinct_times: np.ndarray | None = None
        if (num_users + 1) * self.span >= 2**62:
            self.distinct_times = np.unique(self.timestamps)
            self.span = len(self.distinct_times) + 1
        # keys_of(rows, timestamps), built in place (two arrays of E int64 instead of five)
        keys = np.repeat(np.arange(num_users, dtype=np.int64) * self.span, np.diff(self.user_offsets))
        if self.distinct_times is not None:
            keys += np.searchsorted(self.distinct_times, self.timestamps, side="left")
        else:
            keys += self.timestamps  # already within [t_min, t_max]: no clipping needed
            keys -= self.t_min - 1
        self.keys = keys

    def keys_of(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``rows, times [Q]`` → composite keys ``[Q]`` int64."""
        times = np.asarray(times, dtype=np.int64)
        if self.distinct_times is not None:
            local = np.searchsorted(self.distinct_times, times, side="left").astype(np.int64)
        else:
            local = np.clip(times, self.t_min - 1, self.t_max + 1) - self.t_min + 1
        return np.asarray(rows, dtype=np.int64) * self.span + local

    def position_before(self, rows: np.ndarray, times: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """Global flat index of the first event of user ``row`` at or after ``time`` (``[Q]`` int64).

        ``order`` (optional) is a permutation sorting the queries by (row, time); the search then
        runs over sorted keys, which is several times faster on large inputs, with the same result.
        """
        keys = self.keys_of(rows, times)
        if order is None:
            return np.searchsorted(self.keys, keys, side="left").astype(np.int64)
        out = np.empty(len(keys), dtype=np.int64)
        out[order] = np.searchsorted(self.keys, keys[order], side="left")
        return out

    def count_before(self, rows: np.ndarray, times: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """For each query (user row, time): the number of that user's events with timestamp < time.

        ``rows, times [Q]`` → ``[Q]`` int64 in ``[0, segment length]``. ``order``: see
        :meth:`position_before`.
        """
        rows = np.asarray(rows, dtype=np.int64)
        return self.position_before(rows, times, order) - self.user_offsets[rows]


def cut_before(timestamps: np.ndarray, time: int) -> int:
    """One user's cut: the number of events of a time-sorted stream ``timestamps [N]`` strictly before
    ``time`` (the equal-timestamp rule above). Serving applies it to a user's live event arrays; the
    store's :class:`SegmentedTimeIndex` answers the same question for many users at once."""
    return int(np.searchsorted(timestamps, time, side="left"))


def count_before_reference(user_offsets: np.ndarray, timestamps: np.ndarray, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Obvious per-query reference of :meth:`SegmentedTimeIndex.count_before` (for tests)."""
    out = np.zeros(len(rows), dtype=np.int64)
    for q, (row, time) in enumerate(zip(rows, times)):
        segment = timestamps[user_offsets[row] : user_offsets[row + 1]]
        out[q] = int((segment < time).sum())
    return out
