"""Where next-item quality is won or lost: test targets tied in time with the item before them vs not.

A tied target (Amazon: bought the same day as the previous item; MovieLens: rated in the same
second) has no true order within its tie, so its rank says how a model handles a basket, while the
other targets say how it handles "what comes next". For every variant of a next-item table with
saved per-user ranks (``runs/<run id>/seed*/test_ranks_<N>users.npy``) and every RecBole SASRec run
(``sasrec*/seed*/test_ranks.npy``), HR@10 and NDCG@10 are split by that, beside two rules computed
here from the training pairs: the most frequent successor of the user's last item (directed), and
the same with the pair's direction ignored; both fall back to training popularity for ties. Prints
a markdown table (earlier tables: ``docs/history/``).

    .venv/bin/python -m bench.quality.tie_breakdown bench/quality/variants/amazon_grocery
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from bench.quality.next_item import benchmark
from bench.quality.next_item_report import sasrec_ranks
from bench.quality.ranking_metrics import hit_rate_and_ndcg, target_ranks
from bench.quality.report import markdown_table
from bench.quality.variant import load_variant, variant_files


def test_targets(sequences: pl.DataFrame, users: np.ndarray) -> pl.DataFrame:
    """Per test user (sorted): ``user_id, item_id, last_item`` (the item before the target) and ``tied``."""
    ordered = sequences.sort("user_id", "order").with_columns(
        pl.col("item_id").shift(1).over("user_id").alias("last_item"),
        pl.col("timestamp").shift(1).over("user_id").alias("last_timestamp"),
    )
    test = ordered.filter((pl.col("split") == "test") & pl.col("user_id").is_in(users.tolist())).sort("user_id")
    return test.select("user_id", "item_id", "last_item", (pl.col("timestamp") == pl.col("last_timestamp")).alias("tied"))


def successor_ranks(sequences: pl.DataFrame, targets: pl.DataFrame, directed: bool) -> np.ndarray:
    """Pessimistic full-catalogue rank of each target under "the most frequent successor of the last
    item in training" (``directed``; else "most frequent neighbour", either direction); ties of the pair
    count broken by training popularity, remaining ties pessimistic."""
    train = sequences.filter(pl.col("split") == "train").sort("user_id", "order")
    pairs = train.select(pl.col("item_id").alias("source"), pl.col("item_id").shift(-1).over("user_id").alias("target")).drop_nulls()
    if not directed:
        pairs = pl.concat([pairs, pairs.select(pl.col("target").alias("source"), pl.col("source").alias("target"))])
    catalogue = np.sort(sequences["item_id"].unique().to_numpy())
    column = {item: i for i, item in enumerate(catalogue.tolist())}
    popularity = np.zeros(len(catalogue))
    counts = train.group_by("item_id").len()
    popularity[[column[i] for i in counts["item_id"].to_list()]] = counts["len"].to_numpy()
    base = popularity / (popularity.max() + 1.0)  # < 1: breaks ties of the pair count only
    counted = pairs.group_by("source", "target").len()
    by_source: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for (source,), group in counted.group_by("source"):
        by_source[source] = (np.array([column[t] for t in group["target"].to_list()]), group["len"].to_numpy().astype(np.float64))
    ranks = np.empty(targets.height, dtype=np.int64)
    for row, (item, last) in enumerate(targets.select("item_id", "last_item").iter_rows()):
        scores = base.copy()
        if last in by_source:
            where, how_many = by_source[last]
            scores[where] += how_many
        ranks[row] = target_ranks(scores[None, :], np.array([column[item]]))[0]
    return ranks


def split_metrics(ranks_per_seed: list[np.ndarray], tied: np.ndarray) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for ranks in ranks_per_seed:
        for name, mask in (("all", np.ones_like(tied)), ("tied", tied), ("other", ~tied)):
            hr, ndcg = hit_rate_and_ndcg(ranks[mask], 10)
            out.setdefault(f"hr {name}", []).append(hr)
            out.setdefault(f"ndcg {name}", []).append(ndcg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="a next-item table: its folder of variant files")
    args = parser.parse_args()
    variants = [load_variant(path) for path in variant_files([args.table])]
    first = variants[0]
    bench = benchmark(first.dataset, first.protocol.ties)
    users = bench.users(first.protocol.test_users)
    targets = test_targets(bench.sequences, users)
    tied = targets["tied"].to_numpy()
    rows: dict[str, dict[str, list[float]]] = {}
    for variant in variants:
        found = [np.load(p) for p in sorted((bench.work / "runs" / variant.run_id).glob(f"seed*/test_ranks_{len(users)}users.npy"))]
        if found:
            rows[variant.label] = split_metrics(found, tied)
    wanted = targets["user_id"].to_numpy()
    for run in sorted(bench.work.glob("sasrec*")):
        found = [sasrec_ranks(seed_dir, wanted) for seed_dir in sorted(run.glob("seed*")) if (seed_dir / "test_ranks.npy").exists()]
        if found:
            rows[f"RecBole SASRec ({run.name})"] = split_metrics(found, tied)
    rows["rule: most frequent successor of the last item"] = split_metrics([successor_ranks(bench.sequences, targets, True)], tied)
    rows["rule: most frequent neighbour of the last item (either direction)"] = split_metrics([successor_ranks(bench.sequences, targets, False)], tied)
    metrics = ["hr all", "hr tied", "hr other", "ndcg all", "ndcg tied", "ndcg other"]
    header = {"hr all": "HR@10", "hr tied": "HR@10 tied", "hr other": "HR@10 other", "ndcg all": "NDCG@10", "ndcg tied": "NDCG@10 tied",
              "ndcg other": "NDCG@10 other"}
    print(f"Of the {len(users):,} test users' targets, {int(tied.sum()):,} are tied in time with the item before them and "
          f"{int((~tied).sum()):,} are not.\n")
    print(markdown_table(rows, metrics, header))


if __name__ == "__main__":
    main()
