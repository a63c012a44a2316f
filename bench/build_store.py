"""Benchmark: build the event store + point-in-time examples with each engine vs a DuckDB baseline, in one run.

    .venv/bin/python bench/build_store.py                          # issue shape: ~9.6M events, ~1.08M impressions
    .venv/bin/python bench/build_store.py --shape default          # the demo's default world: ~9.9M events, ~6M impressions
    .venv/bin/python bench/build_store.py --users 20000            # a smoke run
    .venv/bin/python bench/build_store.py --variants polars duckdb # some variants only

Variants (``--variants``; all by default): ``polars``, the partitioned embedded build (the default
engine; ``--rows-per-partition``, ``--workers``: partitions in flight); ``spark``, the same partitions on Spark (``local[*]``; needs
``pip install '.[spark]'`` and Java 17); ``memory``, the in-memory build (every row at once, the
build before issue 24); ``duckdb``, the baseline below. Every eventrec variant writes the same bytes.

Shapes (``--shape``): ``issue`` is the workload issue 2 specifies ("~10M events and ~1M impressions"):
the default generator with fewer ad requests per block (``request_probability=0.25``) and one ad
per request (``ads_per_request=(1.0,)``); ``default`` is the generator's own defaults (the demo's
world), which has about 6 impressions per user. The world is generated once and cached under
``--workdir`` in a folder named after its parameters.

All variants start from the same raw Parquet logs of the synthetic world and produce the same
thing: one row per user with per-stream, time-sorted list columns, and for each impression the
number of the user's events strictly before it in each stream (the cut). eventrec also encodes
vocabularies, hashes and statistics; the DuckDB baseline does only the sort, the grouping and an
ASOF join per stream, so it does less work. Each variant runs in its own child process. Peak memory
is the largest sum of the resident memory (RSS) of that child and all its descendants (Spark's JVM
and Python workers), sampled every 20 ms from /proc; for a single process it is also its exact
``ru_maxrss``, printed beside. Prints events/s, peak memory, store size and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _eventrec(world: Path, out: Path, engine: str, rows_per_partition: int, workers: int | None = None) -> dict:
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.build import build_store

    stages: list[list] = []  # [stage name, seconds], from build_store's progress messages

    def progress(message: str) -> None:
        now = time.perf_counter()
        if stages:
            stages[-1][1] = now - stages[-1][1]
        stages.append([message, now])

    started = time.perf_counter()
    manifest = build_store(load_schema(builtin_schema_path("synthetic")), world, out, progress=progress, engine=engine,
                           rows_per_partition=rows_per_partition, workers=workers if engine == "polars" else None)
    seconds = time.perf_counter() - started
    if stages:
        stages[-1][1] = time.perf_counter() - stages[-1][1]
    events = sum(v for k, v in manifest["counts"].items() if k.endswith(".events"))
    return {"seconds": seconds, "events": events, "impressions": manifest["counts"]["impressions"], "stages": stages}


def _duckdb(world: Path, out: Path, engine: str, rows_per_partition: int, workers: int | None = None) -> dict:
    import duckdb

    from eventrec.schema import builtin_schema_path, load_schema

    schema = load_schema(builtin_schema_path("synthetic"))
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads TO {os.cpu_count()}")
    started = time.perf_counter()
    events_path, impressions_path = world / "events.parquet", world / "impressions.parquet"
    total = 0
    cut_columns = []
    for stream in schema.streams:
        columns = ", ".join(sorted({a.source_column for a in stream.attributes if getattr(a, "table", None) is None}))
        types = ", ".join(f"'{t}'" for t in stream.event_types or [])
        con.execute(
            f"CREATE TABLE s_{stream.name} AS SELECT user_id, timestamp, {columns}, "
            f"row_number() OVER (PARTITION BY user_id ORDER BY timestamp) AS n "
            f"FROM read_parquet('{events_path}') WHERE event_type IN ({types})"
        )
        total += con.execute(f"SELECT count(*) FROM s_{stream.name}").fetchone()[0]
        lists = ", ".join(f"list({c} ORDER BY timestamp) AS {c}" for c in ["timestamp", *columns.split(", ")])
        con.execute(
            f"COPY (SELECT user_id, {lists} FROM s_{stream.name} GROUP BY user_id ORDER BY user_id) "
            f"TO '{out}/users_{stream.name}.parquet' (FORMAT parquet, COMPRESSION zstd)"
        )
        cut_columns.append(stream.name)
    # the point-in-time cut per stream: ASOF join on the last event strictly before the impression
    select = ["i.*"]
    joins = []
    for k, name in enumerate(cut_columns):
        joins.append(f"ASOF LEFT JOIN s_{name} e{k} ON i.user_id = e{k}.user_id AND i.timestamp > e{k}.timestamp")
        select.append(f"coalesce(e{k}.n, 0) AS cut__{name}")
    con.execute(
        f"COPY (SELECT {', '.join(select)} FROM read_parquet('{impressions_path}') i {' '.join(joins)}) "
        f"TO '{out}/examples.parquet' (FORMAT parquet, COMPRESSION zstd)"
    )
    impressions = con.execute(f"SELECT count(*) FROM read_parquet('{out}/examples.parquet')").fetchone()[0]
    return {"seconds": time.perf_counter() - started, "events": total, "impressions": impressions}


VARIANTS = ("polars", "spark", "memory", "duckdb")


def _child(variant: str, world: Path, out: Path, rows_per_partition: int, workers: int | None) -> None:
    run = _duckdb if variant == "duckdb" else _eventrec
    result = run(world, out, variant, rows_per_partition, workers)
    result["own_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["store_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print("RESULT " + json.dumps(result))


def _tree_rss_mb(root: int) -> float:
    """The resident memory of ``root`` and all its descendants (MB), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier += children
    pages = 0
    for pid in tree:
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _run(variant: str, world: Path, out: Path, rows_per_partition: int, workers: int | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", variant, "--world", str(world), "--out", str(out), "--rows-per-partition", str(rows_per_partition),
         *(["--workers", str(workers)] if workers else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_mb(proc.pid))
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["peak_rss_mb"] = max(peak, result["own_rss_mb"])
    return result


SHAPES: dict[str, dict] = {
    "issue": {"request_probability": 0.25, "ads_per_request": (1.0,)},
    "default": {},
}


def world_dir(workdir: Path, users: int, days: int, params: dict) -> Path:
    """The cache folder of a world: named after its parameters (the defaults keep their old name)."""
    suffix = "".join(f"_{k}-{'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(params.items()))
    return workdir / f"world_{users}_{days}{suffix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="issue",
                        help="issue: ~10M events and ~1M impressions at 1M users (issue 2); default: the generator's defaults")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "build_store")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rows-per-partition", type=int, default=200_000, help="the partitioned engines' partition size (raw rows)")
    parser.add_argument("--workers", type=int, default=None, help="the polars engine's partitions in flight (default min(2, cores))")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--world", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)  # accepted for old command lines; no effect
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.world, args.out, args.rows_per_partition, args.workers)
        return

    from eventrec.synthetic import generate_world

    params = SHAPES[args.shape]
    world = world_dir(args.workdir, args.users, args.days, params)
    if not (world / "world.json").exists():
        started = time.perf_counter()
        generate_world(world, num_users=args.users, days=args.days, seed=0, **params)
        print(f"generated {world} in {time.perf_counter() - started:.1f}s")
    counts = json.loads((world / "world.json").read_text())["counts"]
    by_type = ", ".join(f"{k} {v:,}" for k, v in counts["events_by_type"].items())
    print(f"world ({args.shape} shape, {world.name}): {counts['users']:,} users, {counts['events']:,} events ({by_type}), "
          f"{counts['impressions']:,} impressions")
    raw_mb = sum(p.stat().st_size for p in world.glob("*.parquet")) / 2**20
    load = os.getloadavg()
    results = {}
    for variant in args.variants:
        results[variant] = _run(variant, world, args.workdir / f"store_{variant}", args.rows_per_partition, args.workers)
        print(f"  {variant}: {results[variant]['seconds']:.1f}s", flush=True)
    stores = [args.workdir / f"store_{v}" for v in results if v != "duckdb"]
    same = all(_digest(s) == _digest(stores[0]) for s in stores[1:]) if stores else True
    first = next(iter(results.values()))
    print(f"\nworld: {args.users:,} users, {first['events']:,} events, {first['impressions']:,} impressions, raw logs {raw_mb:.0f} MB, "
          f"{os.cpu_count()} cores, rows per partition {args.rows_per_partition:,}, polars workers {args.workers or 'default'}, load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<10}{'seconds':>10}{'events/s':>14}{'peak RSS MB':>14}{'own RSS MB':>12}{'output MB':>12}{'RSS/output':>12}")
    for name, r in results.items():
        print(f"{name:<10}{r['seconds']:>10.1f}{r['events'] / r['seconds']:>14,.0f}{r['peak_rss_mb']:>14.0f}{r['own_rss_mb']:>12.0f}"
              f"{r['store_mb']:>12.0f}{r['peak_rss_mb'] / r['store_mb']:>12.1f}")
    print("(peak RSS: the child and its descendants, sampled; own RSS: the child's exact ru_maxrss)")
    print(f"eventrec stores byte-identical across {', '.join(v for v in results if v != 'duckdb')}: {same}")
    for name, r in results.items():
        if r.get("stages"):
            print(f"\n{name} stages (seconds):")
            for stage, seconds in r["stages"]:
                print(f"  {seconds:6.2f}  {stage}")
    if "polars" in results:
        ours = results["polars"]
        if "duckdb" in results:
            base = results["duckdb"]
            print(f"\nratio polars/duckdb: speed {base['seconds'] / ours['seconds']:.2f}x, peak memory {ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x")
        print(f"goal (polars): >= 1,000,000 events/s end to end -> {'met' if ours['events'] / ours['seconds'] >= 1e6 else 'NOT met'}; "
              f"peak memory < 4x store size -> {'met' if ours['peak_rss_mb'] < 4 * ours['store_mb'] else 'NOT met'}")


def _digest(directory: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


if __name__ == "__main__":
    main()
