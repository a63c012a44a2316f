"""Where a trained next-item model's full-catalogue ranking comes from: its dot term or the rest.

    .venv/bin/python -m bench.quality.logit_parts bench/quality/variants/amazon_grocery/main.yaml --seed 0 --users 1000

A model built with ``dot_term`` scores ``z = r + d``: ``d = <user, item>`` (factorised), ``r`` the
keyed pooling, cross layers and heads. Given a finished variant (its run folder and store), for the
first ``--users`` of its test users, this ranks the whole catalogue through the serving core as the
runner does, records ``d`` apart from ``z`` for every item, and prints HR@10 and NDCG@10 when
ranking by ``z`` (the benchmark's figure on these users), by ``d`` alone, by ``r = z − d`` alone,
and by ``r + a·d`` for a few ``a``. Reads the run's ``best/`` weights and its store; writes nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.quality.next_item import benchmark, data_dirs, leave_one_out_store
from bench.quality.ranking_metrics import hit_rate_and_ndcg, target_ranks
from bench.quality.variant import NextItemVariant, load_variant


def logit_and_dot(service, user, items, context, seconds: int) -> tuple:
    """The whole logits ``z`` and dot terms ``d`` (``[C]`` each, first task) of embedded candidates
    ``items`` (rows and match ids, :meth:`RankingService.embed_items`) for ``user``: the model's own
    :meth:`SequenceRanker.score`, with its ``dot_parts``."""
    import torch

    side, _ = service.user_side(user, seconds)
    dot_parts: list = []
    with torch.no_grad():
        rows, ids = items
        whole = service.model.score(side, rows, context, plan=service.scorer.plan(), dot_parts=dot_parts, candidate_ids=ids)
    users, vectors = dot_parts  # [1, T, D], [C, D]
    return whole[:, 0].float(), (vectors.float() @ users[0].float().T)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", type=Path, help="a next-item variant file whose model has a dot term")
    parser.add_argument("--seed", type=int, default=0, help="which seed of the run")
    parser.add_argument("--users", type=int, default=1000, help="rank the first this many of the run's test users")
    args = parser.parse_args()
    variant = load_variant(args.variant)
    if not isinstance(variant, NextItemVariant):
        parser.error(f"{args.variant}: a next-item variant (ml100k, amazon_grocery) expected")

    import torch

    torch.set_num_threads(1)
    from eventrec.serving import RankingService
    from eventrec.store.reader import EventStore

    bench = benchmark(variant.dataset, variant.protocol.ties)
    sequences, items = bench.sequences, bench.items.sort("item_id")
    users = bench.users(variant.protocol.test_users)[: args.users]
    tag = variant.label
    run_dir = bench.run_dir(variant, args.seed)
    store_dir = data_dirs(bench.work, variant.protocol, args.seed)[1]
    if not (run_dir / "best").exists() or not store_dir.exists():
        raise SystemExit(f"no finished run {run_dir} or no store {store_dir} (run python -m bench.quality.run {args.variant} first)")
    store = EventStore.open(store_dir)
    leave_one_out_store(store)
    service = RankingService.load(run_dir / "best", store, max_candidates=max(10_000, items.height))
    if not service.model.config.dot_term:
        raise SystemExit(f"{tag}: the model has no dot term")
    embedded = service.embed_items(service.candidate_frame(items))
    context = service.context_tensor(None)
    targets = sequences.filter((pl.col("split") == "test") & pl.col("user_id").is_in(users.tolist())).sort("user_id")
    index = {item: i for i, item in enumerate(items["item_id"].to_list())}
    whole, dot, target = [], [], []
    started = time.perf_counter()
    for user, item, when in targets.select("user_id", "item_id", "event_time").iter_rows():
        z_user, d_user = logit_and_dot(service, user, embedded, context, service.request_seconds(int(when)))
        whole.append(z_user.numpy())
        dot.append(d_user.numpy())
        target.append(index[item])
    z, d, t = np.array(whole, dtype=np.float64), np.array(dot, dtype=np.float64), np.array(target)
    print(f"{len(t)} test users of {tag} seed {args.seed}, {z.shape[1]:,} items each, {time.perf_counter() - started:.0f} s")
    print("| ranked by | HR@10 | NDCG@10 |\n|---|---:|---:|")
    for name, scores in [("whole logit z", z), ("dot term d", d), ("rest r = z − d", z - d)] + [(f"r + {a:g}·d", z + (a - 1) * d) for a in (0.5, 2, 4)]:
        hr, ndcg = hit_rate_and_ndcg(target_ranks(scores, t), 10)
        print(f"| {name} | {hr:.4f} | {ndcg:.4f} |")


if __name__ == "__main__":
    main()
