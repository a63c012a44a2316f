"""The true click and conversion probabilities of the synthetic world, and how to recompute them.

A user's state at time ``t`` is a function of the user's logged events strictly before ``t`` (in
the order of events.parquet; equal timestamps keep file order) plus the user's latent parameters
(:class:`~eventrec.synthetic.world.World`). The probability model reads:

* the last ``HISTORY_LENGTH`` (8) events of all streams, newest first: type, category,
  advertiser, ad and timestamp (:class:`History`);
* the lifetime count of organic events (content views + page likes) in the candidate's category.

The same functions serve the simulation (which keeps that state incrementally) and
:func:`true_probabilities` (which rebuilds it from the logs); a test checks that both agree
bit for bit on every impression. The formulas are in ``docs/synthetic_world.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eventrec.synthetic.world import (
    AD_CLICK,
    AD_CONVERSION,
    CONTENT_VIEW,
    EVENT_TYPES,
    HISTORY_LENGTH,
    PAGE_LIKE,
    PLACEMENTS,
    STREAM_LENGTH,
    World,
    WorldConfig,
    hour_effect,
)

# ---- coefficients (documented in docs/synthetic_world.md) ---------------------------------------

RECENCY_TAU = 1800.0  # seconds: decay of the last matching event's recency term
POSITION_WEIGHTS = (1.0, 0.35, 0.1)  # last, second-to-last, third-to-last event matches the category
PLACEMENT_EFFECT = np.array([0.0, 0.15, -0.8, 0.4])  # feed, story, sidebar, search
CLICK = {
    "interest": 1.0,  # min(C * interest_c(t), 4) / 4
    "count": 0.5,  # min(log1p(organic events in c) / log1p(16), 1)
    "price": -0.15,  # standardised log price
    "advertiser_clicked": 0.5,  # an ad of this advertiser among the user's last 4 ad clicks
    "same_ad_clicked": -0.8,  # this very ad among the last 4 ad clicks (already seen it)
    # order and co-occurrence terms, scaled by config.sequence_strength:
    "last3": 1.6,  # sum_k POSITION_WEIGHTS[k] * [category of the k-th most recent event == c]
    "next": 1.2,  # [next_category(category of the most recent event) == c]
    "recency": 0.5,  # exp(-(t - t_last_match) / RECENCY_TAU), last 8 events
    "co_occurrence": 0.9,  # advertiser among the last 4 clicks AND category c viewed among the last 8 events
}
CONVERSION = {
    "interest": 0.8,
    "price": -0.45,
    # order and co-occurrence terms, scaled by config.sequence_strength:
    "co_occurrence": 1.0,
    "advertiser_converted": 0.8,  # this advertiser among the user's last 4 logged conversions
    "last_viewed": 0.6,  # the most recent event is a content view of category c
}
SEQUENCE_TERMS = {"last3", "next", "recency", "co_occurrence", "advertiser_converted", "last_viewed"}


@dataclass
class History:
    """A user's recent events before each query, newest first; ``-1``: no event.

    ``type, category, advertiser, ad, timestamp`` ``[n, HISTORY_LENGTH]``: the last events of all
    streams. ``click_advertiser, click_ad`` ``[n, STREAM_LENGTH]``: the last ad clicks;
    ``conversion_advertiser`` ``[n, STREAM_LENGTH]``: the last logged conversions.
    """

    type: np.ndarray  # int8
    category: np.ndarray  # int32, 0-based
    advertiser: np.ndarray  # int32 (-1 for organic events)
    ad: np.ndarray  # int32 (-1 for organic events)
    timestamp: np.ndarray  # int64 seconds from the world's start
    click_advertiser: np.ndarray
    click_ad: np.ndarray
    conversion_advertiser: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "History":
        L, S = HISTORY_LENGTH, STREAM_LENGTH
        i32 = np.int32
        return cls(np.full((n, L), -1, np.int8), np.full((n, L), -1, i32), np.full((n, L), -1, i32),
                   np.full((n, L), -1, i32), np.zeros((n, L), np.int64), np.full((n, S), -1, i32),
                   np.full((n, S), -1, i32), np.full((n, S), -1, i32))

    def take(self, idx) -> "History":
        return History(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

    def recent_categories(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Categories of the last k events and their validity: ``([n, k], [n, k] bool)``."""
        return self.category[:, :k], self.type[:, :k] >= 0


def features(world: World, users: np.ndarray, t: np.ndarray, ads: np.ndarray, hist: History,
             organic_count: np.ndarray) -> dict[str, np.ndarray]:
    """Every term of the probability model for queries (user, t, ad), as float64 arrays ``[n]``."""
    C = world.config.num_categories
    c = world.ad_category[ads]
    a = world.ad_advertiser[ads]
    valid = hist.type >= 0
    same_cat = valid & (hist.category == c[:, None])
    last3 = sum(w * same_cat[:, k] for k, w in enumerate(POSITION_WEIGHTS))
    nxt = valid[:, 0] & (world.next_category[np.maximum(hist.category[:, 0], 0)] == c)
    age = (np.asarray(t, np.int64)[:, None] - hist.timestamp).astype(np.float64)
    recency = np.where(same_cat, np.exp(-np.maximum(age, 0.0) / RECENCY_TAU), 0.0).max(axis=1)
    advertiser_clicked = (hist.click_advertiser == a[:, None]).any(axis=1)
    category_viewed = ((hist.type == CONTENT_VIEW) & (hist.category == c[:, None])).any(axis=1)
    same_ad_clicked = (hist.click_ad == ads[:, None]).any(axis=1)
    advertiser_converted = (hist.conversion_advertiser == a[:, None]).any(axis=1)
    last_viewed = (hist.type[:, 0] == CONTENT_VIEW) & (hist.category[:, 0] == c)
    f = {
        "interest": np.minimum(world.interest(users, t, c) * C, 4.0) / 4.0,
        "count": np.minimum(np.log1p(organic_count.astype(np.float64)) / np.log1p(16.0), 1.0),
        "price": (np.log(world.ad_price[ads]) - 3.0) / 0.8,
        "advertiser_clicked": advertiser_clicked,
        "same_ad_clicked": same_ad_clicked,
        "last3": last3,
        "next": nxt,
        "recency": recency,
        "co_occurrence": advertiser_clicked & category_viewed,
        "advertiser_converted": advertiser_converted,
        "last_viewed": last_viewed,
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in f.items()}


def _combine(coefficients: dict[str, float], f: dict[str, np.ndarray], strength: float) -> np.ndarray:
    z = 0.0
    for name, beta in coefficients.items():
        scale = strength if name in SEQUENCE_TERMS else 1.0
        z = z + (beta * scale) * f[name]
    return z


def probabilities(world: World, users: np.ndarray, t: np.ndarray, ads: np.ndarray, placement: np.ndarray,
                  hour: np.ndarray, hist: History, organic_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True ``(p_click, p_conversion)`` for queries; ``p_conversion`` is P(conversion | click).

    ``users``/``ads`` 0-based indices, ``t`` seconds from the world's start, ``placement`` codes
    into ``PLACEMENTS``, ``hist`` and ``organic_count`` the user's state strictly before ``t``.
    """
    cfg = world.config
    f = features(world, users, t, ads, hist, organic_count)
    s = cfg.sequence_strength
    z_click = (cfg.click_bias + PLACEMENT_EFFECT[placement] + hour_effect(hour) + world.ad_quality[ads]
               + world.click_propensity[users] + _combine(CLICK, f, s))
    z_conv = (cfg.conversion_bias + world.conversion_propensity[users]
              + world.advertiser_conversion_quality[world.ad_advertiser[ads]] + _combine(CONVERSION, f, s))
    return _sigmoid(z_click), _sigmoid(z_conv)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


# ---- the state rebuilt from logs ------------------------------------------------------------------

_SHIFT = np.int64(2**32)


class EventIndex:
    """Users' events sorted by (user, time, file order), for point-in-time state look-ups.

    All inputs are numpy arrays of equal length, already in that order: external ``user_id``,
    type codes, ``t`` (seconds from the world's start, 0 <= t < 2**32), 0-based ``category``,
    ``advertiser`` and ``ad`` (-1 where absent).
    """

    def __init__(self, user_id, type_code, t, category, advertiser, ad, num_categories: int):
        self.user_id = np.asarray(user_id, np.int64)
        self.type = np.asarray(type_code, np.int8)
        self.t = np.asarray(t, np.int64)
        self.category = np.asarray(category, np.int64)
        self.advertiser = np.asarray(advertiser, np.int64)
        self.ad = np.asarray(ad, np.int64)
        self.num_categories = C = num_categories
        if len(self.t) and (self.t.min() < 0 or self.t.max() >= _SHIFT):
            raise ValueError("EventIndex: event times outside [start, start + 2**32)")
        if len(self.user_id) and (self.user_id.min() < 0 or self.user_id.max() >= 2**31 // C):
            raise ValueError("EventIndex: user ids outside [0, 2**31 / num_categories)")
        self.key = self.user_id * _SHIFT + self.t
        if len(self.key) > 1 and (np.diff(self.key) < 0).any():
            raise ValueError("EventIndex: events are not sorted by (user_id, timestamp)")
        organic = np.flatnonzero((self.type == CONTENT_VIEW) | (self.type == PAGE_LIKE))
        okey = (self.user_id[organic] * C + self.category[organic]) * _SHIFT + self.t[organic]
        self.organic_key = np.sort(okey, kind="stable")
        self.clicks = np.flatnonzero(self.type == AD_CLICK)
        self.conversions = np.flatnonzero(self.type == AD_CONVERSION)

    def _last(self, rows: np.ndarray, user_id: np.ndarray, t: np.ndarray, length: int):
        """Indices (into the events) of the last ``length`` events among ``rows`` before t; -1 none."""
        key = self.key[rows]
        begin = np.searchsorted(key, user_id * _SHIFT, side="left")
        cut = np.searchsorted(key, user_id * _SHIFT + t, side="left")  # strictly before t
        out = np.full((len(user_id), length), -1, dtype=np.int64)
        for k in range(length):
            idx = cut - 1 - k
            ok = idx >= begin
            out[ok, k] = rows[idx[ok]]
        return out

    def history(self, user_id: np.ndarray, t: np.ndarray) -> History:
        """The user's recent events strictly before ``t`` for each query (newest first)."""
        user_id = np.asarray(user_id, np.int64)
        t = np.asarray(t, np.int64)
        hist = History.empty(len(user_id))
        last = self._last(np.arange(len(self.key)), user_id, t, HISTORY_LENGTH)
        ok = last >= 0
        i = last[ok]
        hist.type[ok] = self.type[i]
        hist.category[ok] = self.category[i]
        hist.advertiser[ok] = self.advertiser[i]
        hist.ad[ok] = self.ad[i]
        hist.timestamp[ok] = self.t[i]
        last = self._last(self.clicks, user_id, t, STREAM_LENGTH)
        ok = last >= 0
        hist.click_advertiser[ok] = self.advertiser[last[ok]]
        hist.click_ad[ok] = self.ad[last[ok]]
        last = self._last(self.conversions, user_id, t, STREAM_LENGTH)
        ok = last >= 0
        hist.conversion_advertiser[ok] = self.advertiser[last[ok]]
        return hist

    def organic_count(self, user_id: np.ndarray, category: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Content views + page likes of ``category`` strictly before ``t``, per query."""
        base = (np.asarray(user_id, np.int64) * self.num_categories + np.asarray(category, np.int64)) * _SHIFT
        hi = np.searchsorted(self.organic_key, base + np.asarray(t, np.int64), side="left")
        lo = np.searchsorted(self.organic_key, base, side="left")
        return (hi - lo).astype(np.int64)


def event_index_from_frame(world: World, events) -> EventIndex:
    """An :class:`EventIndex` from an events table in the events.parquet format (polars or pyarrow).

    Rows are ordered by (user_id, timestamp) with a stable sort: equal timestamps keep their order
    in the table, which for generated worlds is the order in which the events happened.
    """
    import polars as pl

    df = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    cfg = world.config
    codes = {name: i for i, name in enumerate(EVENT_TYPES)}
    et = df["event_type"].cast(pl.String)
    unknown = et.filter(~et.is_in(list(EVENT_TYPES)) | et.is_null())
    if len(unknown):
        raise ValueError(f"events: event_type: unknown value {unknown[0]!r}; expected one of {EVENT_TYPES}")
    type_code = et.replace_strict(codes, return_dtype=pl.Int8).to_numpy()
    user_id = df["user_id"].cast(pl.Int64).to_numpy()
    t = df["timestamp"].cast(pl.Int64).to_numpy() - cfg.start_timestamp
    category = df["category"].cast(pl.Int64).to_numpy() - 1
    advertiser = df["advertiser_id"].cast(pl.Int64).fill_null(0).to_numpy() - 1
    ad = df["ad_id"].cast(pl.Int64).fill_null(0).to_numpy() - 1
    order = np.lexsort((np.arange(len(t)), t, user_id))
    return EventIndex(user_id[order], type_code[order], t[order], category[order], advertiser[order], ad[order],
                      cfg.num_categories)


def query_probabilities(world: World, index: EventIndex, user_id, timestamp, ad_id, placement, hour_of_day):
    """True (p_click, p_conversion) for queries given as external ids and absolute timestamps."""
    cfg = world.config
    user_id = np.asarray(user_id, np.int64)
    users = user_id - 1
    if len(users) and (users.min() < 0 or users.max() >= cfg.num_users):
        raise ValueError(f"queries: user_id outside 1..{cfg.num_users}")
    ads = np.asarray(ad_id, np.int64) - 1
    if len(ads) and (ads.min() < 0 or ads.max() >= cfg.num_ads):
        raise ValueError(f"queries: ad_id outside 1..{cfg.num_ads}")
    t = np.asarray(timestamp, np.int64) - cfg.start_timestamp
    hist = index.history(user_id, t)
    count = index.organic_count(user_id, world.ad_category[ads], t)
    return probabilities(world, users, t, ads, np.asarray(placement, np.int64), np.asarray(hour_of_day, np.int64),
                         hist, count)


def true_probabilities(world, queries, events=None):
    """Append the true ``p_click`` and ``p_conversion`` (P(conversion | click)) to ``queries``.

    ``world``: a world directory written by :func:`~eventrec.synthetic.generate_world` (its
    ``world.json`` rebuilds the latent world; its ``events.parquet`` is the history unless
    ``events`` is given), a :class:`World`, or a :class:`WorldConfig` (for the long-history preset:
    a ``LongWorld`` or ``LongConfig``; its truth is ``long_model.probabilities``).
    ``queries``: a polars DataFrame with ``user_id``, ``timestamp`` (unix s), ``ad_id``,
    ``placement`` (name) and optionally ``hour_of_day`` (default: UTC hour of ``timestamp``).
    ``events``: the events table (events.parquet format) to read the users' histories from; only
    events strictly before each query's timestamp count, equal timestamps keep table order.
    Returns ``queries`` with the two columns added (replacing any of the same name).
    """
    import polars as pl

    from eventrec.synthetic.generate import load_world

    if isinstance(world, (str, Path)):
        directory = Path(world)
        world = load_world(directory)
        if events is None:
            events = pl.read_parquet(directory / "events.parquet")
    elif isinstance(world, WorldConfig):
        world = World(world)
    if events is None:
        raise ValueError("true_probabilities: give the events table (or a world directory)")
    if not isinstance(world, World):  # the long-history preset (or its config)
        from eventrec.synthetic.long_model import true_probabilities_long
        from eventrec.synthetic.long_world import LongConfig, LongWorld

        if isinstance(world, LongConfig):
            world = LongWorld(world)
        if not isinstance(world, LongWorld):
            raise ValueError(f"true_probabilities: world: expected a directory, World, WorldConfig, LongWorld or "
                             f"LongConfig (got {type(world).__name__})")
        return true_probabilities_long(world, queries, events)
    if not isinstance(events, pl.DataFrame):
        events = pl.from_arrow(events)
    missing = [c for c in ("user_id", "timestamp", "ad_id", "placement") if c not in queries.columns]
    if missing:
        raise ValueError(f"true_probabilities: queries lack columns {missing}")
    index = event_index_from_frame(world, events)
    codes = {name: i for i, name in enumerate(PLACEMENTS)}
    bad = queries["placement"].filter(~queries["placement"].is_in(list(PLACEMENTS)))
    if len(bad):
        raise ValueError(f"true_probabilities: placement {bad[0]!r} not in {PLACEMENTS}")
    placement = queries["placement"].replace_strict(codes, return_dtype=pl.Int64).to_numpy()
    ts = queries["timestamp"].cast(pl.Int64).to_numpy()
    if "hour_of_day" in queries.columns:
        hour = queries["hour_of_day"].cast(pl.Int64).to_numpy()
    else:
        hour = (ts % 86_400) // 3_600
    p_click, p_conv = query_probabilities(world, index, queries["user_id"].to_numpy(), ts,
                                          queries["ad_id"].to_numpy(), placement, hour)
    return queries.with_columns(pl.Series("p_click", p_click), pl.Series("p_conversion", p_conv))
