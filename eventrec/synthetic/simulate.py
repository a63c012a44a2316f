"""The simulation: every user's timeline of organic events, ad requests, clicks and conversions.

Users never interact, so the simulation runs all users in lockstep over their *blocks* (a block is
a burst of organic events, then possibly an ad request and its clicks/conversions): step ``b``
processes the b-th block of every user that has one, with numpy over those users (no per-user
Python loop). Users are ranked by their number of blocks, so the users active at step ``b`` are a
prefix of the rank order. Within a user, events are produced in time order, so the order in which
they are produced is their true order (also among equal timestamps).

The user's state (last ``HISTORY_LENGTH`` events, organic counts per category) is updated after
each event; the click and conversion probabilities of a request read the state before any event
at or after the request's timestamp (an organic event may share the request's second: it is
applied after the request). ``model.true_probabilities`` rebuilds the same state from the logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eventrec.synthetic.model import History, probabilities
from eventrec.synthetic.world import (
    AD_CLICK,
    AD_CONVERSION,
    BLOCK_SPAN,
    CONTENT_VIEW,
    DAY,
    MAX_CHAIN_GAP,
    MAX_CLICK_DELAY,
    MAX_CONVERSION_DELAY,
    MAX_ORGANIC,
    MAX_ORGANIC_GAP,
    MAX_REQUEST_GAP,
    MIN_CONVERSION_DELAY,
    PAGE_LIKE,
    World,
)

# Category of an organic event that continues a session: the previous event's category with
# P_STAY, its funnel successor with P_NEXT, else a fresh draw from the user's interest(t).
P_STAY = 0.3
P_NEXT = 0.2
# Retargeting picks one of the last 3 events' categories uniformly, or with RETARGET_NEXT the funnel
# successor of the most recent event's category.
RETARGET_NEXT = 0.25
ORGANIC_GAP_MEDIAN = 40.0  # seconds; lognormal(log 40, 0.8), rounded, clipped to [1, MAX_ORGANIC_GAP]
_NEVER = np.iinfo(np.int64).max


@dataclass
class Simulation:
    """Raw simulation output. Events are in the order they happened within each user."""

    ev_user: np.ndarray  # 0-based user index (compact integer dtypes throughout)
    ev_type: np.ndarray
    ev_t: np.ndarray  # seconds from start
    ev_category: np.ndarray  # 0-based
    ev_item: np.ndarray  # content index (content_view), page index (page_like), -1 otherwise
    ev_ad: np.ndarray  # ad index (ad events), -1 otherwise
    imp_user: np.ndarray
    imp_t: np.ndarray
    imp_ad: np.ndarray
    imp_placement: np.ndarray
    imp_hour: np.ndarray
    imp_request: np.ndarray  # simulation order of the request (not yet the request_id)
    imp_slot: np.ndarray
    p_click: np.ndarray
    p_conversion: np.ndarray
    click: np.ndarray  # int8
    conversion: np.ndarray  # int8; -1 = not tracked (null in the file)
    stats: dict


class _Columns:
    """Column chunks appended step by step (stored in compact dtypes), concatenated at the end."""

    def __init__(self, dtypes: dict):
        self.dtypes = dtypes
        self.parts = {n: [] for n in dtypes}

    def add(self, **cols):
        for n, v in cols.items():
            self.parts[n].append(np.asarray(v).astype(self.dtypes[n], copy=False))

    def finish(self) -> dict:
        out = {}
        for n in list(self.parts):
            parts = self.parts.pop(n)
            out[n] = np.concatenate(parts) if parts else np.zeros(0, self.dtypes[n])
        return out


class _State:
    """Per-user state in rank order: the :class:`History` buffers (newest first) and counts."""

    def __init__(self, num_users: int, num_categories: int):
        self.buffers = History.empty(num_users)
        self.organic = np.zeros((num_users, num_categories), np.uint16)
        self.end = np.zeros(num_users, np.int64)  # time of the user's last event so far

    @staticmethod
    def _shift(arr, rows, value):
        arr[rows, 1:] = arr[rows, :-1]
        arr[rows, 0] = value

    def push(self, rows, typ, t, category, advertiser, ad) -> None:
        h = self.buffers
        for arr, value in ((h.type, typ), (h.category, category), (h.advertiser, advertiser), (h.ad, ad),
                           (h.timestamp, t)):
            self._shift(arr, rows, value)
        if np.ndim(typ) == 0 and typ == AD_CLICK:
            self._shift(h.click_advertiser, rows, advertiser)
            self._shift(h.click_ad, rows, ad)
        elif np.ndim(typ) == 0 and typ == AD_CONVERSION:
            self._shift(h.conversion_advertiser, rows, advertiser)

    def history(self, rows) -> History:
        return self.buffers.take(rows)


def diurnal_times(rng: np.random.Generator, n: int, days: int) -> np.ndarray:
    """``n`` times in [0, days * DAY) with a diurnal density peaking at 20:30 (from the start's clock)."""
    minute = np.arange(1440)
    density = 1.0 + 0.7 * np.cos(2.0 * np.pi * (minute / 60.0 - 20.5) / 24.0)
    cdf = np.cumsum(density)
    cdf /= cdf[-1]
    day = rng.integers(0, days, n)
    m = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), 1439)
    return day * DAY + m * 60 + rng.integers(0, 60, n)


def schedule_blocks(world: World):
    """Every user's blocks: (n_blocks [U], chained [NB], scheduled start [NB]), user-major.

    Sessions ~ Poisson(activity_u * sessions_per_user_day * days), each 1-3 blocks; the first
    block of a session starts at its scheduled time, the others are chained (start 1..300 s after
    the previous block's last event). Scheduled starts are diurnal, sorted per user, and spaced by
    at least BLOCK_SPAN (sorted times shrunk into [0, T - n_u * BLOCK_SPAN), plus b * BLOCK_SPAN),
    which guarantees that blocks never overlap and all end before the period's end.
    """
    cfg = world.config
    rng = np.random.default_rng(world.seeds["schedule"])
    U, T = cfg.num_users, cfg.duration
    cap_blocks = int(0.5 * T // BLOCK_SPAN)
    max_per_session = len(cfg.blocks_per_session)
    n_sessions = np.minimum(rng.poisson(world.activity * cfg.sessions_per_user_day * cfg.days),
                            max(1, cap_blocks // max_per_session))
    S = int(n_sessions.sum())
    per_session = rng.choice(max_per_session, S, p=np.asarray(cfg.blocks_per_session)) + 1
    session_user = np.repeat(np.arange(U), n_sessions)
    n_blocks = np.bincount(session_user, weights=per_session, minlength=U).astype(np.int64)
    NB = int(n_blocks.sum())
    block_user = np.repeat(np.arange(U), n_blocks)
    block_session = np.repeat(np.arange(S), per_session)
    chained = np.zeros(NB, dtype=bool)
    chained[1:] = block_session[1:] == block_session[:-1]
    x = diurnal_times(rng, NB, cfg.days)
    x = x[np.lexsort((x, block_user))]
    offset = np.concatenate([[0], np.cumsum(n_blocks)[:-1]])
    b = np.arange(NB) - np.repeat(offset, n_blocks)
    room = np.repeat((T - n_blocks * BLOCK_SPAN) / T, n_blocks)
    start = np.floor(x * room).astype(np.int64) + b * BLOCK_SPAN
    return n_blocks, offset, chained, start


def simulate(world: World, progress=None) -> Simulation:
    """Run the world. ``progress(step, total)`` is called once per block step if given."""
    cfg = world.config
    rng = np.random.default_rng(world.seeds["sim"])
    C = cfg.num_categories
    n_blocks, offset, chained, start = schedule_blocks(world)
    rank_user = np.argsort(-n_blocks, kind="stable")  # rank r -> user index
    desc = n_blocks[rank_user]
    offset_rank = offset[rank_user]
    steps = int(desc[0]) if len(desc) else 0
    state = _State(cfg.num_users, C)
    events = _Columns({"user": np.int32, "type": np.int8, "t": np.int64, "category": np.int16, "item": np.int32,
                       "ad": np.int32})
    imps = _Columns({"user": np.int32, "t": np.int64, "ad": np.int32, "placement": np.int8, "hour": np.int8,
                     "request": np.int64, "slot": np.int8, "p_click": np.float64, "p_conversion": np.float64,
                     "click": np.int8, "conversion": np.int8})
    stats = {"same_second_events": 0, "cotimed_events": 0, "requests": 0, "dropped_duplicate_slots": 0}
    ads_probs = np.asarray(cfg.ads_per_request)
    placement_probs = np.asarray(cfg.placement_probs)

    def organic(rows, users, t, session_start, previous=None):
        """One organic event for each of ``rows`` (rank indices) at times ``t``; returns (type, item, t).

        ``previous`` = (type, item, t) of the block's previous organic event: an exact duplicate of
        it in the same second is moved one second later (stores drop exact duplicates).
        """
        n = len(rows)
        prev = state.buffers.category[rows, 0]
        has_prev = (state.buffers.type[rows, 0] >= 0) & ~session_start
        u = rng.random(n)
        fresh = world.sample_interest_category(users, t, rng.random(n))
        cat = np.where(has_prev & (u < P_STAY), prev,
                       np.where(has_prev & (u < P_STAY + P_NEXT), world.next_category[np.maximum(prev, 0)], fresh))
        like = rng.random(n) < cfg.like_fraction
        u_item = rng.random(n)
        item = np.where(like, world.page_sampler.sample(cat, u_item), world.content_sampler.sample(cat, u_item))
        typ = np.where(like, PAGE_LIKE, CONTENT_VIEW).astype(np.int8)
        if previous is not None:
            t = t + ((typ == previous[0]) & (item == previous[1]) & (t == previous[2]))
        events.add(user=users, type=typ, t=t, category=cat, item=item, ad=np.full(n, -1))
        state.push(rows, typ, t, cat, -1, -1)
        state.organic[rows, cat] += 1
        return typ, item, t

    def choose_ads(users, t, hist):
        """The serving policy: an ad per row (see docs: interest / retarget / popularity mix)."""
        n = len(users)
        day = world.day_of(t)
        mode = rng.choice(3, n, p=np.asarray(cfg.policy_mix))
        cat = world.sample_interest_category(users, t, rng.random(n))
        recent, ok = hist.recent_categories(3)
        n_recent = ok.sum(axis=1)
        pick = np.minimum((rng.random(n) * n_recent).astype(np.int64), np.maximum(n_recent - 1, 0))
        retarget = (mode == 1) & (n_recent > 0)
        funnel = rng.random(n) < RETARGET_NEXT
        target = np.where(funnel, world.next_category[np.maximum(recent[:, 0], 0)], recent[np.arange(n), pick])
        cat = np.where(retarget, target, cat)
        u = rng.random(n)
        by_category = world.ad_sampler_by_category.sample(day * C + cat, u)
        by_day = world.ad_sampler_by_day.sample(day, u)
        return np.where(mode == 2, by_day, by_category)

    for b in range(steps):
        if progress is not None:
            progress(b, steps)
        n = int(np.searchsorted(-desc, -b, side="left"))  # users with more than b blocks
        rows = np.arange(n)
        users = rank_user[:n]
        flat = offset_rank[:n] + b
        is_chained = chained[flat]
        t0 = np.where(is_chained, state.end[:n] + rng.integers(1, MAX_CHAIN_GAP + 1, n), start[flat])
        k = np.minimum(rng.poisson(cfg.organic_per_block, n), MAX_ORGANIC)
        cur = t0.copy()
        last_type = np.full(n, -1, np.int8)
        last_item = np.full(n, -1, np.int64)
        for i in range(MAX_ORGANIC):
            sel = np.flatnonzero(k > i)
            if sel.size == 0:
                break
            t_prev = cur[sel]
            if i > 0:
                same = rng.random(sel.size) < cfg.same_second_probability
                gap = np.clip(np.round(rng.lognormal(np.log(ORGANIC_GAP_MEDIAN), 0.8, sel.size)), 1, MAX_ORGANIC_GAP)
                cur[sel] += np.where(same, 0, gap).astype(np.int64)
            typ, item, t_new = organic(sel, users[sel], cur[sel], (i == 0) & ~is_chained[sel],
                                       previous=(last_type[sel], last_item[sel], t_prev) if i > 0 else None)
            if i > 0:
                stats["same_second_events"] += int((t_new == t_prev).sum())
            cur[sel], last_type[sel], last_item[sel] = t_new, typ, item
        end = cur.copy()

        # The ad request at the end of the block.
        req = np.flatnonzero(rng.random(n) < cfg.request_probability)
        R = len(req)
        if R:
            rusers = users[req]
            t_req = np.where(k[req] > 0, cur[req] + rng.integers(1, MAX_REQUEST_GAP + 1, R), t0[req])
            hist = state.history(req)
            placement = rng.choice(len(placement_probs), R, p=placement_probs)
            hour = ((cfg.start_timestamp + t_req) % DAY) // 3600
            n_slots = rng.choice(len(ads_probs), R, p=ads_probs) + 1
            chosen = np.full((R, 3), -1, dtype=np.int64)
            for s in range(3):
                sel = np.flatnonzero(n_slots > s)
                if sel.size == 0:
                    break
                ads = choose_ads(rusers[sel], t_req[sel], hist.take(sel))
                for _ in range(3):  # distinct ads within a request: redraw duplicates
                    dup = np.flatnonzero((chosen[sel, :s] == ads[:, None]).any(axis=1)) if s else np.zeros(0, int)
                    if dup.size == 0:
                        break
                    ads[dup] = choose_ads(rusers[sel[dup]], t_req[sel[dup]], hist.take(sel[dup]))
                if s:
                    dup = (chosen[sel, :s] == ads[:, None]).any(axis=1)
                    stats["dropped_duplicate_slots"] += int(dup.sum())
                    ads = np.where(dup, -1, ads)
                chosen[sel, s] = ads
            pair_row, pair_slot = np.nonzero(chosen >= 0)  # row-major: by request, then slot
            pair_ad = chosen[pair_row, pair_slot]
            pair_users = rusers[pair_row]
            pair_t = t_req[pair_row]
            count = state.organic[req[pair_row], world.ad_category[pair_ad]]
            p_click, p_conv = probabilities(world, pair_users, pair_t, pair_ad, placement[pair_row], hour[pair_row],
                                            hist.take(pair_row), count)
            click = rng.random(len(pair_ad)) < p_click
            converted = click & (rng.random(len(pair_ad)) < p_conv)
            tracked = world.advertiser_tracks_conversions[world.ad_advertiser[pair_ad]]
            request_key = stats["requests"] + np.arange(R)
            stats["requests"] += R
            imps.add(user=pair_users, t=pair_t, ad=pair_ad, placement=placement[pair_row], hour=hour[pair_row],
                     request=request_key[pair_row], slot=pair_slot, p_click=p_click, p_conversion=p_conv,
                     click=click, conversion=np.where(tracked, converted, -1))

            # An organic event in the very second of the request: after it, so not in its history.
            cot = np.flatnonzero(rng.random(R) < cfg.cotimed_event_probability)
            if cot.size:
                organic(req[cot], rusers[cot], t_req[cot], np.zeros(cot.size, bool))
                stats["cotimed_events"] += int(cot.size)

            # Clicks 1..60 s after the request, then logged conversions 61..600 s after their click.
            click_t = pair_t + rng.integers(1, MAX_CLICK_DELAY + 1, len(pair_ad))
            conv_t = click_t + rng.integers(MIN_CONVERSION_DELAY, MAX_CONVERSION_DELAY + 1, len(pair_ad))
            end[req] = t_req
            for typ, times, happened in ((AD_CLICK, click_t, click), (AD_CONVERSION, conv_t, converted & tracked)):
                mat = np.full((R, 3), _NEVER, dtype=np.int64)
                mat[pair_row[happened], pair_slot[happened]] = times[happened]
                ad_mat = np.full((R, 3), -1, dtype=np.int64)
                ad_mat[pair_row, pair_slot] = pair_ad
                order = np.argsort(mat, axis=1, kind="stable")
                for j in range(3):
                    col = order[:, j]
                    tj = mat[np.arange(R), col]
                    ok = np.flatnonzero(tj != _NEVER)
                    if ok.size == 0:
                        break
                    ad = ad_mat[ok, col[ok]]
                    cat = world.ad_category[ad]
                    adv = world.ad_advertiser[ad]
                    events.add(user=rusers[ok], type=np.full(ok.size, typ, np.int8), t=tj[ok], category=cat,
                               item=np.full(ok.size, -1), ad=ad)
                    state.push(req[ok], typ, tj[ok], cat, adv, ad)
                    end[req[ok]] = np.maximum(end[req[ok]], tj[ok])
        state.end[:n] = end

    ev = events.finish()
    im = imps.finish()
    stats["blocks"] = int(n_blocks.sum())
    stats["max_blocks_per_user"] = steps
    return Simulation(ev["user"], ev["type"], ev["t"], ev["category"], ev["item"], ev["ad"], im["user"], im["t"],
                      im["ad"], im["placement"], im["hour"], im["request"], im["slot"], im["p_click"],
                      im["p_conversion"], im["click"], im["conversion"], stats)

