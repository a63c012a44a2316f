"""Latency of ranking C candidates for a user with N events through the Python serving core, against
the naive baseline in the same run.

    .venv/bin/python bench/serving_latency.py [--candidates 1000 5000 10000] [--events 256 1024 4096]

Setup: a synthetic store whose users have exactly N click events (one stream, max_length 4096), the
default `SequenceModelConfig` (D=64, 4 heads, 2 layers, 4 pooling slots, match attention) with random
weights (latency does not depend on training), candidates with random hashed ad ids and categories.

Rows per (N, C):
* core, cached user: `RankingService.rank` when the user state is in the cache (repeated requests whose
  recency buckets did not change) and the candidates' item embeddings are cached;
* core, cached user, model's pooling: the same, scored with the model's own `KeyedAttentionPooling.pool`
  (`service.restructured_pooling = False`: the serving path before `eventrec/serving/scoring.py`);
* core, user recomputed: the same with the user state dropped before every request (one encoder pass
  per request: a new user, new events, or changed recency buckets);
* naive: no cache, the user's history re-encoded for every batch of `--naive-batch` candidates.

Prints a Markdown table (p50/p99 in ms), the speed-up over the naive baseline and the slopes (least
squares: ms per 1000 candidates at the middle N, ms per 1000 events at the middle C).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

SCHEMA = {
    "name": "bench_serving",
    "events": {"path": "events.parquet", "user_column": "user_id", "timestamp_column": "timestamp", "type_column": "event_type"},
    "streams": [{
        "name": "click", "event_types": ["click"], "max_length": 4096,
        "attributes": [
            {"name": "ad_id", "kind": "hashed", "buckets": 100_000, "vocabulary": "ad_id"},
            {"name": "category", "kind": "categorical", "vocabulary": "category"},
            {"name": "price", "kind": "numeric", "transform": "log1p"},
        ],
    }],
    "impressions": {
        "path": "impressions.parquet", "user_column": "user_id", "item_column": "ad_id", "timestamp_column": "timestamp",
        "labels": ["click", "conversion"],
        "item_attributes": [
            {"name": "ad_id", "kind": "hashed", "buckets": 100_000, "vocabulary": "ad_id"},
            {"name": "category", "kind": "categorical", "vocabulary": "category"},
        ],
        "context_attributes": [{"name": "placement", "kind": "categorical"}],
    },
    "splits": {"train_end": 5_000_000, "validation_end": 6_000_000},
}
CATEGORIES = [f"c{i}" for i in range(50)]
REQUEST_TIME = 9_000_000


def build_world(directory: Path, sizes: list[int], seed: int = 0):
    from eventrec.schema import load_schema
    from eventrec.store import EventStore
    from eventrec.store_builder import build_store

    rng = np.random.default_rng(seed)
    rows = []
    for user, n in enumerate(sizes):
        times = np.sort(rng.integers(0, 8_000_000, n))
        for t in times:
            rows.append((user, "click", int(t), int(rng.integers(0, 1_000_000)), CATEGORIES[rng.integers(0, 50)], float(rng.uniform(1, 100))))
    directory.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema={"user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "ad_id": pl.Int64, "category": pl.String, "price": pl.Float64},
                 orient="row").write_parquet(directory / "events.parquet")
    imps = [(u, int(rng.integers(0, 1_000_000)), int(t), CATEGORIES[i % 50], ["feed", "story"][i % 2], i % 2, 0)
            for i, (u, t) in enumerate([(u, t) for u in range(len(sizes)) for t in (1_000_000, 5_500_000, 7_000_000)])]
    pl.DataFrame(imps, schema={"user_id": pl.Int64, "ad_id": pl.Int64, "timestamp": pl.Int64, "category": pl.String, "placement": pl.String,
                               "click": pl.Int8, "conversion": pl.Int8}, orient="row").write_parquet(directory / "impressions.parquet")
    (directory / "schema.yaml").write_text(yaml.safe_dump(SCHEMA, sort_keys=False))
    build_store(load_schema(directory / "schema.yaml"), directory, directory / "store")
    return EventStore.open(directory / "store")


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--events", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=15, help="requests per core cell")
    parser.add_argument("--naive-repeats", type=int, default=3)
    parser.add_argument("--naive-batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=2048, help="candidates per pass of the model's pooling (naive, previous path)")
    parser.add_argument("--attention-chunk", type=int, default=None, help="candidates per attention block of the serving path (default: ~4 MiB of logits)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.model.sequence_ranker import SequenceRanker
    from eventrec.serving import RankingService

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_world(Path(tmp), args.events)
    model = SequenceRanker(FeatureSpec.from_store(store), SequenceModelConfig()).eval()
    service = RankingService(model, store, "bench", max_candidates=max(args.candidates), candidate_chunk=args.chunk, attention_chunk=args.attention_chunk)
    rng = np.random.default_rng(1)
    pools = {c: pl.DataFrame({"ad_id": rng.integers(0, 1_000_000, c), "category": [CATEGORIES[i] for i in rng.integers(0, 50, c)]}) for c in args.candidates}
    context = {"placement": "feed"}
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default SequenceModelConfig; chunk {args.chunk}", file=sys.stderr)
    for user, n in enumerate(args.events):
        for c in args.candidates:
            pool = pools[c]
            service.rank(user, pool, context, REQUEST_TIME)  # warm: user state + candidate cache
            warm, previous, cold, naive = [], [], [], []
            for _ in range(args.repeats):  # interleaved, so that both see the same machine load
                started = time.perf_counter()
                result = service.rank(user, pool, context, REQUEST_TIME)
                warm.append(time.perf_counter() - started)
                assert result.user_state == "hit"
                service.restructured_pooling = False
                started = time.perf_counter()
                previous_result = service.rank(user, pool, context, REQUEST_TIME)
                previous.append(time.perf_counter() - started)
                service.restructured_pooling = True
            for _ in range(args.repeats):
                service.users.pop((str(user), service.version))
                started = time.perf_counter()
                cold_result = service.rank(user, pool, context, REQUEST_TIME)
                cold.append(time.perf_counter() - started)
            for _ in range(args.naive_repeats):
                started = time.perf_counter()
                naive_scores = service.naive_scores(user, pool, context, REQUEST_TIME, batch=args.naive_batch)
                naive.append(time.perf_counter() - started)
            gap = float(max(np.abs(naive_scores - cold_result.scores).max(), np.abs(previous_result.scores - result.scores).max()))
            row = (n, c, *percentiles(warm), *percentiles(cold), *percentiles(naive), gap, *percentiles(previous))
            results.append(row)
            print(f"N={n} C={c}: cached {row[2]:.1f}/{row[3]:.1f} ms (model's pooling {row[9]:.1f}/{row[10]:.1f}), recomputed {row[4]:.1f}/{row[5]:.1f} ms, "
                  f"naive {row[6]:.1f}/{row[7]:.1f} ms", file=sys.stderr, flush=True)

    state = service.users.get(("0", service.version))
    print(f"\n| N events | C candidates | core, cached user p50 / p99 (ms) | cached, model's pooling p50 / p99 (ms) | core, user recomputed p50 / p99 (ms) | naive p50 / p99 (ms) | naive / cached (p50) | naive / recomputed (p50) | max score diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, c, w50, w99, c50, c99, n50, n99, gap, p50, p99 in results:
        print(f"| {n} | {c} | {w50:.1f} / {w99:.1f} | {p50:.1f} / {p99:.1f} | {c50:.1f} / {c99:.1f} | {n50:.0f} / {n99:.0f} | {n50 / w50:.0f}x | {n50 / c50:.1f}x | {gap:.1e} |")
    mid_n, mid_c = args.events[len(args.events) // 2], args.candidates[len(args.candidates) // 2]
    for label, index in (("cached", 2), ("recomputed", 4)):
        by_c = [(r[1], r[index]) for r in results if r[0] == mid_n]
        by_n = [(r[0], r[index]) for r in results if r[1] == mid_c]
        if len(by_c) > 1:
            slope_c = np.polyfit(*zip(*by_c), 1)[0] * 1000
            print(f"\nslope ({label}, p50): {slope_c:.2f} ms per 1000 candidates at N={mid_n}", end="")
        if len(by_n) > 1:
            slope_n = np.polyfit(*zip(*by_n), 1)[0] * 1000
            print(f"; {slope_n:.2f} ms per 1000 events at C={mid_c}", end="")
    print()
    sizes = {}
    for user, n in enumerate(args.events):
        s = service.users.get((str(user), service.version))
        if s is not None:
            sizes[n] = s.nbytes
    print("\nuser state (cache entry) bytes: " + ", ".join(f"N={n}: {b / 1024:.0f} KiB ({b / (n + 1):.0f} B per position)" for n, b in sizes.items()))
    print(f"candidate cache: {len(service.candidates.keys)} entries, {service.candidates.nbytes / 2**20:.1f} MiB")
    del state


if __name__ == "__main__":
    main()
