"""Write a long-history world (``generate_world(out, preset="long")``): the default preset's files.

Same files, columns and guarantees as the default preset (atomic, deterministic; see
``generate.py``); ``world.json`` adds ``"preset": "long"``, the :class:`LongConfig` as ``config``,
the history-length distribution and the truncated-oracle report (``long_truncation.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from eventrec.synthetic.generate import (
    _ad_content_table,
    _candidate_chunk,
    _candidate_cutoff,
    _candidate_requests,
    _candidates_output,
    _events_table,
    _gumbel_top_k,
    _impressions_table,
    _Stopwatch,
    _summary,
    _write_world,
)
from eventrec.synthetic.long_history import LongHistoryIndex
from eventrec.synthetic.long_model import probabilities
from eventrec.synthetic.long_simulate import POLICY_RECENT, simulate_long
from eventrec.synthetic.long_truncation import truncation_report
from eventrec.synthetic.long_world import LongConfig, LongWorld
from eventrec.synthetic.simulate import Simulation
from eventrec.synthetic.world import CONTENT_VIEW, PAGE_LIKE

PRESET = "long"


def generate_long_world(out_dir: Path, num_users: int = 1_000, days: int = 180, seed: int = 0, *,
                        progress=None, **params) -> dict:
    """Simulate a long-history world and write it to ``out_dir`` (already checked by the caller)."""
    cfg = LongConfig(num_users=num_users, days=days, seed=seed, **params)
    report = progress or (lambda stage, done, total: None)
    clock = _Stopwatch()
    with clock.stage("latent_s"):
        world = LongWorld(cfg)
    report("simulate", 0, 1)
    with clock.stage("simulate_s"):
        sim = simulate_long(world)
    base = world.base
    with clock.stage("tables_s"):
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
    report("truncation report", 0, 1)
    with clock.stage("truncation_report_s"):
        truncation = truncation_report(world, index, sim.imp_user.astype(np.int64), sim.imp_t,
                                       sim.imp_ad.astype(np.int64), sim.imp_placement.astype(np.int64),
                                       sim.imp_hour.astype(np.int64), sim.click, sim.p_click)

    summary = _summary(base, sim, events, impressions, candidates, cutoff)
    summary["config"] = cfg.to_dict()
    summary["preset"] = PRESET
    summary["history"] = _history_stats(sim, cfg.num_users)
    summary["simulation"] = {k: int(v) for k, v in sim.stats.items()
                             if k not in ("same_second_events", "cotimed_events")}
    summary["truncation"] = truncation
    return _write_world(Path(out_dir), events, impressions, ad_content, candidates, summary, clock)


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
    req_ids, src = _candidate_requests(cfg.num_candidate_requests, rng, sim, request_id, imp_order, cutoff)
    n_req = len(src)
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
    parts = []
    chunk = _candidate_chunk(cfg.num_ads)
    for lo in range(0, n_req, chunk):
        sl = slice(lo, min(lo + chunk, n_req))
        w = policy_weights_long(world, t[sl], begin[sl], cut[sl], org_category)
        r_idx, ads = _gumbel_top_k(w, cfg.candidates_per_request, rng)
        qu, qt = users[sl][r_idx], t[sl][r_idx]
        pc, pv = probabilities(world, index, qu, qt, ads, placement[sl][r_idx], hour[sl][r_idx])
        parts.append((req_ids[sl][r_idx], qu, qt, ads, placement[sl][r_idx], hour[sl][r_idx], pc, pv))
    return _candidates_output(parts, base, cfg.start_timestamp)
