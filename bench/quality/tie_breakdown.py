"""Where next-item quality is won or lost: test targets tied in time with the item before them vs not.

A tied target (Amazon: bought the same day as the previous item; MovieLens: rated in the same
second) has no true order within its tie, so its rank says how a model handles a basket, while the
other targets say how it handles "what comes next". For every run saved under
``bench/out/quality/<dataset>[-ties-shuffled]/`` (eventrec variants: ``test_ranks_<N>users.npy``;
RecBole SASRec: ``test_ranks.npy``) HR@10 and NDCG@10 are split by that, beside two rules computed
here from the training pairs: the most frequent successor of the user's last item (directed), and
the same with the pair's direction ignored; both fall back to training popularity for ties.

    .venv/bin/python bench/quality/tie_breakdown.py --dataset amazon_grocery --test-users 3000 [--ties shuffled]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from bench.quality.next_item import sasrec_ranks  # noqa: E402
from bench.quality.next_item_data import TEST_USERS_SEED, user_sample, work_dir  # noqa: E402
from bench.quality.ranking_metrics import hit_rate_and_ndcg, target_ranks  # noqa: E402
from bench.quality.report import KEPT_NOTE, markdown_table, with_kept_rows, write_section  # noqa: E402


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["ml100k", "amazon_grocery"], default="amazon_grocery")
    parser.add_argument("--ties", choices=["row", "shuffled"], default="row")
    parser.add_argument("--test-users", type=int, default=0, help="the sample of bench/quality/next_item.py --test-users (0 = all)")
    args = parser.parse_args()
    work = work_dir(ROOT / "bench" / "out" / "quality", args.dataset, args.ties)
    if not (work / "sequences.parquet").exists():
        parser.error(f"{work / 'sequences.parquet'} is missing: run bench/quality/next_item.py --dataset {args.dataset} --ties {args.ties} first")
    sequences = pl.read_parquet(work / "sequences.parquet")
    all_users = np.sort(sequences["user_id"].unique().to_numpy())
    users = user_sample(all_users, args.test_users, TEST_USERS_SEED)
    targets = test_targets(sequences, users)
    tied = targets["tied"].to_numpy()
    rows: dict[str, dict[str, list[float]]] = {}
    for run in sorted(work.glob("eventrec_*")):
        found = [np.load(p) for p in sorted(run.glob(f"seed*/test_ranks_{len(users)}users.npy"))]
        if found:
            rows[f"eventrec ({run.name.removeprefix('eventrec_')})"] = split_metrics(found, tied)
    wanted = targets["user_id"].to_numpy()
    for run in sorted(work.glob("sasrec*")):
        found = [sasrec_ranks(seed_dir, wanted) for seed_dir in sorted(run.glob("seed*")) if (seed_dir / "test_ranks.npy").exists()]
        if found:
            rows[f"RecBole SASRec ({run.name})"] = split_metrics(found, tied)
    rows["rule: most frequent successor of the last item"] = split_metrics([successor_ranks(sequences, targets, True)], tied)
    rows["rule: most frequent neighbour of the last item (either direction)"] = split_metrics([successor_ranks(sequences, targets, False)], tied)
    metrics = ["hr all", "hr tied", "hr other", "ndcg all", "ndcg tied", "ndcg other"]
    header = {"hr all": "HR@10", "hr tied": "HR@10 tied", "hr other": "HR@10 other", "ndcg all": "NDCG@10", "ndcg tied": "NDCG@10 tied",
              "ndcg other": "NDCG@10 other"}
    suffix = "" if args.ties == "row" else f", ties {args.ties}"
    lines = [f"## {args.dataset}: test targets tied with the item before them vs the others{suffix}", "",
             f"Command: `.venv/bin/python bench/quality/tie_breakdown.py --dataset {args.dataset}" + (f" --ties {args.ties}" if args.ties != "row" else "")
             + (f" --test-users {args.test_users}" if args.test_users else "") + f"`. Of the {len(users):,} test users' targets, "
             f"{int(tied.sum()):,} are tied in time with the item before them and {int((~tied).sum()):,} are not. "
             "Rows are read from the saved per-user ranks of every run in the folder (eventrec variants named as in the "
             "next-item table); the rules are computed here from the training pairs.", "",
             markdown_table(rows, metrics, header)]
    section = f"{args.dataset}-tie-breakdown" + ("" if args.ties == "row" else f"-ties-{args.ties}")
    lines[-1], earlier = with_kept_rows(section, lines[-1], set(rows))  # rows whose run folders are not here (a fresh checkout)
    if earlier:
        lines[2] += KEPT_NOTE
    write_section(section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
