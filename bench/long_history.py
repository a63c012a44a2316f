"""Cost curves of the sequence encoders against history length N, softmax and linear, in one run.

    .venv/bin/python bench/long_history.py [--sizes 256 1024 4096 16384 65536 100000] [--encoders softmax linear]
                                           [--threads 1] [--memory-gb G] [--out results.json]

Per (encoder, N), in a fresh child process (its peak memory is its own; a cell that would not fit the
memory budget is skipped and the table says why), at the encoder level (``JaggedTransformerEncoder`` of
``SequenceModelConfig(encoder=...)``, default D=64, 4 heads, 2 layers, random weights and events,
timestamps with gaps from 0 s to a month):

* train: one optimiser step (forward, backward, AdamW) over ``max(1, --events-per-step // N)`` histories
  of N events: ms per step, µs per event, and the child's peak resident memory during the step above
  its memory before it (MB);
* encode: a cold user-side encode of one history of N events keeping its cache (``capture_kv``), eval,
  no grad: ms p50;
* append 1 / 16: ``encoder.extend`` of 1 or 16 new events against that cache (p50 and p99 in ms;
  every repetition from the same cache) and the speed-up of an append over the cold encode. When the
  softmax encode does not fit, its appends run against random keys/values of the right shape (marked);
* cache: the bytes of one user's per-layer encoder cache (softmax: keys and values [N, H, d] per
  layer; linear: one [H, d, d] state per layer). The per-position tensors that the keyed pooling reads
  (encoded events, pooling keys/values) come on top for both encoders.

Then per encoder the log-log slopes over the N that ran (1 = linear in N, 2 = quadratic) and the growth
ratios of consecutive sizes, time(65536) / time(16384) among them (the issue's goal for the linear
encoder: <= 4.5 for the encode and the per-event training cost).

The memory budget (``--memory-gb``, default 70 % of MemAvailable at the start) skips cells whose
estimate exceeds it and caps each child's address space at its size above the child's own footprint,
so that an underestimate fails the cell instead of the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [256, 1024, 4096, 16_384, 65_536, 100_000]
CHUNK = 64  # the linear op's chunk (eventrec.ops.linear_attention_torch.DEFAULT_CHUNK)


# -- the parent: cells, estimates, table --------------------------------------------------------------
def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def estimate_bytes(encoder: str, n: int, histories: int, args: argparse.Namespace) -> dict[str, float]:
    """Rough peak bytes of each measurement (the padded softmax path materialises [H, N, N] masks and
    int64 gap buckets per history; the chunked linear path [H, C, C] blocks per chunk)."""
    d, h, layers = args.model_dim, args.heads, args.layers
    per_event = d * 4 * (12 + 8 * args.ffn_multiplier) * layers  # activations kept for backward, all layers
    if encoder == "softmax":
        square = float(n) * n
        encode = square * (16 + 8 * h) + n * per_event
        train = histories * (square * (layers * (8 + 8 * h) + 16 + 8 * h) + n * per_event)
    else:
        encode = n * (h * CHUNK * 4 * 6 + per_event)
        train = histories * n * (layers * h * CHUNK * 4 * 10 + per_event)
    return {"encode": encode, "train": train}


def run_cell(encoder: str, n: int, args: argparse.Namespace, budget: float) -> dict:
    histories = max(1, args.events_per_step // n)
    estimate = estimate_bytes(encoder, n, histories, args)
    plan = {"train": estimate["train"] <= budget, "encode": estimate["encode"] <= budget}
    command = [sys.executable, str(Path(__file__).resolve()), "--cell", encoder, str(n), "--histories", str(histories),
               "--budget-bytes", str(int(budget)), "--plan", json.dumps(plan)] + _model_args(args)
    row = {"encoder": encoder, "N": n, "estimate_gb": {k: round(v / 2**30, 2) for k, v in estimate.items()}}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.cell_timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return row | {"error": f"timed out after {args.cell_timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return row | {"error": f"child exited {done.returncode}: {tail[:200]}"}
    row |= json.loads(lines[-1])
    for part, fits in plan.items():
        if not fits:
            row.setdefault("skipped", {})[part] = f"estimated {estimate[part] / 2**30:.1f} GB > budget {budget / 2**30:.1f} GB"
    return row


def _model_args(args: argparse.Namespace) -> list[str]:
    return ["--model-dim", str(args.model_dim), "--heads", str(args.heads), "--layers", str(args.layers),
            "--ffn-multiplier", str(args.ffn_multiplier), "--threads", str(args.threads), "--reps", str(args.reps),
            "--append-reps", str(args.append_reps), "--min-seconds", str(args.min_seconds)]


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}" if abs(value) < 10**6 else f"{value:.3g}"


def print_table(rows: list[dict]) -> None:
    header = ["encoder", "N", "train ms/step", "train µs/event", "train peak MB", "encode ms p50", "append 1 ms p50/p99",
              "append 16 ms p50/p99", "encode / append 1", "cache bytes/user"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        if "error" in r:
            print(f"| {r['encoder']} | {r['N']} | {r['error']} |" + " |" * (len(header) - 3))
            continue
        t, e, a1, a16 = r.get("train"), r.get("encode"), r.get("append_1"), r.get("append_16")
        mark = " (random cache)" if r.get("synthetic_cache") else ""
        cells = [
            r["encoder"], str(r["N"]),
            _fmt(t and t["ms"]), _fmt(t and t["us_per_event"]), _fmt(t and t["peak_mb"], 0),
            _fmt(e and e["p50_ms"], 3),
            f"{_fmt(a1 and a1['p50_ms'], 3)} / {_fmt(a1 and a1['p99_ms'], 3)}{mark}" if a1 else "-",
            f"{_fmt(a16 and a16['p50_ms'], 3)} / {_fmt(a16 and a16['p99_ms'], 3)}{mark}" if a16 else "-",
            f"{e['p50_ms'] / a1['p50_ms']:.1f}x" if e and a1 else "-",
            str(r.get("cache_bytes", "-")),
        ]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for part, why in r.get("skipped", {}).items():
            print(f"skipped: {r['encoder']} N={r['N']} {part}: {why}")


METRICS = {
    "train µs/event": lambda r: r.get("train") and r["train"]["us_per_event"],
    "train peak MB": lambda r: r.get("train") and r["train"]["peak_mb"],
    "encode ms": lambda r: r.get("encode") and r["encode"]["p50_ms"],
    "append 1 ms": lambda r: r.get("append_1") and r["append_1"]["p50_ms"],
    "append 16 ms": lambda r: r.get("append_16") and r["append_16"]["p50_ms"],
    "cache bytes": lambda r: r.get("cache_bytes"),
}


def print_slopes(rows: list[dict]) -> dict:
    """Per encoder and metric: the least-squares slope of log(value) on log(N) and consecutive growth ratios."""
    summary: dict = {}
    for encoder in sorted({r["encoder"] for r in rows}):
        mine = sorted((r for r in rows if r["encoder"] == encoder and "error" not in r), key=lambda r: r["N"])
        print(f"\n{encoder}:")
        for name, get in METRICS.items():
            points = [(r["N"], get(r)) for r in mine if get(r)]
            if len(points) < 2:
                continue
            xs, ys = [math.log(n) for n, _ in points], [math.log(v) for _, v in points]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            den = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")
            ratios = {f"{b[0]}/{a[0]}": b[1] / a[1] for a, b in zip(points, points[1:])}
            summary.setdefault(encoder, {})[name] = {"slope": slope, "ratios": ratios}
            shown = ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items())
            print(f"  {name:15s} slope {slope:5.2f}   growth {shown}")
    for encoder, metrics in summary.items():
        for name in ("encode ms", "train µs/event"):
            ratio = metrics.get(name, {}).get("ratios", {}).get("65536/16384")
            if ratio is not None:
                print(f"{encoder}: {name} time(65536) / time(16384) = {ratio:.2f} (goal for the linear encoder: <= 4.5)")
    return summary


# -- the child: one (encoder, N) cell -----------------------------------------------------------------
def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _timed(fn, reps: int, min_seconds: float) -> list[float]:
    """Seconds of each call: at least 3 (1 when one call is slower than ``min_seconds``), until ``reps``
    calls or ``min_seconds`` spent."""
    fn()  # warm-up
    times, spent = [], 0.0
    while len(times) < reps and (spent < min_seconds or len(times) < 3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if times[-1] > min_seconds:
            break
    return times


def _quantile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1e3


def _histories(n: int, count: int, dim: int, seed: int):
    import torch

    from eventrec.data.jagged import JaggedTensor

    generator = torch.Generator().manual_seed(seed)
    total = n * count
    gaps = torch.exp(torch.rand(total, generator=generator) * math.log(2.6e6)).long()  # 1 s .. a month
    times = 1_600_000_000 + torch.cumsum(gaps, 0)
    offsets = torch.arange(count + 1, dtype=torch.int64) * n
    return JaggedTensor(torch.randn(total, dim, generator=generator), offsets, n), times


def cell(args: argparse.Namespace) -> dict:
    import torch

    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.encoder import JaggedTransformerEncoder

    torch.set_num_threads(args.threads)
    encoder_kind, n = args.cell[0], int(args.cell[1])
    plan = json.loads(args.plan)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") + args.budget_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    torch.manual_seed(0)
    config = SequenceModelConfig(model_dim=args.model_dim, num_heads=args.heads, num_layers=args.layers,
                                 ffn_multiplier=args.ffn_multiplier, encoder=encoder_kind)
    encoder = JaggedTransformerEncoder(config)
    out: dict = {}

    # encode and appends (inference)
    encoder.eval()
    events, times = _histories(n, 1, args.model_dim, seed=1)
    new_x, new_t = torch.randn(16, args.model_dim), times[-1] + torch.arange(1, 17) * 60
    with torch.no_grad():
        cache = None
        if plan["encode"]:
            before = _rss_bytes()
            timings = _timed(lambda: encoder.encode(events, times, capture_kv=True), args.reps, args.min_seconds)
            _, cache = encoder.encode(events, times, capture_kv=True)
            out["encode"] = {"p50_ms": _quantile(timings, 0.5), "reps": len(timings), "peak_mb": (_peak_rss_bytes() - before) / 2**20}
        elif encoder_kind == "softmax":  # the append's cost needs only the cache's shape
            head_dim = args.model_dim // args.heads
            cache = [(torch.randn(n, args.heads, head_dim), torch.randn(n, args.heads, head_dim)) for _ in range(args.layers)]
            out["synthetic_cache"] = True
        if cache is not None:
            out["cache_bytes"] = sum(t.numel() * t.element_size() for layer in cache for t in layer)
            for count in (1, 16):
                timings = _timed(lambda: encoder.extend(new_x[:count], new_t[:count], cache, times), args.append_reps, args.min_seconds)
                out[f"append_{count}"] = {"p50_ms": _quantile(timings, 0.5), "p99_ms": _quantile(timings, 0.99), "reps": len(timings)}
        del cache

    # one training step (last: the peak resident memory only grows)
    if plan["train"]:
        encoder.train()
        batch, batch_times = _histories(n, args.histories, args.model_dim, seed=2)
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            encoder(batch, batch_times).values.square().mean().backward()
            optimizer.step()

        before = _rss_bytes()
        timings = _timed(step, max(1, args.reps // 4), args.min_seconds)
        ms = _quantile(timings, 0.5)
        out["train"] = {"ms": ms, "us_per_event": ms * 1e3 / (n * args.histories), "histories": args.histories,
                        "reps": len(timings), "peak_mb": (_peak_rss_bytes() - before) / 2**20}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--encoders", nargs="+", default=["softmax", "linear"], choices=["softmax", "linear"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each cell")
    parser.add_argument("--events-per-step", type=int, default=16_384, help="events per training step (histories of N)")
    parser.add_argument("--model-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ffn-multiplier", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20, help="most repetitions of an encode (training: a quarter)")
    parser.add_argument("--append-reps", type=int, default=200, help="most repetitions of an append")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time spent per measurement before stopping")
    parser.add_argument("--memory-gb", type=float, default=None, help="memory budget per cell (default 70%% of MemAvailable)")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds per (encoder, N) child")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and slopes as JSON (atomically)")
    # the child's arguments
    parser.add_argument("--cell", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--histories", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--plan", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("threads", "events_per_step", "model_dim", "heads", "layers", "reps", "append_reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(n < 2 for n in args.sizes):
        parser.error("--sizes must be >= 2")
    if args.model_dim % args.heads:
        parser.error("--model-dim must be divisible by --heads")

    if args.cell is not None:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(cell(args)))
        return

    import torch

    budget = (args.memory_gb * 2**30) if args.memory_gb else 0.7 * mem_available_bytes()
    load = os.getloadavg()
    print(f"# long_history: torch {torch.__version__}, {os.cpu_count()} cores, {args.threads} thread(s) per cell, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, memory budget {budget / 2**30:.1f} GB per cell")
    print(f"# encoder D={args.model_dim}, H={args.heads}, layers={args.layers}; training steps of {args.events_per_step} events "
          f"(histories of N, at least one)\n")
    rows = []
    for n in args.sizes:
        for encoder in args.encoders:
            start = time.perf_counter()
            rows.append(run_cell(encoder, n, args, budget))
            print(f"# {encoder} N={n}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    summary = print_slopes(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps({"rows": rows, "slopes": summary, "load_average": load, "threads": args.threads}, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
