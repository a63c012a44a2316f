"""Windowed point-in-time features of the long-history world, read from the logged events.

The truth of the long world (``long_model.py``) reads, for a query (user, time t, ad of category c
and advertiser a), counts of the user's events before t: organic events (views + likes) of c in time
ranges (the last day, the last 2 days, 2-14 days ago, more than 14 days ago) and whether an ad of a
was clicked or converted. The same counts can be taken over a **window** of the user's history: only
the last ``length`` events (of all streams, in file order) before t, which is what a model that
truncates the history to ``length`` events can see. ``length=None`` reads the whole history.

:class:`LongHistoryIndex` answers these with binary searches over sorted keys (O(log E) per
query, vectorised); :func:`reference_counts` is the readable per-query loop it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eventrec.synthetic.world import AD_CLICK, AD_CONVERSION, CONTENT_VIEW, DAY, PAGE_LIKE

# The time ranges the truth reads (seconds before the query).
RECENT = DAY  # "recent": the last day
RETURN = 2 * DAY  # "returning": engaged in the last 2 days ...
MEMORY = 14 * DAY  # ... and more than 14 days ago, but not in between; "memory": more than 14 days ago

_SHIFT = np.int64(2**32)


@dataclass
class WindowCounts:
    """Counts over the window of each query (``[n]`` int64 each), see :meth:`LongHistoryIndex.counts`.

    ``recent``: organic events of c in [t - 1 d, t); ``last_2d``: in [t - 2 d, t); ``between``: in
    [t - 14 d, t - 2 d); ``old``: before t - 14 d; ``ever``: before t; ``clicks`` / ``conversions``:
    ad clicks / logged conversions of advertiser a before t; ``window``: events in the window.
    """

    recent: np.ndarray
    last_2d: np.ndarray
    between: np.ndarray
    old: np.ndarray
    ever: np.ndarray
    clicks: np.ndarray
    conversions: np.ndarray
    window: np.ndarray


class LongHistoryIndex:
    """Users' events sorted by (user, time, file order), for windowed point-in-time counts.

    Inputs are numpy arrays of equal length, already in that order: 0-based ``user``, event type
    codes, ``t`` (seconds from the world's start, 0 <= t < 2**32), 0-based ``category`` and
    ``advertiser`` (-1 where absent). Positions (the row index) order each user's events.
    """

    def __init__(self, user, type_code, t, category, advertiser, num_categories: int, num_advertisers: int):
        self.user = np.asarray(user, np.int64)
        self.t = np.asarray(t, np.int64)
        type_code = np.asarray(type_code, np.int8)
        category = np.asarray(category, np.int64)
        advertiser = np.asarray(advertiser, np.int64)
        self.num_categories, self.num_advertisers = C, A = num_categories, num_advertisers
        n = len(self.t)
        if n >= _SHIFT or (n and (self.t.min() < 0 or self.t.max() >= _SHIFT)):
            raise ValueError("LongHistoryIndex: event times outside [start, start + 2**32) or too many events")
        if n and (self.user.min() < 0 or (self.user.max() + 1) * max(C, A) >= 2**31):
            raise ValueError("LongHistoryIndex: user indices outside [0, 2**31 / max(categories, advertisers))")
        self.key = self.user * _SHIFT + self.t
        if n > 1 and (np.diff(self.key) < 0).any():
            raise ValueError("LongHistoryIndex: events are not sorted by (user, time)")
        pos = np.arange(n, dtype=np.int64)
        organic = (type_code == CONTENT_VIEW) | (type_code == PAGE_LIKE)
        # (user, category, position) keys; sorting them keeps positions increasing within a group.
        self.organic_key = np.sort((self.user[organic] * C + category[organic]) * _SHIFT + pos[organic])
        clicks = type_code == AD_CLICK
        self.click_key = np.sort((self.user[clicks] * A + advertiser[clicks]) * _SHIFT + pos[clicks])
        conversions = type_code == AD_CONVERSION
        self.conversion_key = np.sort((self.user[conversions] * A + advertiser[conversions]) * _SHIFT
                                      + pos[conversions])

    def position(self, users: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Position of each user's first event at or after ``t`` (times below 0 read as 0)."""
        return np.searchsorted(self.key, users * _SHIFT + np.maximum(t, 0), side="left")

    @staticmethod
    def _count(keys: np.ndarray, group: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Events of ``group`` at positions in [lo, hi) (0 where hi <= lo)."""
        hi = np.maximum(hi, lo)
        return (np.searchsorted(keys, group * _SHIFT + hi, side="left")
                - np.searchsorted(keys, group * _SHIFT + lo, side="left")).astype(np.int64)

    def counts(self, users, t, category, advertiser, length: int | None = None) -> WindowCounts:
        """Counts of each query's window: the user's last ``length`` events before ``t`` (all if None).

        ``users``, ``category``, ``advertiser`` 0-based ``[n]``; ``t`` ``[n]`` seconds from the start.
        """
        users = np.asarray(users, np.int64)
        t = np.asarray(t, np.int64)
        category = np.asarray(category, np.int64)
        advertiser = np.asarray(advertiser, np.int64)
        begin = np.searchsorted(self.key, users * _SHIFT, side="left")
        cut = self.position(users, t)  # strictly before t
        lo = begin if length is None else np.maximum(begin, cut - int(length))

        def at(seconds_before: int) -> np.ndarray:
            return np.clip(self.position(users, t - seconds_before), lo, cut)

        p_recent, p_return, p_memory = at(RECENT), at(RETURN), at(MEMORY)
        g = users * self.num_categories + category
        a = users * self.num_advertisers + advertiser
        count = self._count
        return WindowCounts(
            recent=count(self.organic_key, g, p_recent, cut),
            last_2d=count(self.organic_key, g, p_return, cut),
            between=count(self.organic_key, g, p_memory, p_return),
            old=count(self.organic_key, g, lo, p_memory),
            ever=count(self.organic_key, g, lo, cut),
            clicks=count(self.click_key, a, lo, cut),
            conversions=count(self.conversion_key, a, lo, cut),
            window=(cut - lo).astype(np.int64),
        )


def reference_counts(user, type_code, t, category, advertiser, queries, length: int | None = None) -> WindowCounts:
    """The readable reference of :meth:`LongHistoryIndex.counts`: a Python loop per query.

    ``queries``: iterable of (user, t, category, advertiser). Events as for the index (sorted).
    """
    events = list(zip(np.asarray(user).tolist(), np.asarray(type_code).tolist(), np.asarray(t).tolist(),
                      np.asarray(category).tolist(), np.asarray(advertiser).tolist()))
    rows = {name: [] for name in ("recent", "last_2d", "between", "old", "ever", "clicks", "conversions", "window")}
    for qu, qt, qc, qa in queries:
        history = [e for e in events if e[0] == qu and e[2] < qt]  # file order = true order
        if length is not None:
            history = history[max(len(history) - length, 0):]
        organic = [e for e in history if e[1] in (CONTENT_VIEW, PAGE_LIKE) and e[3] == qc]
        ages = [qt - e[2] for e in organic]
        rows["recent"].append(sum(age <= RECENT for age in ages))
        rows["last_2d"].append(sum(age <= RETURN for age in ages))
        rows["between"].append(sum(RETURN < age <= MEMORY for age in ages))
        rows["old"].append(sum(age > MEMORY for age in ages))
        rows["ever"].append(len(organic))
        rows["clicks"].append(sum(e[1] == AD_CLICK and e[4] == qa for e in history))
        rows["conversions"].append(sum(e[1] == AD_CONVERSION and e[4] == qa for e in history))
        rows["window"].append(len(history))
    return WindowCounts(**{k: np.asarray(v, np.int64) for k, v in rows.items()})
