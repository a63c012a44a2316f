"""The keyed pooling's two softmax paths, interleaved on the same requests: the softmax kernel against
the unshifted ``exp`` with denominators from the values product (the ``"one_user"`` backend,
``eventrec/ops/keyed_pooling_one_user.py``, chosen by ``OneUserPlan.max_unshifted_logit``), in fp32 and bf16.

    OMP_NUM_THREADS=2 .venv/bin/python bench/serving_softmax_paths.py --threads 2 [--events 1024] [--candidates 5000] [--repeats 40]

Same world and random default-size model as ``bench/serving_latency.py``; the user state and the
candidate rows are cached (the core's cached-user column). Prints p50 / p99 per path and precision,
the ratio, and the largest score difference between the two paths.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from serving_latency import CATEGORIES, REQUEST_TIME, build_world, percentiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1024)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.model.sequence_ranker import SequenceRanker
    from eventrec.serving import RankingService
    from eventrec.ops.keyed_pooling_one_user import EXP_SAFE_LOGIT

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_world(Path(tmp), [args.events])
    model = SequenceRanker(FeatureSpec.from_store(store), SequenceModelConfig()).eval()
    rng = np.random.default_rng(1)
    pool = pl.DataFrame({"ad_id": rng.integers(0, 1_000_000, args.candidates), "category": [CATEGORIES[i] for i in rng.integers(0, 50, args.candidates)]})
    context = {"placement": "feed"}
    paths = {"softmax": 0.0, "unshifted exp": EXP_SAFE_LOGIT}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={args.events}, C={args.candidates}, {args.repeats} requests per path, interleaved\n")
    print("| precision | softmax p50 / p99 (ms) | unshifted exp p50 / p99 (ms) | unshifted / softmax (p50) | max abs score diff |")
    print("|---|---:|---:|---:|---:|")
    for precision in ("fp32", "bf16"):
        service = RankingService(model, store, "bench", precision=precision, max_candidates=args.candidates)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        seconds = service.request_seconds(REQUEST_TIME)
        side, _ = service.user_side(0, seconds)
        rows, ids, _, _ = service.cached_items(service.candidate_frame(pool))
        context_vector = service.context_tensor(context)
        plans = {name: dataclasses.replace(service.scorer.plan(), max_unshifted_logit=bound) for name, bound in paths.items()}
        score = lambda name: torch.sigmoid(service.scorer.score(side, rows, context_vector, plan=plans[name], candidate_ids=ids)).numpy()  # noqa: E731
        scores = {name: score(name) for name in paths}  # warm: buffers
        for _ in range(args.repeats):
            for name in paths:
                started = time.perf_counter()
                score(name)
                samples[name].append(time.perf_counter() - started)
        (s50, s99), (u50, u99) = (percentiles(samples[name]) for name in paths)
        gap = float(np.abs(scores["softmax"] - scores["unshifted exp"]).max())
        print(f"| {precision} | {s50:.1f} / {s99:.1f} | {u50:.1f} / {u99:.1f} | {u50 / s50:.2f} | {gap:.1e} |")


if __name__ == "__main__":
    main()
