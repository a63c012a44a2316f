"""Write a long-history world (``generate_world(out, preset="long")``): the default preset's files.

Same files, columns and guarantees as the default preset (atomic, deterministic; see
``generate.py``); ``world.json`` adds ``"preset": "long"``, the :class:`LongConfig` as ``config``,
the history-length distribution and the truncated-oracle report (``long_truncation.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from eventrec.synthetic.generate import (
    _ad_content_table,
    _candidate_cutoff,
    _events_table,
    _impressions_table,
    _int64,
    _strings,
    _summary,
    _write_atomically,
)
from eventrec.synthetic.long_history import LongHistoryIndex
from eventrec.synthetic.long_model import probabilities
from eventrec.synthetic.long_simulate import POLICY_RECENT, simulate_long
from eventrec.synthetic.long_truncation import truncation_report
from eventrec.synthetic.long_world import LongConfig, LongWorld
from eventrec.synthetic.simulate import Simulation
from eventrec.synthetic.world import CONTENT_VIEW, PAGE_LIKE, PLACEMENTS

PRESET = "long"


def generate_long_world(out_dir: Path, num_users: int = 1_000, days: int = 180, seed: int = 0, *,
                        progress=None, **params) -> dict:
    """Simulate a long-history world and write it to ``out_dir`` (already checked by the caller)."""
    cfg = LongConfig(num_users=num_users, days=days, seed=seed, **params)
    report = progress or (lambda stage, done, total: None)
    timings = {}
    t_start = time.perf_counter()
    world = LongWorld(cfg)
    timings["latent_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    report("simulate", 0, 1)
    sim = simulate_long(world)
    timings["simulate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = world.base
    events, order = _events_table(base, sim)
    ev_ad = sim.ev_ad[order]
    index = LongHistoryIndex(sim.ev_user[order], sim.ev_type[order], sim.ev_t[order], sim.ev_category[order],
                             np.where(ev_ad >= 0, base.ad_advertiser[np.maximum(ev_ad, 0)], -1),
                             cfg.num_categories, cfg.num_advertisers)
    impressions, request_id, imp_order = _impressions_table(base, sim)
    ad_content = _ad_content_table(base)
    cutoff = _candidate_cutoff(sim.imp_t, cfg.candidate_quantile)
    report("candidates", 0, 1)
    candidates = _candidates_table(world, sim, index, request_id, imp_order, cutoff)
    timings["tables_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report("truncation report", 0, 1)
    truncation = truncation_report(world, index, sim.imp_user.astype(np.int64), sim.imp_t, sim.imp_ad.astype(np.int64),
                                   sim.imp_placement.astype(np.int64), sim.imp_hour.astype(np.int64), sim.click,
                                   sim.p_click)
    timings["truncation_report_s"] = time.perf_counter() - t0

    summary = _summary(base, sim, events, impressions, candidates, cutoff)
    summary["config"] = cfg.to_dict()
    summary["preset"] = PRESET
    summary["history"] = _history_stats(sim, cfg.num_users)
    summary["simulation"] = {k: int(v) for k, v in sim.stats.items()
                             if k not in ("same_second_events", "cotimed_events")}
    summary["truncation"] = truncation
    t0 = time.perf_counter()
    tables = {"events.parquet": events, "impressions.parquet": impressions, "ad_content.parquet": ad_content,
              "candidates.parquet": candidates}
    _write_atomically(Path(out_dir), tables, summary)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return {**summary, "out_dir": str(out_dir), "timings": {k: round(v, 3) for k, v in timings.items()}}


def _history_stats(sim: Simulation, num_users: int) -> dict:
    """Events per user (all streams): mean, quantiles, max, and how many users pass 1k / 4k / 16k / 64k."""
    per_user = np.bincount(sim.ev_user, minlength=num_users)
    return {
        "events_per_user_mean": round(float(per_user.mean()), 1),
        **{f"events_per_user_p{q}": int(np.percentile(per_user, q)) for q in (10, 50, 90, 99)},
        "events_per_user_max": int(per_user.max()),
        **{f"users_over_{n // 1000}k": int((per_user > n).sum()) for n in (1_000, 4_000, 16_000, 64_000)},
    }


def policy_weights_long(world: LongWorld, t, begin, cut, organic_category) -> np.ndarray:
    """The long world's serving policy as probabilities over ads: ``[n, num_ads]`` float64.

    ``begin, cut``: positions of each request's organic history in ``organic_category`` (the user's
    organic events in time order). Mixture (``policy_mix``): a category of one of the last 20 organic
    events, a category of any past organic event, or any ad; within a category (or all ads), the
    ads active that day proportionally to their popularity.
    """
    cfg = world.config
    base = world.base
    C = cfg.num_categories
    n = len(t)
    recent = np.zeros((n, C))
    whole = np.zeros((n, C))
    for r in range(n):  # a loop over requests (not events): bincount of each one's history
        lo, hi = int(begin[r]), int(cut[r])
        whole[r] = np.bincount(organic_category[lo:hi], minlength=C)
        recent[r] = np.bincount(organic_category[max(lo, hi - POLICY_RECENT):hi], minlength=C)
    m0, m1, m2 = cfg.policy_mix
    has = (cut > begin)[:, None]
    cat_mass = np.where(has, m0 * recent / np.maximum(recent.sum(1, keepdims=True), 1)
                        + m1 * whole / np.maximum(whole.sum(1, keepdims=True), 1), 0.0)
    popular = np.where(has, m2, 1.0)
    day = world.day_of(t)
    pop = np.where(base.ad_active[day], base.ad_popularity[None, :], 0.0)  # [n, N]
    by_category = np.argsort(base.ad_category, kind="stable")  # every category has ads (world.py)
    starts = np.searchsorted(base.ad_category[by_category], np.arange(C))
    cat_total = np.add.reduceat(pop[:, by_category], starts, axis=1)  # [n, C]
    per_cat = cat_mass / np.maximum(cat_total, 1e-300)
    return pop * (per_cat[:, base.ad_category] + popular / pop.sum(axis=1, keepdims=True))


def _candidates_table(world: LongWorld, sim: Simulation, index: LongHistoryIndex, request_id, imp_order,
                      cutoff) -> pa.Table:
    """K candidate ads for held-out requests after the cutoff, with their true probabilities."""
    cfg = world.config
    base = world.base
    rng = np.random.default_rng(world.seeds["candidates"])
    rid = request_id[imp_order]
    uniq, pos = np.unique(rid, return_index=True)
    t_req = sim.imp_t[imp_order][pos]
    eligible = np.flatnonzero(t_req > cutoff)
    n_req = min(cfg.num_candidate_requests, len(eligible))
    chosen = np.sort(rng.choice(eligible, n_req, replace=False)) if n_req else np.zeros(0, np.int64)
    src = imp_order[pos[chosen]]
    users = sim.imp_user[src].astype(np.int64)
    t = sim.imp_t[src]
    placement, hour = sim.imp_placement[src].astype(np.int64), sim.imp_hour[src].astype(np.int64)
    organic = (sim.ev_type == CONTENT_VIEW) | (sim.ev_type == PAGE_LIKE)
    org_order = np.lexsort((np.arange(int(organic.sum())), sim.ev_t[organic], sim.ev_user[organic]))
    org_user = sim.ev_user[organic][org_order].astype(np.int64)
    org_t = sim.ev_t[organic][org_order]
    org_category = sim.ev_category[organic][org_order].astype(np.int64)
    key = org_user * np.int64(2**32) + org_t
    begin = np.searchsorted(key, users * np.int64(2**32), side="left")
    cut = np.searchsorted(key, users * np.int64(2**32) + t, side="left")
    K = cfg.candidates_per_request
    cols = {k: [] for k in ("request_id", "user", "t", "ad", "placement", "hour", "p_click", "p_conversion")}
    chunk = max(1, min(256, 2_000_000 // max(cfg.num_ads, 1)))
    for lo in range(0, n_req, chunk):
        sl = slice(lo, min(lo + chunk, n_req))
        w = policy_weights_long(world, t[sl], begin[sl], cut[sl], org_category)
        with np.errstate(divide="ignore"):
            keys = np.log(w) + rng.gumbel(size=w.shape)
        k = min(K, w.shape[1])
        top = np.sort(np.argpartition(-keys, k - 1, axis=1)[:, :k], axis=1)
        rows = np.arange(w.shape[0])
        ok = np.isfinite(keys[rows[:, None], top])
        r_idx = np.repeat(rows, k).reshape(len(rows), k)[ok]
        ads = top[ok]
        qu, qt = users[sl][r_idx], t[sl][r_idx]
        pc, pv = probabilities(world, index, qu, qt, ads, placement[sl][r_idx], hour[sl][r_idx])
        for name, v in (("request_id", uniq[chosen][sl][r_idx]), ("user", qu), ("t", qt), ("ad", ads),
                        ("placement", placement[sl][r_idx]), ("hour", hour[sl][r_idx]), ("p_click", pc),
                        ("p_conversion", pv)):
            cols[name].append(v)
    c = {k: (np.concatenate(v) if v else np.zeros(0, np.float64 if k.startswith("p_") else np.int64))
         for k, v in cols.items()}
    order = np.lexsort((c["ad"], c["request_id"], c["t"], c["user"]))
    ad = c["ad"][order].astype(np.int64)
    return pa.table({
        "request_id": _int64(c["request_id"][order]),
        "user_id": _int64(c["user"][order] + 1),
        "timestamp": _int64(c["t"][order] + cfg.start_timestamp),
        "ad_id": _int64(ad + 1),
        "advertiser_id": _int64(base.ad_advertiser[ad] + 1),
        "category": _int64(base.ad_category[ad] + 1),
        "price": pa.array(base.ad_price[ad], pa.float64()),
        "placement": _strings(c["placement"][order].astype(np.int64), PLACEMENTS),
        "hour_of_day": _int64(c["hour"][order]),
        "p_click": pa.array(c["p_click"][order], pa.float64()),
        "p_conversion": pa.array(c["p_conversion"][order], pa.float64()),
    })
