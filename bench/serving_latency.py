"""Latency of ranking C candidates for a user with N events through the Python serving core, against
the naive baseline in the same run.

    .venv/bin/python bench/serving_latency.py [--candidates 1000 5000 10000] [--events 256 1024 4096] [--precision fp32 bf16]

Setup: a synthetic store whose users have exactly N click events (one stream, max_length 4096), the
default `SequenceModelConfig` (D=64, 4 heads, 2 layers, 4 pooling slots, match attention) with random
weights (latency does not depend on training), candidates with random hashed ad ids and categories.

Rows per (N, C) (`--scoring-device cuda`: the two "core, cached user" columns score on the GPU; the
user side, the model's pooling and the baselines stay on the CPU):
* core, cached user: `RankingService.rank` when the user state is in the cache (repeated requests whose
  recency buckets did not change) and the candidates' item embeddings are cached;
* core, cached user, model's pooling: the same cached user and candidate rows, scored by
  `SequenceRanker.score` without a plan (the keyed pooling's generic backend, training's path: the
  serving path before the op's `"one_user"` backend);
* core bf16, cached user (with `--precision ... bf16`): the same request through a second service with
  `precision="bf16"` (same model, its own caches), interleaved with the two above; beside it the largest
  |probability difference| to the fp32 core's scores of the same request and the overlap of their top
  100 candidates (by the first task). fp32 is always measured: it is the reference;
* core, user recomputed: the same with the user state dropped before every request (one encoder pass
  per request: a new user, new events, or changed recency buckets);
* naive: no cache, the user's history re-encoded for every batch of `--naive-batch` candidates;
* BST-style (`bench/bst_baseline.py`): a ranker of the same width with the candidate as one more token
  inside the self-attention, so the history is encoded once per candidate. Measured on a sample of
  `--bst-candidates` candidates per N (in encoder batches of at most `--bst-batch` sequences), and
  reported as seconds per candidate times C: an extrapolation, labelled as such.

Prints a Markdown table (p50/p99 in ms), the speed-ups over the naive baselines and the slopes (least
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

from bst_baseline import time_bst

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
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

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
    store = directory.with_name(f"{directory.name}_store")  # beside the logs: a build refuses --out inside --data
    build_store(load_schema(directory / "schema.yaml"), directory, store)
    return EventStore.open(store)


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def top_overlap(a: np.ndarray, b: np.ndarray, k: int = 100) -> int:
    """Candidates in both top-``k`` lists (by the first task) of two score arrays ``[C, T]``."""
    top = lambda scores: set(np.argsort(-scores[:, 0], kind="stable")[:k].tolist())
    return len(top(a) & top(b))


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def scores_with_model_pooling(service, user: int, pool: pl.DataFrame, context: dict) -> np.ndarray:
    """The request with the cached user and candidate rows, scored by the model's generic keyed pooling."""
    side, _ = service.user_side(user, service.request_seconds(REQUEST_TIME))
    rows, ids, _, _ = service.cached_items(service.candidate_frame(pool))
    with torch.no_grad():
        return torch.sigmoid(service.model.score(side, rows, service.context_tensor(context), candidate_ids=ids)).numpy()


def naive_scores(service, user: int, pool: pl.DataFrame, context: dict, batch: int) -> np.ndarray:
    """No cache: the user's history re-encoded (``SequenceRanker.encode_user``) for every batch of
    ``batch`` candidates, embedded afresh and scored by the model's generic keyed pooling."""
    from eventrec.serving.user_states import request_window, window_batch

    seconds = service.request_seconds(REQUEST_TIME)
    events = service.user_events(user)
    context_vector = service.context_tensor(context)
    out = []
    with torch.no_grad():
        for start in range(0, pool.height, batch):
            side = service.model.encode_user(window_batch(events, request_window(events, seconds), seconds, len(service.task_names), service.task_names))
            rows, ids = service.embed_items(pool[start : start + batch])
            out.append(torch.sigmoid(service.model.score(side, rows, context_vector, candidate_ids=ids)).numpy())
    return np.concatenate(out)


def measure_cell(service, bf16, user: int, pool: pl.DataFrame, context: dict, args) -> dict:
    """Latencies (seconds) of one (N, C) cell; the bf16 columns when ``bf16`` (a second service) is given."""
    rank = lambda svc: svc.rank(user, pool, context, REQUEST_TIME)
    for svc in (service, bf16) if bf16 is not None else (service,):
        rank(svc)  # warm: user state + candidate cache
    samples: dict[str, list[float]] = {"cached": [], "previous": [], "bf16": [], "recomputed": [], "naive": []}
    for _ in range(args.repeats):  # interleaved, so that all see the same machine load
        elapsed, result = timed(lambda: rank(service))
        samples["cached"].append(elapsed)
        assert result.user_state == "hit"
        elapsed, previous_scores = timed(lambda: scores_with_model_pooling(service, user, pool, context))
        samples["previous"].append(elapsed)
        if bf16 is not None:
            elapsed, low = timed(lambda: rank(bf16))
            samples["bf16"].append(elapsed)
            assert low.user_state == "hit"
    for _ in range(args.repeats):
        service.users.pop((str(user), service.version))
        elapsed, recomputed = timed(lambda: rank(service))
        samples["recomputed"].append(elapsed)
    for _ in range(args.naive_repeats):
        elapsed, naive = timed(lambda: naive_scores(service, user, pool, context, args.naive_batch))
        samples["naive"].append(elapsed)
    cell = {name: percentiles(values) for name, values in samples.items() if values}
    cell["gap"] = float(max(np.abs(naive - recomputed.scores).max(), np.abs(previous_scores - result.scores).max()))
    if bf16 is not None:
        cell["bf16_dp"] = float(np.abs(low.scores - result.scores).max())
        cell["bf16_top100"] = top_overlap(low.scores, result.scores)
    return cell


def print_table(results: list[dict], args, with_bf16: bool) -> None:
    bf16_head = "| core bf16, cached user p50 / p99 (ms) | bf16 vs fp32: max abs dp, top-100 overlap " if with_bf16 else ""
    bst_head = f"| BST-style, extrapolated from {args.bst_candidates} candidates (ms) | BST / cached (p50) " if args.bst_candidates else ""
    print(f"\n| N events | C candidates | core, cached user p50 / p99 (ms) {bf16_head}| cached, model's pooling p50 / p99 (ms) | core, user recomputed p50 / p99 (ms) "
          f"| naive p50 / p99 (ms) | naive / cached (p50) | naive / recomputed (p50) {bst_head}| max score diff |")
    print("|---:" * (9 + 2 * with_bf16 + 2 * bool(args.bst_candidates)) + "|")
    for r in results:
        (w50, w99), (p50, p99), (c50, c99), (n50, n99) = r["cached"], r["previous"], r["recomputed"], r["naive"]
        bf16 = f"| {r['bf16'][0]:.1f} / {r['bf16'][1]:.1f} | {r['bf16_dp']:.1e}, {r['bf16_top100']} " if with_bf16 else ""
        bst = f"| {r['bst']:.0f} | {r['bst'] / w50:.0f}x " if args.bst_candidates else ""
        print(f"| {r['n']} | {r['c']} | {w50:.1f} / {w99:.1f} {bf16}| {p50:.1f} / {p99:.1f} | {c50:.1f} / {c99:.1f} | {n50:.0f} / {n99:.0f} | {n50 / w50:.0f}x "
              f"| {n50 / c50:.1f}x {bst}| {r['gap']:.1e} |")
    if args.bst_candidates:
        batches = ", ".join(f"N={n}: {b}" for n, b in sorted({(r["n"], r["bst_batch"]) for r in results}))
        print(f"\nBST-style: seconds per candidate measured once per N over {args.bst_candidates} candidates (encoder batches of {batches} "
              "sequences), times C; not run over all C candidates.")


def print_slopes(results: list[dict], args, with_bf16: bool) -> None:
    mid_n, mid_c = args.events[len(args.events) // 2], args.candidates[len(args.candidates) // 2]
    for label in ("cached", "recomputed") + (("bf16",) if with_bf16 else ()):
        by_c = [(r["c"], r[label][0]) for r in results if r["n"] == mid_n]
        by_n = [(r["n"], r[label][0]) for r in results if r["c"] == mid_c]
        if len(by_c) > 1:
            slope_c = np.polyfit(*zip(*by_c), 1)[0] * 1000
            print(f"\nslope ({label}, p50): {slope_c:.2f} ms per 1000 candidates at N={mid_n}", end="")
        if len(by_n) > 1:
            slope_n = np.polyfit(*zip(*by_n), 1)[0] * 1000
            print(f"; {slope_n:.2f} ms per 1000 events at C={mid_c}", end="")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--events", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=15, help="requests per core cell")
    parser.add_argument("--naive-repeats", type=int, default=3)
    parser.add_argument("--naive-batch", type=int, default=256)
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="serving precisions of the core, cached-user column (fp32 is always measured: the reference)")
    parser.add_argument("--bst-candidates", type=int, default=32, help="candidates sampled per N for the BST-style baseline (0: skip it)")
    parser.add_argument("--bst-batch", type=int, default=64,
                        help="most sequences per encoder pass of the BST-style baseline (fewer for long histories: bench/bst_baseline.py)")
    parser.add_argument("--chunk", type=int, default=None, help="candidates per call of the model's scoring in the service (RankingService candidate_chunk; default: all at once)")
    parser.add_argument("--attention-chunk", type=int, default=None, help="candidates per attention block of the serving path (default: ~4 MiB of logits)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scoring-device", default="cpu",
                        help="RankingService(scoring_device=) of the core columns, e.g. cuda (the user side, the model's pooling and the baselines stay on the CPU)")
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
    options = dict(max_candidates=max(args.candidates), candidate_chunk=args.chunk, attention_chunk=args.attention_chunk, scoring_device=args.scoring_device)
    service = RankingService(model, store, "bench", **options)
    with_bf16 = "bf16" in args.precision
    bf16 = RankingService(model, store, "bench", precision="bf16", **options) if with_bf16 else None
    rng = np.random.default_rng(1)
    pools = {c: pl.DataFrame({"ad_id": rng.integers(0, 1_000_000, c), "category": [CATEGORIES[i] for i in rng.integers(0, 50, c)]}) for c in args.candidates}
    context = {"placement": "feed"}
    results = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; scoring on {service.scoring_device}; default SequenceModelConfig; chunk {args.chunk}; "
          f"precisions {', '.join(['fp32'] + (['bf16'] if with_bf16 else []))}", file=sys.stderr)
    for user, n in enumerate(args.events):
        bst_per_candidate, bst_batch = time_bst(service, user, pools[args.candidates[0]][: args.bst_candidates], context, REQUEST_TIME,
                                                args.bst_batch) if args.bst_candidates else (0.0, 0)
        for c in args.candidates:
            cell = measure_cell(service, bf16, user, pools[c], context, args)
            cell.update(n=n, c=c, bst=bst_per_candidate * c * 1000, bst_batch=bst_batch)
            results.append(cell)
            low = f", bf16 {cell['bf16'][0]:.1f}/{cell['bf16'][1]:.1f} ms (max |dp| {cell['bf16_dp']:.1e}, top-100 {cell['bf16_top100']})" if with_bf16 else ""
            print(f"N={n} C={c}: cached {cell['cached'][0]:.1f}/{cell['cached'][1]:.1f} ms{low} (model's pooling {cell['previous'][0]:.1f}/{cell['previous'][1]:.1f}), "
                  f"recomputed {cell['recomputed'][0]:.1f}/{cell['recomputed'][1]:.1f} ms, naive {cell['naive'][0]:.1f}/{cell['naive'][1]:.1f} ms, "
                  f"BST-style ~{cell['bst']:.0f} ms (extrapolated)", file=sys.stderr, flush=True)

    print_table(results, args, with_bf16)
    print_slopes(results, args, with_bf16)
    sizes = {}
    for user, n in enumerate(args.events):
        s = service.users.get((str(user), service.version))
        if s is not None:
            sizes[n] = s.nbytes
    print("\nuser state (cache entry) bytes: " + ", ".join(f"N={n}: {b / 1024:.0f} KiB ({b / (n + 1):.0f} B per position)" for n, b in sizes.items()))
    print(f"candidate cache: {len(service.candidates.keys)} entries, {service.candidates.nbytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
