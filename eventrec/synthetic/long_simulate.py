"""The long-history world's simulation: organic timelines, ad requests, clicks and conversions.

Three vectorised stages (NumPy over all events; no per-event Python loop):

1. **Organic timeline.** Each user's organic events (``events_target`` on average) come in sessions
   of 1 + Poisson(session_events - 1) events, 1..180 s apart (lognormal, median 40 s). Session
   starts are diurnal, sorted per user and pushed forward so that sessions never overlap (at least
   ``SESSION_GAP`` s between them) and all end within the period. A session that starts while some
   of the user's recurring interests are in an episode focuses (``focus_probability``) on one of
   them; each of its events is of the focus category with ``stay_probability``, otherwise of a
   category drawn from the user's background profile. Organic events never depend on ads.
2. **Requests.** Poisson(requests_per_event x organic events) per user, each 1..180 s after a
   random organic event of the user; 1-3 distinct ads chosen by the serving policy.
3. **Outcomes.** The organic terms of the truth are computed for every impression at once; the
   advertiser terms (an earlier click / logged conversion on the same advertiser) depend on earlier
   outcomes of the same (user, advertiser) pair only, so the impressions are processed by their rank
   within their pair: step r handles the r-th impression of every pair (a loop over ranks, NumPy
   over pairs; all uniforms are drawn up front).
"""

from __future__ import annotations

import numpy as np

from eventrec.synthetic.long_history import LongHistoryIndex
from eventrec.synthetic.long_model import base_logits, finish, organic_terms
from eventrec.synthetic.long_world import (
    MAX_CLICK_DELAY,
    MAX_CONVERSION_DELAY,
    MAX_GAP,
    MAX_REQUEST_GAP,
    MAX_SESSION_EVENTS,
    MIN_CONVERSION_DELAY,
    SESSION_GAP,
    LongWorld,
)
from eventrec.synthetic.simulate import ORGANIC_GAP_MEDIAN, Simulation, diurnal_times
from eventrec.synthetic.world import AD_CLICK, AD_CONVERSION, CONTENT_VIEW, DAY, PAGE_LIKE

POLICY_RECENT = 20  # the policy's "recent" mode reads the last 20 organic events
_NEVER = np.iinfo(np.int64).max
_TAIL = MAX_REQUEST_GAP + MAX_CLICK_DELAY + MAX_CONVERSION_DELAY + 60  # room after a user's last organic event
_SHIFT = np.int64(2**32)


def organic_timeline(world: LongWorld) -> dict[str, np.ndarray]:
    """Every user's organic events, user-major and in time order (strictly increasing per user).

    Returns ``user, t, category, type, item`` ``[E]`` and ``offsets`` ``[U + 1]``.
    """
    cfg = world.config
    rng = np.random.default_rng(world.seeds["timeline"])
    U, T = cfg.num_users, cfg.duration
    n_sessions = np.maximum(1, np.rint(world.events_target / cfg.session_events)).astype(np.int64)
    NS = int(n_sessions.sum())
    s_user = np.repeat(np.arange(U, dtype=np.int64), n_sessions)
    size = np.minimum(1 + rng.poisson(cfg.session_events - 1, NS), MAX_SESSION_EVENTS).astype(np.int64)
    E = int(size.sum())
    s_first = np.cumsum(size) - size
    ev_session = np.repeat(np.arange(NS, dtype=np.int64), size)
    gap = np.clip(np.rint(rng.lognormal(np.log(ORGANIC_GAP_MEDIAN), 0.8, E)), 1, MAX_GAP).astype(np.int64)
    gap[s_first] = 0
    csum = np.cumsum(gap)
    within = csum - csum[s_first][ev_session]  # seconds after the session's first event
    span = within[s_first + size - 1] + SESSION_GAP  # a session's duration plus the minimum gap after it
    s_offset = np.cumsum(n_sessions) - n_sessions
    cum_span = np.cumsum(span) - span
    cum_span = cum_span - cum_span[s_offset][s_user]  # per user: total span of the earlier sessions
    busy = np.bincount(s_user, weights=span, minlength=U).astype(np.int64)
    room = T - busy - _TAIL  # every event, clicks and conversions included, ends before T
    if (room < T // 10).any():
        worst = int(np.argmin(room))
        raise ValueError(f"LongConfig.max_events_per_user: user {worst + 1}'s {int(world.events_target[worst])} events "
                         f"do not fit into {cfg.days} days; lower max_events_per_user or raise days")
    x = diurnal_times(rng, NS, cfg.days)
    x = x[np.lexsort((x, s_user))]
    x = np.floor(x * (room[s_user] / T)).astype(np.int64)
    # Push sessions forward so that none starts before the previous one (plus its gap) ended:
    # start_k = cum_span_k + max_{j <= k} (x_j - cum_span_j), a running maximum restarted per user.
    lift = s_user * (4 * np.int64(T))
    start = cum_span + np.maximum.accumulate(x - cum_span + lift) - lift
    t = start[ev_session] + within
    ev_user = s_user[ev_session]

    active = world.active_interests(s_user, start)
    n_active = active.sum(axis=1)
    focused = (n_active > 0) & (rng.random(NS) < cfg.focus_probability)
    pick = np.floor(rng.random(NS) * np.maximum(n_active, 1)).astype(np.int64)
    k = np.argmax(np.cumsum(active, axis=1) > pick[:, None], axis=1)
    focus = world.interests[s_user, k]
    stay = focused[ev_session] & (rng.random(E) < cfg.stay_probability)
    background = world.sample_background(ev_user, rng.random(E))
    category = np.where(stay, focus[ev_session], background)
    like = rng.random(E) < cfg.like_fraction
    u_item = rng.random(E)
    base = world.base
    item = np.where(like, base.page_sampler.sample(category, u_item), base.content_sampler.sample(category, u_item))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(ev_user, minlength=U))]).astype(np.int64)
    return {"user": ev_user, "t": t, "category": category.astype(np.int64),
            "type": np.where(like, PAGE_LIKE, CONTENT_VIEW).astype(np.int8), "item": item.astype(np.int64),
            "offsets": offsets, "sessions": NS, "focused_sessions": int(focused.sum())}


def history_positions(organic: dict, users: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(begin, cut) positions in the organic timeline: the user's organic events strictly before t."""
    key = organic["user"] * _SHIFT + organic["t"]
    return organic["offsets"][users], np.searchsorted(key, users * _SHIFT + t, side="left")


def choose_ads(world: LongWorld, organic: dict, users, t, begin, cut, rng: np.random.Generator) -> np.ndarray:
    """The serving policy: one ad per row (recent / whole-history / popularity mix, see the module)."""
    cfg = world.config
    base = world.base
    n = len(users)
    day = world.day_of(t)
    mode = rng.choice(3, n, p=np.asarray(cfg.policy_mix))
    n_hist = cut - begin
    recent = cut - 1 - np.floor(rng.random(n) * np.minimum(n_hist, POLICY_RECENT)).astype(np.int64)
    anywhen = begin + np.floor(rng.random(n) * n_hist).astype(np.int64)
    src = np.clip(np.where(mode == 0, recent, anywhen), 0, max(len(organic["t"]) - 1, 0))
    category = organic["category"][src]
    popular = (mode == 2) | (n_hist <= 0)
    u = rng.random(n)
    by_category = base.ad_sampler_by_category.sample(day * cfg.num_categories + category, u)
    by_day = base.ad_sampler_by_day.sample(day, u)
    return np.where(popular, by_day, by_category)


def requests(world: LongWorld, organic: dict) -> dict[str, np.ndarray]:
    """Ad requests and their impressions (one row per ad shown), in (user, time, request, slot) order."""
    cfg = world.config
    rng = np.random.default_rng(world.seeds["requests"])
    U = cfg.num_users
    n_org = np.diff(organic["offsets"])
    per_user = rng.poisson(cfg.requests_per_event * n_org)
    R = int(per_user.sum())
    users = np.repeat(np.arange(U, dtype=np.int64), per_user)
    anchor = organic["offsets"][users] + np.floor(rng.random(R) * n_org[users]).astype(np.int64)
    t = organic["t"][anchor] + rng.integers(1, MAX_REQUEST_GAP + 1, R)
    order = np.lexsort((t, users))
    users, t = users[order], t[order]
    placement = rng.choice(len(cfg.placement_probs), R, p=np.asarray(cfg.placement_probs))
    hour = ((cfg.start_timestamp + t) % DAY) // 3600
    n_slots = rng.choice(len(cfg.ads_per_request), R, p=np.asarray(cfg.ads_per_request)) + 1
    begin, cut = history_positions(organic, users, t)
    chosen = np.full((R, 3), -1, dtype=np.int64)
    dropped = 0
    for s in range(3):  # distinct ads within a request: redraw duplicates (up to 3 times), then drop
        sel = np.flatnonzero(n_slots > s)
        if sel.size == 0:
            break
        ads = choose_ads(world, organic, users[sel], t[sel], begin[sel], cut[sel], rng)
        for _ in range(3):
            dup = np.flatnonzero((chosen[sel, :s] == ads[:, None]).any(axis=1)) if s else np.zeros(0, np.int64)
            if dup.size == 0:
                break
            d = sel[dup]
            ads[dup] = choose_ads(world, organic, users[d], t[d], begin[d], cut[d], rng)
        if s:
            dup = (chosen[sel, :s] == ads[:, None]).any(axis=1)
            dropped += int(dup.sum())
            ads = np.where(dup, -1, ads)
        chosen[sel, s] = ads
    row, slot = np.nonzero(chosen >= 0)  # row-major: by request, then slot
    return {"user": users[row], "t": t[row], "ad": chosen[row, slot], "placement": placement[row],
            "hour": hour[row], "request": row.astype(np.int64), "slot": slot.astype(np.int64),
            "requests": R, "dropped_duplicate_slots": dropped}


def _unique_times(user: np.ndarray, ad: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Move equal (user, ad, time) triples one second later until none is left (no duplicate events)."""
    times = times.copy()
    while True:
        order = np.lexsort((np.arange(len(times)), times, ad, user))
        same = (user[order][1:] == user[order][:-1]) & (ad[order][1:] == ad[order][:-1]) & \
               (times[order][1:] == times[order][:-1])
        if not same.any():
            return times
        times[order[1:][same]] += 1


def outcomes(world: LongWorld, organic: dict, imp: dict) -> dict[str, np.ndarray]:
    """Clicks and conversions of every impression, with the true probabilities (see the module)."""
    cfg = world.config
    base = world.base
    rng = np.random.default_rng(world.seeds["outcomes"])
    n = len(imp["ad"])
    users, t, ads = imp["user"], imp["t"], imp["ad"]
    u_click, u_conv = rng.random(n), rng.random(n)
    click_t = _unique_times(users, ads, t + rng.integers(1, MAX_CLICK_DELAY + 1, n))
    conv_t = _unique_times(users, ads, click_t + rng.integers(MIN_CONVERSION_DELAY, MAX_CONVERSION_DELAY + 1, n))

    index = LongHistoryIndex(organic["user"], organic["type"], organic["t"], organic["category"],
                             np.full(len(organic["t"]), -1), cfg.num_categories, cfg.num_advertisers)
    counts = index.counts(users, t, base.ad_category[ads], base.ad_advertiser[ads])
    z_click, z_conv = base_logits(world, users, ads, imp["placement"], imp["hour"], organic_terms(world, ads, counts))

    advertiser = base.ad_advertiser[ads]
    tracked = base.advertiser_tracks_conversions[advertiser]
    pair = users * cfg.num_advertisers + advertiser
    order = np.lexsort((np.arange(n), t, pair))
    new_pair = np.ones(n, dtype=bool)
    new_pair[1:] = pair[order][1:] != pair[order][:-1]
    group_start = np.maximum.accumulate(np.where(new_pair, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    _, pair_id = np.unique(pair, return_inverse=True)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rank, minlength=int(rank.max()) + 1 if n else 0))])
    first_click = np.full(pair_id.max() + 1 if n else 0, _NEVER, np.int64)
    first_conv = first_click.copy()
    p_click, p_conv = np.zeros(n), np.zeros(n)
    click, converted = np.zeros(n, bool), np.zeros(n, bool)
    for r in range(len(bounds) - 1):
        i = by_rank[bounds[r]:bounds[r + 1]]  # the r-th impression of every pair that has one
        pid = pair_id[i]
        pc, pv = finish(world, z_click[i], z_conv[i], first_click[pid] < t[i], first_conv[pid] < t[i])
        c = u_click[i] < pc
        v = c & (u_conv[i] < pv)
        p_click[i], p_conv[i], click[i], converted[i] = pc, pv, c, v
        first_click[pid] = np.minimum(first_click[pid], np.where(c, click_t[i], _NEVER))
        first_conv[pid] = np.minimum(first_conv[pid], np.where(v & tracked[i], conv_t[i], _NEVER))
    return {"p_click": p_click, "p_conversion": p_conv, "click": click, "converted": converted,
            "tracked": tracked, "click_t": click_t, "conv_t": conv_t, "max_pair_rank": len(bounds) - 1}


def simulate_long(world: LongWorld) -> Simulation:
    """Run the long world; the result has the default simulation's layout (see ``simulate.Simulation``).

    Events are listed organic first, then clicks, then conversions; the files sort them by (user,
    time) stably, so among equal timestamps that is their true order.
    """
    cfg = world.config
    base = world.base
    organic = organic_timeline(world)
    imp = requests(world, organic)
    out = outcomes(world, organic, imp)
    click, logged = out["click"], out["converted"] & out["tracked"]
    ad_cat = base.ad_category[imp["ad"]]
    parts = [
        (organic["user"], organic["type"], organic["t"], organic["category"], organic["item"],
         np.full(len(organic["t"]), -1)),
        (imp["user"][click], np.full(int(click.sum()), AD_CLICK), out["click_t"][click], ad_cat[click],
         np.full(int(click.sum()), -1), imp["ad"][click]),
        (imp["user"][logged], np.full(int(logged.sum()), AD_CONVERSION), out["conv_t"][logged], ad_cat[logged],
         np.full(int(logged.sum()), -1), imp["ad"][logged]),
    ]
    ev_user, ev_type, ev_t, ev_category, ev_item, ev_ad = (np.concatenate(cols) for cols in zip(*parts))
    if len(ev_t) and ev_t.max() >= cfg.duration:
        raise AssertionError("long simulation: an event after the period's end")
    stats = {"requests": imp["requests"], "dropped_duplicate_slots": imp["dropped_duplicate_slots"],
             "sessions": organic["sessions"], "focused_sessions": organic["focused_sessions"],
             "max_impressions_per_user_advertiser": out["max_pair_rank"], "same_second_events": 0,
             "cotimed_events": 0}
    conversion = np.where(out["tracked"], out["converted"], -1).astype(np.int8)
    return Simulation(ev_user.astype(np.int32), ev_type.astype(np.int8), ev_t.astype(np.int64),
                      ev_category.astype(np.int32), ev_item.astype(np.int32), ev_ad.astype(np.int32),
                      imp["user"].astype(np.int32), imp["t"].astype(np.int64), imp["ad"].astype(np.int32),
                      imp["placement"].astype(np.int8), imp["hour"].astype(np.int8), imp["request"],
                      imp["slot"].astype(np.int8), out["p_click"], out["p_conversion"],
                      out["click"].astype(np.int8), conversion, stats)
