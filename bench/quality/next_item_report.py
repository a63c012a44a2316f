"""The next-item table of one dataset: every variant's finished seeds, the popularity rule and SASRec.

SASRec's numbers are read from ``bench/out/quality/<dataset>[-ties-shuffled]/sasrec*/seed*/`` (its
saved per-user test ranks, ``bench/quality/peers/recbole_sasrec.py``), scored on the same test users.
Rows without runs here (a fresh checkout) are kept as written in ``docs/results.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from bench.quality.next_item import benchmark
from bench.quality.ranking_metrics import hit_rate_and_ndcg
from bench.quality.report import KEPT_NOTE, cell_mean, markdown_table, mean_std, with_kept_rows
from bench.quality.variant import NextItemVariant


def popularity_rule(sequences: pl.DataFrame, items: pl.DataFrame, users: np.ndarray) -> tuple[float, float]:
    """HR@10 and NDCG@10 of ranking the catalogue by training count (ties pessimistic)."""
    counts = sequences.filter(pl.col("split") == "train").group_by("item_id").len()
    catalogue = items.select("item_id").join(counts, on="item_id", how="left").fill_null(0)
    count_of = dict(zip(catalogue["item_id"].to_list(), catalogue["len"].to_list()))
    all_counts = catalogue["len"].to_numpy()
    test = sequences.filter((pl.col("split") == "test") & pl.col("user_id").is_in(users.tolist()))
    ranks = np.array([int((all_counts >= count_of.get(item, 0)).sum()) for item in test["item_id"].to_list()])
    return hit_rate_and_ndcg(ranks, 10)


def sasrec_ranks(seed_dir: Path, users: np.ndarray) -> np.ndarray:
    """SASRec's saved test rank of each of ``users``, in their order ``[U]``; raises if any is missing."""
    rank_of = dict(zip(np.load(seed_dir / "test_users.npy").astype(str).tolist(), np.load(seed_dir / "test_ranks.npy").tolist()))
    found = [rank_of.get(str(u)) for u in users.tolist()]
    missing = sum(r is None for r in found)
    if missing:
        raise RuntimeError(f"{seed_dir}: SASRec ranked {len(users) - missing} of the {len(users)} test users")
    return np.array(found, dtype=np.int64)


def sasrec_on_users(sasrec_dir: Path, users: np.ndarray) -> dict[str, list[float]]:
    """SASRec's HR@10 / NDCG@10 per seed over ``users``, from its saved per-user test ranks."""
    out: dict[str, list[float]] = {}
    for seed_dir in sorted(sasrec_dir.glob("seed*")):
        if not (seed_dir / "test_ranks.npy").exists():
            continue
        hr, ndcg = hit_rate_and_ndcg(sasrec_ranks(seed_dir, users), 10)
        out.setdefault("hr@10", []).append(hr)
        out.setdefault("ndcg@10", []).append(ndcg)
    return out


def finished(variant: NextItemVariant, seeds: int) -> list[dict]:
    """The ``ranking_<N>users.json`` records of the finished seeds among the first ``seeds``."""
    bench = benchmark(variant.dataset, variant.protocol.ties)
    files = [bench.done_file(variant, seed) for seed in range(seeds)]
    return [json.loads(f.read_text()) for f in files if f.exists()]


def sasrec_rows(work: Path, users: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """One row per SASRec run folder (``sasrec``, ``sasrec_60min``, ...), named by how its training ended."""
    rows = {}
    for sasrec_dir in sorted(work.glob("sasrec*")):
        peer = sasrec_on_users(sasrec_dir, users)
        if peer:
            runs = [json.loads(p.read_text()) for p in sorted(sasrec_dir.glob("seed*/result.json"))]
            how = "; ".join(sorted({f"{r['epochs_trained']} epochs, best {r['best_epoch']}, {r['stop_reason']}" for r in runs}))
            rows[f"RecBole SASRec ({how})"] = peer
    return rows


def report(table: str, variants: list[NextItemVariant], seeds: int | None, results: Path) -> str:
    """The table's section of ``docs/results.md``: HR@10 / NDCG@10 per row and the ratios to SASRec."""
    first = variants[0]
    for v in variants[1:]:  # one test population per table
        if (v.dataset, v.protocol.ties, v.protocol.test_users) != (first.dataset, first.protocol.ties, first.protocol.test_users):
            raise ValueError(f"{table}: {v.label!r} ranks other test users than {first.label!r} (dataset, protocol.ties, protocol.test_users)")
    bench = benchmark(first.dataset, first.protocol.ties)
    users = bench.users(first.protocol.test_users)
    rows: dict[str, dict[str, list[float]]] = {}
    for v in variants:
        if found := finished(v, seeds or v.seeds):
            rows[v.label] = {"hr@10": [r["hr@10"] for r in found], "ndcg@10": [r["ndcg@10"] for r in found],
                             "train s": [r["train_seconds"] for r in found], "rank s": [r["rank_seconds"] for r in found]}
    rows["rule: most popular in training (same list for everyone)"] = dict(zip(("hr@10", "ndcg@10"), ([v] for v in popularity_rule(bench.sequences, bench.items, users))))
    peers = sasrec_rows(bench.work, users)
    rows |= peers
    text, earlier = with_kept_rows(table, markdown_table(rows, ["hr@10", "ndcg@10", "train s", "rank s"], {"hr@10": "HR@10", "ndcg@10": "NDCG@10"},
                                                         {"train s": 0, "rank s": 0}), set(rows), results)
    stats = bench.stats
    sample = f" ({len(users):,} sampled test users)" if first.protocol.test_users else ""
    lines = [f"## {first.dataset}: next item, full-catalogue ranking{sample}" + ("" if first.protocol.ties == "row" else f", ties {first.protocol.ties}"), "",
             f"Command: `.venv/bin/python -m bench.quality.run bench/quality/variants/{table} --jobs 3` (one row per variant file). "
             f"{stats['users']:,} users, {stats['interactions']:,} interactions, {stats['catalogue']:,} items with interactions, "
             f"{bench.items.height:,} ranked (every item of the item file); test users ranked: {len(users):,}. "
             "Times (train s, rank s) are per seed, each seed in its own process." + (KEPT_NOTE if earlier else ""), "", text]
    means = {name: (mean_std(v["hr@10"])[0], mean_std(v["ndcg@10"])[0]) for name, v in rows.items()}
    means |= {name: (cell_mean(cells[1]), cell_mean(cells[2])) for name, cells in earlier.items()}  # cells: seeds, HR@10, NDCG@10, ...
    peer_names = [*peers, *(name for name in earlier if name.startswith("RecBole SASRec"))]
    if peer_names:  # ratios against the strongest SASRec run (ties: the early-stopped run)
        strongest = max(peer_names, key=lambda name: (means[name][0], name.endswith("epochs)") and "early stopping:" in name))
        lines += ["", f"Ratios against the strongest SASRec row, {strongest}:"]
        lines += [f"- {name} / SASRec: HR@10 {hr / means[strongest][0]:.2f}×, NDCG@10 {ndcg / means[strongest][1]:.2f}× (goal ≥ 1.15×)"
                  for name, (hr, ndcg) in means.items() if name not in peer_names]
    return "\n".join(lines)
