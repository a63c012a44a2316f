"""What the item counters (``item_counters``, on by default) cost a ranking request, against the same model
without them in the same run.

    .venv/bin/python bench/item_counters_cost.py [--events 1024] [--candidates 1000 5000] [--repeats 30] [--threads 2]

Setup: ``bench/serving_latency.py``'s world (users with exactly N click events; hashed ad ids and 50
categories: two match pairs), the default model with random weights, and the same weights plus the
counters' head inputs (whole history, 1 d, 7 d, 30 d). Per (N, C): ``RankingService.rank`` with a cached
user and cached candidate rows, the two services interleaved; the counters' own step
(``RankingService.item_counts``: encoding the candidates' ids and the binary searches) timed alone;
the counters' index build time and size for the whole store.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_latency import CATEGORIES, REQUEST_TIME, build_world, percentiles  # noqa: E402

WINDOWS = [86_400, 604_800, 2_592_000]


def services(store):
    from eventrec.data.item_counters import ItemCounters
    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.model.sequence_ranker import SequenceRanker
    from eventrec.serving import RankingService

    spec = FeatureSpec.from_store(store)
    torch.manual_seed(0)
    plain = SequenceRanker(spec, SequenceModelConfig()).eval()
    counted = SequenceRanker(spec, SequenceModelConfig(experimental={"item_counters": WINDOWS})).eval()
    state = counted.state_dict()
    state.update({k: v for k, v in plain.state_dict().items() if state[k].shape == v.shape})  # the same weights where shapes agree
    counted.load_state_dict(state)
    started = time.perf_counter()
    index = ItemCounters.from_store(store)
    build = time.perf_counter() - started
    size = sum(p.index.keys.nbytes + p.index.timestamps.nbytes + p.index.user_offsets.nbytes for p in index.indexes)
    return RankingService(plain, store, "plain"), RankingService(counted, store, "counters"), build, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1024, help="events per user")
    parser.add_argument("--users", type=int, default=200, help="users in the store (the counters index all of their events)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_world(Path(tmp) / "world", [args.events] * args.users)
        plain, counted, build, size = services(store)
        print(f"store: {args.users} users x {args.events} events; counters index: built in {build * 1000:.0f} ms, {size / 2**20:.1f} MiB "
              f"({len(counted.model.config.item_counter_windows) + 1} columns per pair, {counted.model.item_counter_features} inputs)")
        print("\n| N events | C candidates | without counters p50 / p99 (ms) | with counters p50 / p99 (ms) | with / without (p50) | counters' step alone p50 (ms) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in args.candidates:
            pool = pl.DataFrame({"ad_id": rng.integers(0, 1_000_000, c), "category": [CATEGORIES[i] for i in rng.integers(0, 50, c)]})
            context = {"placement": "feed"}
            samples: dict[str, list[float]] = {"plain": [], "counted": [], "step": []}
            for svc in (plain, counted):
                svc.rank(0, pool, context, REQUEST_TIME)  # warm: user state, candidate cache
            frame = counted.candidate_frame(pool)
            seconds = counted.request_seconds(REQUEST_TIME)
            for _ in range(args.repeats):  # interleaved: both see the same machine load
                for name, svc in (("plain", plain), ("counted", counted)):
                    started = time.perf_counter()
                    result = svc.rank(0, pool, context, REQUEST_TIME)
                    samples[name].append(time.perf_counter() - started)
                    assert result.user_state == "hit"
                started = time.perf_counter()
                counted.item_counts(frame, seconds)
                samples["step"].append(time.perf_counter() - started)
            (a50, a99), (b50, b99), (s50, _) = (percentiles(samples[k]) for k in ("plain", "counted", "step"))
            print(f"| {args.events} | {c} | {a50:.1f} / {a99:.1f} | {b50:.1f} / {b99:.1f} | {b50 / a50:.2f}x | {s50:.2f} |")


if __name__ == "__main__":
    main()
