"""Training throughput on full long histories: per-impression batches against user batches, in one run.

    .venv/bin/python bench/user_batches.py [--logs DIR] [--workdir bench/out/user_batches] [--seconds 120] [--threads 2]
                                           [--batch-size 512] [--impression-batch-size 32]

The long-history world (``eventrec generate --preset long``: 1,000 users, histories of up to 100,514
events; generated into ``WORKDIR/logs`` unless ``--logs``), its store built with the preset's schema
(every stream up to 100,000 events: each history is whole), and the long-history model (``encoder:
linear``, ``candidate_search`` 16/16, the default's match features; random weights, seed 0). For each
way of batching, training steps (forward, backward, optimizer) on the shuffled training split for
``--seconds`` or one epoch, whichever comes first (at least one step):

* **per impression** (:func:`eventrec.data.gather.make_batch`), batches of ``--impression-batch-size``:
  one history per (user, request time), each encoded whole (a batch of 512 such impressions, about 4
  million events, did not fit the 24 GB machine);
* **user batches** (:func:`eventrec.data.user_batches.make_user_batch`), batches of whole users of
  about ``--batch-size`` impressions: each user's history encoded once, each impression reading its
  prefix (the same logits).

Prints impressions/s, events encoded per step and per second, the time an epoch would take, and the
ratio of the two throughputs. Both run the same model on the same machine one after the other; the
per-impression side is the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"encoder": "linear", "candidate_search": {"recent": 16, "per_match": 16}}


def throughput(store, model, batch_fn, groups, batch_size: int, args) -> dict:
    """Train for ``args.seconds`` (or one epoch) with ``batch_fn`` batches of ``batch_size``; the measured rates."""
    from eventrec.data.loader import BatchDataset
    from eventrec.training.optim import build_optimizers, optimizer_step
    from eventrec.training.trainer import TrainConfig

    dataset = BatchDataset(store, "train", batch_size, shuffle=True, seed=0, batch_fn=batch_fn, groups=groups)
    optimizers = build_optimizers(model, TrainConfig())
    impressions = events = steps = 0
    started = time.perf_counter()
    for i in range(len(dataset)):
        batch = dataset[i]
        logits = model(batch)
        labels = batch.labels
        known = ~torch.isnan(labels)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])
        optimizer_step(optimizers, loss, 1e-3, 1.0)
        steps, impressions = steps + 1, impressions + batch.batch_size
        events += sum(int(stream.offsets[-1]) for stream in batch.streams.values())
        elapsed = time.perf_counter() - started
        print(f"  step {steps}: {impressions:,} impressions, {events:,} events encoded, {elapsed:.1f} s", file=sys.stderr, flush=True)
        if elapsed > args.seconds:
            break
    elapsed = time.perf_counter() - started
    train = len(dataset.examples)
    return {"steps": steps, "impressions": impressions, "events": events, "seconds": elapsed, "per_second": impressions / elapsed,
            "events_per_step": events / steps, "epoch_minutes": train / (impressions / elapsed) / 60, "train": train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, default=None, help="the long world's logs (default: generate into WORKDIR/logs)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "user_batches")
    parser.add_argument("--batch-size", type=int, default=512, help="impressions per user batch (whole users)")
    parser.add_argument("--impression-batch-size", type=int, default=32, help="impressions per per-impression batch")
    parser.add_argument("--seconds", type=float, default=120.0, help="time budget per way of batching (at least one step)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eventrec.data.gather import make_batch
    from eventrec.data.user_batches import make_user_batch
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from eventrec.synthetic import generate_world
    from eventrec.training.factory import build_model, default_config

    logs = args.logs or args.workdir / "logs"
    if not (logs / "world.json").exists():
        generate_world(logs, num_users=1_000, seed=0, preset="long")
    store_dir = args.workdir / "store"
    if not (store_dir / "manifest.json").exists():
        build_store(load_schema(builtin_schema_path("synthetic_long")), logs, store_dir)
    store = EventStore.open(store_dir)
    config = default_config("sequence", MODEL)
    train = store.split_indices("train")
    rows = {}
    for name, batch_fn, groups, size in (("per impression", make_batch, None, args.impression_batch_size),
                                         ("user batches", make_user_batch, store.user_rows[train], args.batch_size)):
        torch.manual_seed(0)
        model = build_model(FeatureSpec.from_store(store), config).train()
        print(f"{name}:", file=sys.stderr, flush=True)
        rows[name] = throughput(store, model, batch_fn, groups, size, args) | {"batch_size": size}
    print(f"\nlong world: {store.num_examples:,} impressions ({rows['user batches']['train']:,} training), "
          f"{args.threads} threads, torch {torch.__version__}; model {MODEL}\n")
    print("| batching | impressions per batch | steps | impressions | seconds | impressions/s | events encoded per step | events encoded/s | one epoch (min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['batch_size']} | {r['steps']} | {r['impressions']:,} | {r['seconds']:.1f} | {r['per_second']:.1f} | "
              f"{r['events_per_step']:,.0f} | {r['events'] / r['seconds']:,.0f} | {r['epoch_minutes']:.1f} |")
    ratio = rows["user batches"]["per_second"] / rows["per impression"]["per_second"]
    print(f"\nuser batches / per impression: {ratio:.1f}x impressions per second")


if __name__ == "__main__":
    main()
