"""Write a synthetic ads world as raw logs: events, impressions, ad content, A/B candidates, world.json.

The output directory is written atomically (a temporary sibling directory, renamed into place) and
deterministically (same parameters and seed -> byte-identical files).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eventrec.synthetic.model import EventIndex, History, probabilities
from eventrec.synthetic.simulate import RETARGET_NEXT, Simulation, simulate
from eventrec.synthetic.world import (
    CONTENT_VIEW,
    EVENT_TYPES,
    PAGE_LIKE,
    PLACEMENTS,
    World,
    WorldConfig,
)

FORMAT_VERSION = 1
FILES = ("events.parquet", "impressions.parquet", "ad_content.parquet", "candidates.parquet", "world.json")


PRESETS = ("default", "long")


def generate_world(out_dir: str | Path, num_users: int | None = None, days: int | None = None, seed: int = 0, *,
                   preset: str = "default", overwrite: bool = True, progress=None, **params) -> dict:
    """Simulate a world and write it to ``out_dir``; returns the summary also stored in world.json.

    ``preset``: ``"default"`` (the world below; 10 000 users, 30 days unless given) or ``"long"``
    (the long-history world of ``long_world.py``; 1 000 users, 180 days unless given).
    ``params`` are further config fields (:class:`WorldConfig`, or
    :class:`~eventrec.synthetic.long_world.LongConfig` for ``"long"``; e.g. ``num_ads``,
    ``sequence_strength``, ``num_candidate_requests``). ``progress(stage: str, done: int, total: int)``
    is called during the work if given. An existing ``out_dir`` is replaced only if it is empty or
    holds a world (a ``world.json``) and ``overwrite`` is true; a killed run leaves it as it was.
    """
    if preset not in PRESETS:
        raise ValueError(f"generate_world: preset: expected one of {PRESETS} (got {preset!r})")
    if preset == "long":
        from eventrec.synthetic.long_generate import generate_long_world

        out_dir = Path(out_dir)
        _check_out_dir(out_dir, overwrite)
        return generate_long_world(out_dir, num_users=1_000 if num_users is None else num_users,
                                   days=180 if days is None else days, seed=seed, progress=progress, **params)
    cfg = WorldConfig(num_users=10_000 if num_users is None else num_users, days=30 if days is None else days,
                      seed=seed, **params)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    report = progress or (lambda stage, done, total: None)
    clock = _Stopwatch()
    with clock.stage("latent_s"):
        world = World(cfg)
    with clock.stage("simulate_s"):
        sim = simulate(world, progress=lambda b, n: report("simulate", b, n))
    with clock.stage("tables_s"):
        events, order = _events_table(world, sim)
        index = EventIndex(sim.ev_user[order] + 1, sim.ev_type[order], sim.ev_t[order], sim.ev_category[order],
                           np.where(sim.ev_ad[order] >= 0, world.ad_advertiser[np.maximum(sim.ev_ad[order], 0)], -1),
                           sim.ev_ad[order], cfg.num_categories)
        impressions, request_id, imp_order = _impressions_table(world, sim)
        ad_content = _ad_content_table(world)
        cutoff = _candidate_cutoff(sim.imp_t, cfg.candidate_quantile)
        candidates = _candidates_table(world, sim, index, request_id, imp_order, cutoff,
                                       progress=lambda d, n: report("candidates", d, n))
    summary = _summary(world, sim, events, impressions, candidates, cutoff)
    return _write_world(out_dir, events, impressions, ad_content, candidates, summary, clock)


class _Stopwatch:
    """Seconds per stage of a generation, in order, then ``total_s`` since it was made."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as ``name``."""
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        """Every stage's seconds and ``total_s``, rounded to the millisecond."""
        seconds = self.seconds | {"total_s": time.perf_counter() - self.start}
        return {k: round(v, 3) for k, v in seconds.items()}


def _write_world(out_dir: Path, events: pa.Table, impressions: pa.Table, ad_content: pa.Table, candidates: pa.Table,
                 summary: dict, clock: _Stopwatch) -> dict:
    """Write the four tables and ``world.json`` (``summary``) atomically, timed as ``write_s``; returns what
    :func:`generate_world` returns (``summary`` with ``out_dir`` and ``timings``)."""
    tables = {"events.parquet": events, "impressions.parquet": impressions, "ad_content.parquet": ad_content,
              "candidates.parquet": candidates}
    with clock.stage("write_s"):
        _write_atomically(out_dir, tables, summary)
    return {**summary, "out_dir": str(out_dir), "timings": clock.rounded()}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace a directory that is not a world (or any world when ``overwrite`` is false)."""
    if out_dir.exists():
        contents = list(out_dir.iterdir()) if out_dir.is_dir() else None
        if contents is None or (contents and not (out_dir / "world.json").exists()):
            raise FileExistsError(f"{out_dir}: exists and is not a synthetic world directory; not replacing it")
        if contents and not overwrite:
            raise FileExistsError(f"{out_dir}: a world is already there (overwrite=False)")


def load_world(directory: str | Path):
    """Rebuild the latent world of a generated directory from its world.json.

    A :class:`World`, or a :class:`~eventrec.synthetic.long_world.LongWorld` for a long-history
    world (``"preset": "long"`` in world.json).
    """
    path = Path(directory) / "world.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; is {directory} a synthetic world?") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    preset = meta.get("preset", "default")
    if preset == "long":
        from eventrec.synthetic.long_world import LongConfig, LongWorld

        return LongWorld(LongConfig.from_dict(meta["config"]))
    if preset != "default":
        raise ValueError(f"{path}: preset: expected one of {PRESETS} (got {preset!r})")
    return World(WorldConfig.from_dict(meta["config"]))


# ---- tables ---------------------------------------------------------------------------------------

def _int64(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values).astype(np.int64, copy=False), pa.int64())


def _nullable_int(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(np.where(valid, values, 0).astype(np.int64), type=pa.int64(), mask=~valid)


def _strings(codes: np.ndarray, names) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(names))).cast(pa.string())


def _events_table(world: World, sim: Simulation) -> tuple[pa.Table, np.ndarray]:
    cfg = world.config
    order = np.lexsort((np.arange(len(sim.ev_t)), sim.ev_t, sim.ev_user))  # (user, time, true order)
    typ = sim.ev_type[order]
    ad = sim.ev_ad[order]
    item = sim.ev_item[order]
    is_ad = ad >= 0
    is_view = typ == CONTENT_VIEW
    is_like = typ == PAGE_LIKE
    safe_ad = np.maximum(ad, 0)
    # topics: list<string> for content views, null otherwise
    content = np.where(is_view, item, 0)
    n_topics = np.where(is_view, world.content_num_topics[content], 0)
    offsets = np.concatenate([[0], np.cumsum(n_topics)]).astype(np.int32)
    rows = np.repeat(np.arange(len(typ)), n_topics)
    pos = np.arange(len(rows)) - np.repeat(offsets[:-1], n_topics)
    topic_codes = world.content_topics[content[rows], pos]
    topic_names = [f"t{i:03d}" for i in range(cfg.num_topics)]
    topics = pa.ListArray.from_arrays(pa.array(offsets), _strings(topic_codes, topic_names),
                                      mask=pa.array(~is_view))
    table = pa.table({
        "user_id": _int64(sim.ev_user[order] + 1),
        "event_type": _strings(typ, EVENT_TYPES),
        "timestamp": _int64(sim.ev_t[order] + cfg.start_timestamp),
        "ad_id": _nullable_int(ad + 1, is_ad),
        "advertiser_id": _nullable_int(world.ad_advertiser[safe_ad] + 1, is_ad),
        "category": _int64(sim.ev_category[order] + 1),
        "price": pa.array(np.where(is_ad, world.ad_price[safe_ad], 0.0), pa.float64(), mask=~is_ad),
        "content_id": _nullable_int(item + 1, is_view),
        "topics": topics,
        "page_id": _nullable_int(item + 1, is_like),
    })
    return table, order


def _impressions_table(world: World, sim: Simulation):
    """Impressions sorted by (user_id, timestamp, request_id, slot); request ids in time order."""
    cfg = world.config
    # request_id: requests numbered 1.. by (timestamp, user_id)
    req_key, first = np.unique(sim.imp_request, return_index=True)
    req_order = np.lexsort((sim.imp_user[first], sim.imp_t[first]))
    rid = np.empty(len(req_key), np.int64)
    rid[req_order] = np.arange(1, len(req_key) + 1)
    request_id = rid[np.searchsorted(req_key, sim.imp_request)]
    order = np.lexsort((sim.imp_slot, request_id, sim.imp_t, sim.imp_user))
    ad = sim.imp_ad[order]
    conv = sim.conversion[order]
    tracked = conv >= 0
    table = pa.table({
        "request_id": _int64(request_id[order]),
        "user_id": _int64(sim.imp_user[order] + 1),
        "ad_id": _int64(ad + 1),
        "timestamp": _int64(sim.imp_t[order] + cfg.start_timestamp),
        "advertiser_id": _int64(world.ad_advertiser[ad] + 1),
        "category": _int64(world.ad_category[ad] + 1),
        "price": pa.array(world.ad_price[ad], pa.float64()),
        "placement": _strings(sim.imp_placement[order], PLACEMENTS),
        "hour_of_day": _int64(sim.imp_hour[order]),
        "click": pa.array(sim.click[order], pa.int8()),
        "conversion": pa.array(np.where(tracked, conv, 0).astype(np.int8), pa.int8(), mask=~tracked),
        "p_click": pa.array(sim.p_click[order], pa.float64()),
        "p_conversion": pa.array(sim.p_conversion[order], pa.float64()),
    })
    return table, request_id, order


def _ad_content_table(world: World) -> pa.Table:
    N, D = world.ad_embedding.shape
    values = pa.array(world.ad_embedding.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, N * D + 1, D, dtype=np.int32))
    return pa.table({"ad_id": _int64(np.arange(1, N + 1)),
                     "embedding": pa.ListArray.from_arrays(offsets, values)})


def _candidate_cutoff(imp_t: np.ndarray, quantile: float) -> int:
    """The impressions' time at the row quantile (the schema splits by row fraction, in time order)."""
    if len(imp_t) == 0:
        return 0
    ts = np.sort(imp_t)
    return int(ts[min(int(quantile * len(ts)), len(ts) - 1)])


def policy_weights(world: World, users: np.ndarray, t: np.ndarray, hist: History) -> np.ndarray:
    """The serving policy's probability of each ad for each request: ``[n, num_ads]`` float64.

    The same mixture that picks the impressions' ads: policy_mix[0] on interest(t) categories,
    policy_mix[1] on retargeting: the last 3 events' categories (uniform over them) with
    1 - RETARGET_NEXT, the most recent event's funnel successor with RETARGET_NEXT (interest if none),
    policy_mix[2] on all active ads; within a category (or all ads), ads of that day
    proportionally to their popularity.
    """
    cfg = world.config
    C = cfg.num_categories
    n = len(users)
    day = world.day_of(t)
    interest = world.interest(users, t)
    interest = interest / interest.sum(axis=1, keepdims=True)
    recent, ok = hist.recent_categories(3)
    rec = np.zeros((n, C))
    for k in range(recent.shape[1]):
        np.add.at(rec, (np.flatnonzero(ok[:, k]), recent[ok[:, k], k]), 1.0)
    n_recent = ok.sum(axis=1)
    rec = (1.0 - RETARGET_NEXT) * rec / np.maximum(n_recent, 1)[:, None]
    rec[np.arange(n), world.next_category[np.maximum(recent[:, 0], 0)]] += RETARGET_NEXT
    rec = np.where(n_recent[:, None] > 0, rec, interest)
    m0, m1, m2 = cfg.policy_mix
    active = world.ad_active[day]  # [n, N]
    pop = np.where(active, world.ad_popularity[None, :], 0.0)
    cat_total = np.zeros((n, C))
    for c in range(C):
        cat_total[:, c] = pop[:, world.ad_category == c].sum(axis=1)
    cat_mass = m0 * interest + m1 * rec
    per_cat = cat_mass / np.maximum(cat_total, 1e-300)
    return pop * (per_cat[:, world.ad_category] + m2 / pop.sum(axis=1, keepdims=True))


CANDIDATE_COLUMNS = ("request_id", "user", "t", "ad", "placement", "hour", "p_click", "p_conversion")


def _candidate_requests(num_requests: int, rng: np.random.Generator, sim: Simulation, request_id: np.ndarray,
                        imp_order: np.ndarray, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``num_requests`` requests after ``cutoff``, drawn without replacement, in request id order.

    ``request_id``: ``[num_impressions]`` per simulation impression; ``imp_order``: the impressions
    table's row order. Returns the chosen requests' ids ``[n_req]`` and a simulation impression row
    of each ``[n_req]``.
    """
    rid = request_id[imp_order]
    uniq, pos = np.unique(rid, return_index=True)  # one (sorted-table) row per request
    t_req = sim.imp_t[imp_order][pos]
    eligible = np.flatnonzero(t_req > cutoff)
    n_req = min(num_requests, len(eligible))
    chosen = np.sort(rng.choice(eligible, n_req, replace=False)) if n_req else np.zeros(0, np.int64)
    return uniq[chosen], imp_order[pos[chosen]]


def _candidate_chunk(num_ads: int) -> int:
    """Requests per chunk of the candidate sampling (a chunk holds ``[chunk, num_ads]`` weights)."""
    return max(1, min(256, 2_000_000 // max(num_ads, 1)))


def _gumbel_top_k(w: np.ndarray, K: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``K`` ads per request drawn without replacement proportionally to ``w`` ``[n, num_ads]`` (Gumbel
    top-K); fewer where fewer than ``K`` ads have a weight > 0 (the rest are dropped).

    Returns the request row ``[m]`` and the ad ``[m]`` of each draw, by row, ads ascending within a row.
    """
    with np.errstate(divide="ignore"):
        keys = np.log(w) + rng.gumbel(size=w.shape)
    k = min(K, w.shape[1])
    top = np.sort(np.argpartition(-keys, k - 1, axis=1)[:, :k], axis=1)
    rows = np.arange(w.shape[0])
    ok = np.isfinite(keys[rows[:, None], top])
    return np.repeat(rows, k).reshape(len(rows), k)[ok], top[ok]


def _candidates_output(parts: list[tuple[np.ndarray, ...]], world: World, start_timestamp: int) -> pa.Table:
    """The candidates table from sampled chunks, sorted by (user_id, timestamp, request_id, ad_id).

    ``parts``: one tuple of ``[m]`` arrays per chunk, in :data:`CANDIDATE_COLUMNS` order (0-based user,
    ad, time in seconds from the start); ``world``: the ads' advertiser, category and price.
    """
    c = {name: (np.concatenate([part[i] for part in parts]) if parts
                else np.zeros(0, np.float64 if name.startswith("p_") else np.int64))
         for i, name in enumerate(CANDIDATE_COLUMNS)}
    order = np.lexsort((c["ad"], c["request_id"], c["t"], c["user"]))
    ad = c["ad"][order].astype(np.int64)
    return pa.table({
        "request_id": _int64(c["request_id"][order]),
        "user_id": _int64(c["user"][order] + 1),
        "timestamp": _int64(c["t"][order] + start_timestamp),
        "ad_id": _int64(ad + 1),
        "advertiser_id": _int64(world.ad_advertiser[ad] + 1),
        "category": _int64(world.ad_category[ad] + 1),
        "price": pa.array(world.ad_price[ad], pa.float64()),
        "placement": _strings(c["placement"][order].astype(np.int64), PLACEMENTS),
        "hour_of_day": _int64(c["hour"][order]),
        "p_click": pa.array(c["p_click"][order], pa.float64()),
        "p_conversion": pa.array(c["p_conversion"][order], pa.float64()),
    })


def _candidates_table(world: World, sim: Simulation, index: EventIndex, request_id, imp_order, cutoff, progress):
    """K candidate ads for held-out requests after the cutoff, with their true probabilities."""
    cfg = world.config
    rng = np.random.default_rng(world.seeds["candidates"])
    req_ids, src = _candidate_requests(cfg.num_candidate_requests, rng, sim, request_id, imp_order, cutoff)
    n_req = len(src)
    users = sim.imp_user[src]
    t = sim.imp_t[src]
    placement = sim.imp_placement[src]
    hour = sim.imp_hour[src]
    parts = []
    chunk = _candidate_chunk(cfg.num_ads)
    for lo in range(0, n_req, chunk):
        progress(lo, n_req)
        sl = slice(lo, min(lo + chunk, n_req))
        u, tt = users[sl], t[sl]
        hist = index.history(u + 1, tt)
        w = policy_weights(world, u, tt, hist)
        r_idx, ads = _gumbel_top_k(w, cfg.candidates_per_request, rng)
        qu, qt = u[r_idx], tt[r_idx]
        qhist = hist.take(r_idx)
        count = index.organic_count(qu + 1, world.ad_category[ads], qt)
        pc, pv = probabilities(world, qu, qt, ads, placement[sl][r_idx], hour[sl][r_idx], qhist, count)
        parts.append((req_ids[sl][r_idx], qu, qt, ads, placement[sl][r_idx], hour[sl][r_idx], pc, pv))
    return _candidates_output(parts, world, cfg.start_timestamp)


# ---- summary and writing -----------------------------------------------------------------------------

def _summary(world: World, sim: Simulation, events: pa.Table, impressions: pa.Table, candidates: pa.Table,
             cutoff: int) -> dict:
    cfg = world.config
    clicks = sim.click.astype(bool)
    tracked = sim.conversion >= 0
    n_imp = len(sim.click)
    by_type = {name: int((sim.ev_type == i).sum()) for i, name in enumerate(EVENT_TYPES)}
    tracked_clicks = clicks & tracked
    new_ads = int((world.ad_first_day >= int(0.7 * cfg.days)).sum())

    def rate(num, den):
        return round(float(num) / float(den), 6) if den else None

    return {
        "generator": "eventrec.synthetic",
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "time_range": {"start": cfg.start_timestamp, "end": cfg.start_timestamp + cfg.duration},
        "candidate_cutoff_timestamp": cfg.start_timestamp + cutoff,
        "counts": {
            "users": cfg.num_users,
            "users_with_events": int(len(np.unique(sim.ev_user))),
            "events": int(len(sim.ev_t)),
            "events_by_type": by_type,
            "impressions": n_imp,
            "requests": int(sim.stats["requests"]),
            "clicks": int(clicks.sum()),
            "conversions_logged": int(by_type["ad_conversion"]),
            "impressions_conversion_untracked": int((~tracked).sum()),
            "same_second_events": int(sim.stats["same_second_events"]),
            "events_at_request_timestamp": int(sim.stats["cotimed_events"]),
            "candidate_requests": int(len(np.unique(candidates.column("request_id").to_numpy()))),
            "candidate_rows": int(candidates.num_rows),
            "ads": cfg.num_ads,
            "ads_launched_after_70pct": new_ads,
        },
        "rates": {
            "ctr": rate(clicks.sum(), n_imp),
            "mean_p_click": rate(sim.p_click.sum(), n_imp),
            "cvr_of_tracked_clicks": rate((sim.conversion[tracked_clicks] == 1).sum(), tracked_clicks.sum()),
            "mean_p_conversion_of_clicks": rate(sim.p_conversion[clicks].sum(), clicks.sum()),
            "conversion_untracked_fraction": rate((~tracked).sum(), n_imp),
            "events_per_user": rate(len(sim.ev_t), cfg.num_users),
            "impressions_per_user": rate(n_imp, cfg.num_users),
        },
    }


def _write_atomically(out_dir: Path, tables: dict[str, pa.Table], summary: dict) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, table in tables.items():
            pq.write_table(table, tmp / name, compression="zstd", row_group_size=1 << 20, write_statistics=True)
        (tmp / "world.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
