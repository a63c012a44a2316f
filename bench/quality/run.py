"""The quality runner: train the seeds of variant files, then rewrite their tables in docs/results.md.

    .venv/bin/python -m bench.quality.run bench/quality/variants/trivago                  # a whole table
    .venv/bin/python -m bench.quality.run bench/quality/variants/trivago/main.yaml --seeds 1
    .venv/bin/python -m bench.quality.run bench/quality/variants/amazon_grocery --jobs 3  # 3 seeds at once

Each variant file (``bench/quality/variant.py``) is one row; its folder is its table, and the
``docs/results.md`` section of that name is rewritten from every variant file of the folder (rows
whose runs are not in this checkout are kept as written, marked). Finished seeds are reused: a run
is found by its run id, a hash of the resolved configs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.quality.report import RESULTS, write_section
from bench.quality.variant import load_variant, variant_files


def dataset_module(dataset: str):
    """The module that trains ``dataset``'s seeds: ``prepare(variant)`` and ``train_seed(variant, seed)``."""
    if dataset == "trivago":
        from bench.quality import trivago

        return trivago
    from bench.quality import next_item

    return next_item


def is_done(variant, seed: int) -> bool:
    """Whether the seed's run is finished (its test figures are written)."""
    if variant.dataset == "trivago":
        from bench.quality.trivago import RUNS

        return (RUNS / f"{variant.run_id}_seed{seed}" / "run.json").exists()
    from bench.quality.next_item import benchmark

    return benchmark(variant.dataset, variant.protocol.ties).done_file(variant, seed).exists()


def run_workers(tasks: list[tuple[Path, int]], jobs: int, threads: int) -> None:
    """Train each (variant file, seed) in its own process, ``jobs`` at a time; raises if one fails
    (the others finish; an interrupted seed resumes from its checkpoint when run again)."""
    pending, running, failed = list(tasks), {}, []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                path, seed = task = pending.pop(0)
                command = [sys.executable, "-m", "bench.quality.run", str(path), "--only-seed", str(seed), "--threads", str(threads), "--no-report"]
                running[task] = subprocess.Popen(command)
            for task, process in list(running.items()):
                if process.poll() is not None:
                    del running[task]
                    if process.returncode != 0:
                        failed.append(f"{task[0]} seed {task[1]} (exit status {process.returncode})")
            time.sleep(0.5)
    finally:
        for process in running.values():
            process.terminate()
    if failed:
        raise RuntimeError("training failed for " + ", ".join(failed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="variant files, or folders (every *.yaml inside: a whole table)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 of every variant (default: each file's seeds)")
    parser.add_argument("--jobs", type=int, default=1, help="train this many seeds at once, each in its own process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument("--skip-peers", action="store_true", help="trivago: do not run FuxiCTR (its rows are kept as written)")
    parser.add_argument("--no-report", action="store_true", help="train only; leave docs/results.md alone")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the page whose table sections are rewritten")
    parser.add_argument("--only-seed", type=int, default=None, help=argparse.SUPPRESS)  # a worker of --jobs
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error(f"--jobs, --threads and --seeds: must be >= 1, got {args.jobs}, {args.threads} and {args.seeds}")
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    try:
        variants = [(path, load_variant(path)) for path in variant_files(args.paths)]
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.only_seed is not None:
        for _, variant in variants:
            dataset_module(variant.dataset).train_seed(variant, args.only_seed)
        return
    for _, variant in variants:
        dataset_module(variant.dataset).prepare(variant)
    tasks = [(path, seed) for path, v in variants for seed in range(args.seeds or v.seeds) if not is_done(v, seed)]
    print(f"{len(tasks)} seed runs to train ({len(variants)} variant files)", flush=True)
    if args.jobs > 1:
        run_workers(tasks, args.jobs, args.threads)
    else:
        by_path = dict(variants)
        for path, seed in tasks:
            dataset_module(by_path[path].dataset).train_seed(by_path[path], seed)
    if not args.no_report:
        for folder in dict.fromkeys(Path(path).resolve().parent for path, _ in variants):  # each table once, in order
            write_section(folder.name, report(folder, args), args.results)
    print(f"{time.perf_counter() - started:.0f} s")


def report(folder: Path, args: argparse.Namespace) -> str:
    """The section of the table ``folder``: every variant file in it, not only those named on the command line."""
    members = [load_variant(path) for path in variant_files([folder])]
    datasets = {v.dataset for v in members}
    if len(datasets) != 1:
        raise ValueError(f"{folder}: one dataset per table, got {sorted(datasets)}")
    if members[0].dataset == "trivago":
        from bench.quality.trivago import report as trivago_report

        body = trivago_report(folder.name, members, args.seeds, not args.skip_peers, args.results)
    else:
        from bench.quality.next_item_report import report as next_item_report

        body = next_item_report(folder.name, members, args.seeds, args.results)
    print(body, flush=True)
    return body


if __name__ == "__main__":
    main()
