"""Time of the ranking head per candidate: full-rank DCNv2 cross layers against low-rank ones, in the same run.

    .venv/bin/python bench/cross_rank.py [--features 394] [--candidates 8687] [--ranks 16 32 64] [--threads 1]

The head of a keyed-pooling model scores every candidate: cross layers on its F inputs, then the
MLP tower (`SequenceModelConfig.cross_layers`, `mlp_dims`, and `cross_rank`). With 64-dim attributes
on Amazon grocery, F = 394 (4 slots × 64 + the candidate's 128 + 10 dot products) and a profile of the
full-catalogue ranking put 58% of its time in the two full-rank cross layers (docs/results.md). This
script times the cross network and the tower on random inputs ``[C, F]`` (time does not depend on the
weights), full rank first, then each rank, interleaved over `--repeats` rounds, and prints the median
milliseconds per pass and each rank's speed-up over full rank. It does not say what a rank costs in
quality: that takes a variant file with `model: {cross_rank: R}` run by `python -m bench.quality.run`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eventrec.model.heads import CrossNetwork, TaskHeads


def head(features: int, rank: int | None, layers: int, mlp: list[int]) -> torch.nn.Module:
    """Cross network then the task tower, as ``SequenceRanker`` stacks them."""
    cross, heads = CrossNetwork(features, layers, rank), TaskHeads(features, mlp, 1)
    return torch.nn.Sequential(cross, heads).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=394, help="F: the head's inputs")
    parser.add_argument("--candidates", type=int, default=8687, help="C: rows per pass (Amazon grocery's catalogue)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--mlp", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if any(r < 1 for r in args.ranks) or args.features < 1 or args.candidates < 1:
        parser.error("--ranks, --features and --candidates must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.candidates, args.features)
    variants = {"full rank": head(args.features, None, args.layers, args.mlp)}
    variants |= {f"rank {r}": head(args.features, r, args.layers, args.mlp) for r in args.ranks}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for module in variants.values():  # warm-up
            module(x)
        for _ in range(args.repeats):
            for name, module in variants.items():
                t0 = time.perf_counter()
                module(x)
                times[name].append(time.perf_counter() - t0)
    full = statistics.median(times["full rank"])
    print(f"head on [{args.candidates}, {args.features}], {args.layers} cross layers, tower {args.mlp}, {args.threads} thread(s), "
          f"median of {args.repeats}:\n")
    print("| head | ms per pass | speed-up over full rank |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {1000 * median:.1f} | {full / median:.2f}× |")


if __name__ == "__main__":
    main()
