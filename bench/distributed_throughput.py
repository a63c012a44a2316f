"""Benchmark: distributed training throughput, one process vs N processes, on the synthetic world.

    .venv/bin/python bench/distributed_throughput.py                 # 20k users, batch 512, 40 measured steps
    .venv/bin/python bench/distributed_throughput.py --users 300 --days 10 --batch-size 32 --steps 3 --warmup 1 --profile-steps 2   # smoke

Rows (each in fresh processes, ``--threads`` torch threads per process, default 1):

* ``1 process``: the one-process :class:`~eventrec.training.trainer.Trainer` (the baseline);
* ``torchrun 1``: the distributed trainer on one process (TorchRec tables, DMP): the sharded path's
  own cost, without any peer;
* ``torchrun N`` for each N of ``--processes`` (default 2): TorchRec-sharded tables (``--sharding``),
  DDP for the dense part, each rank on its share of the same global batch.

Per row: the optimizer step's wall time (median and mean over ``--steps`` steps after ``--warmup``;
the batch is built before the clock starts), examples/s and history events/s of the *global* batch
(the events of the distinct histories the batch reads), and the communication: the PyTorch profiler's
``gloo:all_reduce`` (DDP's gradient buckets, the logged loss, the tables' read flags) and
``gloo:all_to_all`` (TorchRec's id and embedding exchanges, forward and backward) time per step on
rank 0 over ``--profile-steps`` more steps, and its share of the step time. Collectives run on gloo's
threads and DDP's all-reduce overlaps the backward pass, so the share is the time spent
communicating, an upper bound of what communication adds to a step. On a machine with fewer cores
than processes x threads the processes also compete for cores: say so beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTIVES = {"gloo:all_reduce": "all_reduce", "gloo:all_to_all": "all_to_all"}


def _store(workdir: Path, users: int, days: int, seed: int) -> Path:
    """The synthetic world's store, built once under ``workdir`` (cached by its parameters)."""
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.build import build_store
    from eventrec.synthetic import generate_world

    base = workdir / f"synthetic-u{users}-d{days}-s{seed}"
    store = base / "store"
    if not (store / "manifest.json").exists():
        generate_world(base / "world", num_users=users, days=days, seed=seed)
        build_store(load_schema(builtin_schema_path("synthetic")), base / "world", store)
    return store


def _history_events(batch) -> int:
    """Events of the distinct histories an EventBatch reads."""
    return int(sum(len(stream.timestamps) for stream in batch.streams.values()))


def worker(args: argparse.Namespace) -> None:
    """One process of a row: train ``warmup + steps`` timed steps, then ``profile_steps`` profiled ones;
    rank 0 (or the one process) writes the row to ``args.result``."""
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from eventrec.store.reader import EventStore
    from eventrec.training.config import TrainConfig
    from eventrec.training.factory import parse_model_config
    from eventrec.training.launch import launched_by_torchrun
    from eventrec.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    store = EventStore.open(args.store)
    model_config = parse_model_config({"kind": "sequence", **json.loads(args.model)})
    config = TrainConfig(batch_size=args.batch_size, checkpoint_every=10**9, seed=0)
    run_dir = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    distributed = launched_by_torchrun()
    if distributed:
        from eventrec.training.distributed import DistributedTrainer
        from eventrec.training.sharding import DistributedEnv

        env = DistributedEnv.from_torchrun()
        trainer = DistributedTrainer(store, model_config, config, run_dir, env, args.sharding, show_progress=False)
        rank, world = env.rank, env.world
    else:
        trainer = Trainer(store, model_config, config, run_dir, show_progress=False)
        rank, world = 0, 1
    trainer.model.train()
    batches = len(trainer.dataset)

    def batch_and_events(i: int):
        batch = trainer.dataset[i % batches]
        events = torch.tensor([_history_events(batch.batch if distributed else batch)])
        if distributed:
            dist.all_reduce(events)
        return batch, int(events)

    seconds, events, examples = [], 0, 0
    for i in range(args.warmup + args.steps):
        batch, count = batch_and_events(i)
        started = time.perf_counter()
        trainer.step(batch)
        if i >= args.warmup:
            seconds.append(time.perf_counter() - started)
            events += count
            examples += len(trainer.dataset.batch_indices(i % batches))
    collective = {name: 0.0 for name in COLLECTIVES.values()}
    if args.profile_steps:
        prepared = [batch_and_events(args.warmup + args.steps + i)[0] for i in range(args.profile_steps)]
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for batch in prepared:
                trainer.step(batch)
        for event in profiler.key_averages():
            if event.key in COLLECTIVES:
                collective[COLLECTIVES[event.key]] += event.cpu_time_total / 1e3 / args.profile_steps  # ms per step
    if rank == 0:
        total = sum(seconds)
        median_ms = statistics.median(seconds) * 1e3
        row = {
            "setup": f"torchrun {world}" if distributed else "1 process", "processes": world, "threads_per_process": args.threads,
            "batch_size": args.batch_size, "steps": args.steps, "step_ms_median": median_ms, "step_ms_mean": total / len(seconds) * 1e3,
            "examples_per_s": examples / total, "events_per_s": events / total,
            "all_reduce_ms_per_step": collective["all_reduce"], "all_to_all_ms_per_step": collective["all_to_all"],
            "communication_share": (collective["all_reduce"] + collective["all_to_all"]) / median_ms if args.profile_steps else None,
            "sharding": args.sharding if distributed else None,
        }
        Path(args.result).write_text(json.dumps(row, indent=1))


def _run_row(args: argparse.Namespace, store: Path, processes: int | None, result: Path) -> dict:
    """One row in fresh processes: ``processes`` None is the one-process trainer, else torchrun."""
    own = [str(Path(__file__).resolve()), "--worker", "--store", str(store), "--result", str(result), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--profile-steps", str(args.profile_steps), "--threads", str(args.threads),
           "--model", args.model, "--sharding", args.sharding]
    if processes is None:
        command = [sys.executable, *own]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *own]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-4000:]}")
    return json.loads(result.read_text())


def _table(rows: list[dict]) -> str:
    lines = ["| setup | processes | step ms (median) | step ms (mean) | examples/s | events/s | all-reduce ms/step | all-to-all ms/step | communication share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = "-" if r["communication_share"] is None else f"{100 * r['communication_share']:.0f}%"
        lines.append(f"| {r['setup']} | {r['processes']} | {r['step_ms_median']:.1f} | {r['step_ms_mean']:.1f} | {r['examples_per_s']:,.0f} | "
                     f"{r['events_per_s']:,.0f} | {r['all_reduce_ms_per_step']:.1f} | {r['all_to_all_ms_per_step']:.1f} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch (each of N processes takes 1/N of it)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--profile-steps", type=int, default=10, help="profiled steps after the timed ones (0: no communication figures)")
    parser.add_argument("--processes", default="2", help="comma-separated process counts of the torchrun rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--sharding", default="auto", choices=["auto", "row_wise", "table_wise"])
    parser.add_argument("--model", default="{}", help="JSON overrides of the sequence model's config")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_distributed")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    for name in ("batch_size", "steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        counts = [int(n) for n in args.processes.split(",")]
    except ValueError:
        parser.error(f"--processes: comma-separated integers expected, got {args.processes!r}")
    if any(n < 1 for n in counts):
        parser.error("--processes: each count must be >= 1")
    store = _store(args.workdir, args.users, args.days, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, processes in enumerate([None, 1, *[n for n in counts if n != 1]]):
            rows.append(_run_row(args, store, processes, Path(tmp) / f"row{index}.json"))
            print(f"{rows[-1]['setup']}: {rows[-1]['step_ms_median']:.1f} ms/step", file=sys.stderr)
    print(f"synthetic world: {args.users:,} users, {args.days} days; global batch {args.batch_size}; {args.threads} thread(s) per process; "
          f"{os.cpu_count()} cores here")
    print(_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
