"""The true click and conversion probabilities of the long-history world, and truncated oracles.

For a query (user u, time t, ad j of category c and advertiser a, placement, hour) the truth reads
counts of the user's logged events before t (:class:`~eventrec.synthetic.long_history.WindowCounts`)
and the user's and ad's latent factors:

==================  ==================================================================  =====  =====
term                value                                                               click  conv
==================  ==================================================================  =====  =====
recent              min(organic events of c in the last day / 4, 1)                     1.0    0.5
memory              min(log(1 + organic events of c more than 14 days ago) / log 33, 1) 1.5·m  0.8·m
returning           events of c in the last 2 days, none 2-14 days ago, some before     0.8·m
advertiser_clicked  an ad click of advertiser a before t                                0.8·m
advertiser_conv.    a logged conversion of advertiser a before t                               0.8·m
price               (log price - 3) / 0.8                                               -0.15  -0.45
==================  ==================================================================  =====  =====

m = ``memory_strength``; logits add the click bias, placement and hour effects, the ad's quality
and the user's click propensity (conversion: bias, user propensity, advertiser quality), as in the
default world. The same function evaluated on the counts of a *truncated* window (the last N events
before t) is the truncated oracle: the world's own formula, blind to older events.
"""

from __future__ import annotations

import numpy as np

from eventrec.synthetic.long_history import LongHistoryIndex, WindowCounts
from eventrec.synthetic.long_world import LongWorld
from eventrec.synthetic.model import PLACEMENT_EFFECT, _sigmoid
from eventrec.synthetic.world import hour_effect

CLICK = {"recent": 0.3, "memory": 2.0, "returning": 0.8, "price": -0.15}
CLICK_ADVERTISER = 0.8  # an earlier click on an ad of the advertiser (scaled by memory_strength)
CONVERSION = {"recent": 0.5, "memory": 0.8, "price": -0.45}
CONVERSION_ADVERTISER = 0.8  # an earlier logged conversion with the advertiser (scaled by memory_strength)
MEMORY_TERMS = {"memory", "returning"}
RECENT_SCALE = 4.0
MEMORY_SCALE = np.log1p(32.0)


def organic_terms(world: LongWorld, ads: np.ndarray, counts: WindowCounts) -> dict[str, np.ndarray]:
    """The terms that read organic events and the ad, float64 ``[n]`` each."""
    return {
        "recent": np.minimum(counts.recent / RECENT_SCALE, 1.0),
        "memory": np.minimum(np.log1p(counts.old.astype(np.float64)) / MEMORY_SCALE, 1.0),
        "returning": ((counts.last_2d > 0) & (counts.between == 0) & (counts.old > 0)).astype(np.float64),
        "price": (np.log(world.base.ad_price[ads]) - 3.0) / 0.8,
    }


def base_logits(world: LongWorld, users, ads, placement, hour, terms: dict[str, np.ndarray]):
    """``(z_click, z_conversion)`` ``[n]`` without the advertiser terms (added by :func:`finish`)."""
    cfg = world.config
    base = world.base
    m = cfg.memory_strength
    z_click = (cfg.click_bias + PLACEMENT_EFFECT[placement] + hour_effect(hour) + base.ad_quality[ads]
               + base.click_propensity[users])
    for name, beta in CLICK.items():
        z_click = z_click + (beta * (m if name in MEMORY_TERMS else 1.0)) * terms[name]
    z_conv = (cfg.conversion_bias + base.conversion_propensity[users]
              + base.advertiser_conversion_quality[base.ad_advertiser[ads]])
    for name, beta in CONVERSION.items():
        z_conv = z_conv + (beta * (m if name in MEMORY_TERMS else 1.0)) * terms[name]
    return z_click, z_conv


def finish(world: LongWorld, z_click, z_conv, clicked_before, converted_before):
    """``(p_click, p_conversion | click)`` from the base logits and the advertiser terms (bool ``[n]``)."""
    m = world.config.memory_strength
    z_click = z_click + (CLICK_ADVERTISER * m) * np.asarray(clicked_before, np.float64)
    z_conv = z_conv + (CONVERSION_ADVERTISER * m) * np.asarray(converted_before, np.float64)
    return _sigmoid(z_click), _sigmoid(z_conv)


def probabilities(world: LongWorld, index: LongHistoryIndex, users, t, ads, placement, hour,
                  length: int | None = None):
    """True ``(p_click, p_conversion)`` of queries from logged events; ``length``: truncated oracle.

    ``users``/``ads`` 0-based, ``t`` seconds from the world's start, ``placement`` codes. With
    ``length=N`` the same formula reads only the last N events (all streams) before each query.
    """
    users = np.asarray(users, np.int64)
    ads = np.asarray(ads, np.int64)
    base = world.base
    counts = index.counts(users, t, base.ad_category[ads], base.ad_advertiser[ads], length=length)
    terms = organic_terms(world, ads, counts)
    z_click, z_conv = base_logits(world, users, ads, np.asarray(placement, np.int64), np.asarray(hour, np.int64),
                                  terms)
    return finish(world, z_click, z_conv, counts.clicks > 0, counts.conversions > 0)


def index_from_frame(world: LongWorld, events) -> LongHistoryIndex:
    """A :class:`LongHistoryIndex` from an events table in the events.parquet format (polars or pyarrow).

    Rows are ordered by (user_id, timestamp) with a stable sort (equal timestamps keep table order).
    """
    from eventrec.synthetic.model import event_index_from_frame

    base_index = event_index_from_frame(world.base, events)  # validates and sorts
    advertiser = base_index.advertiser
    return LongHistoryIndex(base_index.user_id - 1, base_index.type, base_index.t, base_index.category, advertiser,
                            world.config.num_categories, world.config.num_advertisers)


def true_probabilities_long(world: LongWorld, queries, events):
    """:func:`eventrec.synthetic.true_probabilities` for a long world (same arguments and result)."""
    import polars as pl

    from eventrec.synthetic.world import PLACEMENTS

    cfg = world.config
    if not isinstance(events, pl.DataFrame):
        events = pl.from_arrow(events)
    missing = [c for c in ("user_id", "timestamp", "ad_id", "placement") if c not in queries.columns]
    if missing:
        raise ValueError(f"true_probabilities: queries lack columns {missing}")
    bad = queries["placement"].filter(~queries["placement"].is_in(list(PLACEMENTS)))
    if len(bad):
        raise ValueError(f"true_probabilities: placement {bad[0]!r} not in {PLACEMENTS}")
    users = queries["user_id"].cast(pl.Int64).to_numpy() - 1
    if len(users) and (users.min() < 0 or users.max() >= cfg.num_users):
        raise ValueError(f"queries: user_id outside 1..{cfg.num_users}")
    ads = queries["ad_id"].cast(pl.Int64).to_numpy() - 1
    if len(ads) and (ads.min() < 0 or ads.max() >= cfg.num_ads):
        raise ValueError(f"queries: ad_id outside 1..{cfg.num_ads}")
    ts = queries["timestamp"].cast(pl.Int64).to_numpy()
    placement = queries["placement"].replace_strict({n: i for i, n in enumerate(PLACEMENTS)},
                                                    return_dtype=pl.Int64).to_numpy()
    hour = (queries["hour_of_day"].cast(pl.Int64).to_numpy() if "hour_of_day" in queries.columns
            else (ts % 86_400) // 3_600)
    index = index_from_frame(world, events)
    p_click, p_conv = probabilities(world, index, users, ts - cfg.start_timestamp, ads, placement, hour)
    return queries.with_columns(pl.Series("p_click", p_click), pl.Series("p_conversion", p_conv))
