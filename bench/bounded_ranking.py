"""Ranking cost with a cached user: full keyed pooling against the candidate search (``candidate_search``), in one run.

    .venv/bin/python bench/bounded_ranking.py [--events 1024 16384 100000] [--candidates 1000 5000] [--recent 64] [--per-match 64]
                                              [--threads 1] [--full-up-to 20000]

Setup: the world of ``bench/serving_latency.py`` (one click stream of N events per user with hashed ad
ids out of 1M and 50 categories; candidates with random ad ids and categories) with ``max_length``
100,000; the default model dimensions (D=64, 4 heads, 4 pooling slots, match attention on ad id and
category, ``recency: pooling``), random weights (latency does not depend on training). The user side
is encoded once, with ``num_layers=0`` so that a 100k-event history can be encoded here at all: the
cost of ranking against a *cached* user side does not depend on how it was encoded.

Per (N, C), interleaved so that both see the same machine load, ``--threads`` torch threads (default one):
* full: :meth:`SequenceRanker.score` with a one-user plan (the serving path: the keyed pooling op's
  ``"one_user"`` backend over all N positions);
* search: the same weights with ``candidate_search: {recent, per_match}``: each candidate reads the
  summary token, the ``recent`` most recent events and, per match vocabulary, its ``per_match`` most
  recent matches (``ops.selected_pooling``), with the user's search index built beforehand (once per
  user state); the index build is timed on its own.

Full pooling is skipped (and said so) where ``N · C`` exceeds ``--full-up-to`` × 1,000 (its seconds
per request at N=100k would take most of a run). Per C, the cross network and heads alone
(:meth:`SequenceRanker.output_logits` on ``[C, F]`` interaction inputs) are timed too: the part of a
ranking's cost that no search removes, whatever N.

Prints p50 / p99 (ms) per cell, the ratio full / search, and the growth of each from the smallest to the
largest N (a bounded cost stays flat).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serving_latency  # noqa: E402  (the world, the percentiles)


def build_models(store, recent: int, per_match: int):
    from eventrec.model.config import CandidateSearchConfig, SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.training.factory import build_model

    torch.manual_seed(0)
    base = SequenceModelConfig(num_layers=0, recency="pooling", item_counters=None)  # the counters: bench/item_counters_cost.py
    full = build_model(FeatureSpec.from_store(store), base).eval()
    searched = build_model(FeatureSpec.from_store(store), base.model_copy(update={"candidate_search": CandidateSearchConfig(recent=recent, per_match=per_match)})).eval()
    searched.load_state_dict(full.state_dict())
    return full, searched


def user_side(model, store, row: int, request_time: int):
    from eventrec.serving.state import UserEvents
    from eventrec.serving.user_states import request_window, window_batch

    events = UserEvents.from_store(store, row)
    batch = window_batch(events, request_window(events, request_time), request_time, 2, ["click", "conversion"])
    with torch.no_grad():
        return model.encode_user(batch)


def candidates(model, store, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embedded rows ``[C, Q + V·E]``, their ids ``[C, V]`` and the context ``[1, Q_ctx]``."""
    rng = np.random.default_rng(seed)
    vocab = {a.name: a for a in store.schema.impressions.item_attributes}
    size = lambda name: store.num_embeddings(vocab[name].vocabulary_name)  # noqa: E731  (ids 0, 1: missing, out of vocabulary)
    item = {"ad_id": torch.from_numpy(rng.integers(2, size("ad_id"), count)), "category": torch.from_numpy(rng.integers(2, size("category"), count))}
    context = {"placement": torch.tensor([2])}
    with torch.no_grad():
        return model.embed_candidates(item), model.candidate_ids(item), model.embed_context(context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1024, 16384, 100_000])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--recent", type=int, default=64)
    parser.add_argument("--per-match", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--full-up-to", type=int, default=20_000, help="time full pooling only where N·C <= this × 1,000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eventrec.model.candidate_search import UserSearchIndex
    from eventrec.ops.keyed_pooling_one_user import EXP_SAFE_LOGIT, OneUserPlan, Workspace

    schema = copy.deepcopy(serving_latency.SCHEMA)
    schema["streams"][0]["max_length"] = max(args.events)
    serving_latency.SCHEMA.clear()
    serving_latency.SCHEMA.update(schema)
    with tempfile.TemporaryDirectory() as tmp:
        store = serving_latency.build_world(Path(tmp) / "world", args.events)
        full, searched = build_models(store, args.recent, args.per_match)
        plan = OneUserPlan(None, Workspace(), EXP_SAFE_LOGIT, fold_match=False, base2=True)
        rows_out = []
        heads_ms: dict[int, tuple] = {}
        for row, n in enumerate(args.events):
            side = user_side(full, store, row, serving_latency.REQUEST_TIME)
            searched_side = user_side(searched, store, row, serving_latency.REQUEST_TIME)
            started = time.perf_counter()
            index = UserSearchIndex.build(searched_side.match_ids)
            index_ms = (time.perf_counter() - started) * 1000
            for c in args.candidates:
                rows, ids, context = candidates(full, store, c, seed=c)
                with torch.no_grad():
                    calls = {"full": lambda: full.score(side, rows, context, plan=plan, candidate_ids=ids, search_index=index),
                             "search": lambda: searched.score(searched_side, rows, context, plan=plan, candidate_ids=ids, search_index=index)}
                    if n * c > args.full_up_to * 1000:
                        del calls["full"]
                    samples: dict[str, list[float]] = {name: [] for name in calls}
                    for call in calls.values():
                        call()  # warm
                    for _ in range(args.repeats):
                        for name, call in calls.items():
                            started = time.perf_counter()
                            call()
                            samples[name].append(time.perf_counter() - started)
                    if c not in heads_ms:
                        x = torch.randn(c, _interaction_width(full))
                        full.output_logits(x, None)  # warm
                        heads_ms[c] = serving_latency.percentiles([_timed(lambda: full.output_logits(x, None)) for _ in range(args.repeats)])
                cell = {name: serving_latency.percentiles(values) for name, values in samples.items()}
                rows_out.append({"n": n, "c": c, "index_ms": index_ms, **cell})
                print(f"N={n} C={c}: full {_cell(cell, 'full')} ms, search {_cell(cell, 'search')} ms", flush=True)
    print(f"\nrecent={args.recent}, per_match={args.per_match}; {args.threads} thread(s); p50 / p99 over {args.repeats} interleaved repeats; "
          f"full pooling skipped where N·C > {args.full_up_to * 1000:,}\n")
    print("| N events | C candidates | full pooling p50 / p99 (ms) | candidate search p50 / p99 (ms) | full / search (p50) | search index build (ms, once per user state) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        ratio = f"{r['full'][0] / r['search'][0]:.1f}x" if "full" in r else "-"
        print(f"| {r['n']} | {r['c']} | {_cell(r, 'full')} | {_cell(r, 'search')} | {ratio} | {r['index_ms']:.1f} |")
    for c, (p50, p99) in sorted(heads_ms.items()):
        print(f"C={c}: cross network and heads alone (any N) {p50:.1f} / {p99:.1f} ms p50 / p99")
    for c in args.candidates:
        cells = [r for r in rows_out if r["c"] == c]
        if len(cells) > 1:
            lo, hi = cells[0], cells[-1]
            growth = {name: f"x{hi[name][0] / lo[name][0]:.1f}" if name in hi and name in lo else "not timed at both" for name in ("full", "search")}
            print(f"\nC={c}: N {lo['n']} → {hi['n']} ({hi['n'] / lo['n']:.0f}x events): full p50 {growth['full']}, search p50 {growth['search']}", end="")
    print()


def _interaction_width(model) -> int:
    """F of the interaction input ``[C, F]`` that :meth:`SequenceRanker.output_logits` reads."""
    first = next(m for m in [*model.cross.modules(), *model.heads.modules()] if isinstance(m, torch.nn.Linear))
    return first.in_features


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _cell(cell: dict, name: str) -> str:
    """``p50 / p99`` of one variant of a cell, or "skipped"."""
    return f"{cell[name][0]:.1f} / {cell[name][1]:.1f}" if name in cell else "skipped"


if __name__ == "__main__":
    main()
