"""``eventrec serve`` end to end for a user of ~100,000 events, over HTTP, with its state in Redis.

    .venv/bin/python bench/serve_long_user.py [--logs DIR] [--workdir bench/out/serve_long] [--candidates 1000]
                                              [--repeats 10] [--state-precision int8] [--threads 2]

Issue 22's serving goal: "``eventrec serve`` handles a 100k-event user end to end (HTTP), and the Redis
state format carries the new states". In one run:

1. The long-history world (``eventrec generate --preset long``: 1,000 users, seed 0; its heaviest user
   has 100,514 events), generated into ``WORKDIR/logs`` unless ``--logs``, and its store built with
   the preset's schema (every stream up to 100,000 events).
2. A checkpoint of the long-history configuration: ``encoder: linear`` (one fixed recurrent state per
   layer) and candidate search (``recent`` 16, ``per_match`` 16) beside the default's match features,
   with random weights: this measures cost, not quality (training on these histories is out of reach
   of a 2-core session; ``docs/results.md``).
3. A real ``redis-server`` on a free loopback port, and ``eventrec serve --redis-url ...`` as a child
   process. Over HTTP, for the user with the most events (``POST /rank`` with C ads of the
   impressions, columnar):

   * **cold**: the user side computed from the store (every event through the encoder), kept in the
     process and written to Redis;
   * **cached**: the same request again, ``--repeats`` times;
   * **appended**: ``POST /events`` with one new event of the user, then ``/rank`` (the new event
     through the recurrent state: ``incremental``);
   * **other replica**: a second ``eventrec serve`` on the same Redis; its first ``/rank`` reads the
     grown state and the appended event from Redis.

Prints the client-side latency of each step (p50 / p99 over the repeats), the ``user_state`` each
response reports, the state's bytes in Redis, and the largest score difference between the replicas
(they read the same state: equal within 1e-5). Needs ``redis-server`` (``make redis-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_http_load import free_port, start_redis, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"encoder": "linear", "candidate_search": {"recent": 16, "per_match": 16}}


def start_server(checkpoint: Path, store: Path, redis_url: str, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    """``eventrec serve`` as a child process on a free loopback port; waits for ``/health``."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("eventrec")), "serve", "--model", str(checkpoint), "--store", str(store), "--port", str(port),
               "--redis-url", redis_url, "--state-precision", args.state_precision, "--max-state-mb", str(args.max_state_mb),
               "--threads", str(args.threads)]
    process = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", process, timeout_s=300)
    except RuntimeError as error:
        process.kill()
        sys.exit(f"eventrec serve: {error}; see {log}")
    return process, url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def prepare(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(logs, store, checkpoint) of the long world and the long-history configuration (made if absent)."""
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from eventrec.synthetic import generate_world
    from eventrec.training.config import TrainConfig
    from eventrec.training.trainer import Trainer

    logs = args.logs or args.workdir / "logs"
    if not (logs / "world.json").exists():
        print(f"generating the long world into {logs}", flush=True)
        generate_world(logs, seed=0, preset="long")
    store_dir = args.workdir / "store"
    if not (store_dir / "manifest.json").exists():
        started = time.perf_counter()
        build_store(load_schema(builtin_schema_path("synthetic_long")), logs, store_dir)
        print(f"built {store_dir} in {time.perf_counter() - started:.0f} s", flush=True)
    checkpoint = args.workdir / "run" / "random"
    if not (checkpoint / "checkpoint.json").exists():  # random weights, written as a checkpoint (no training step)
        trainer = Trainer(EventStore.open(store_dir), SequenceModelConfig(**MODEL), TrainConfig(), args.workdir / "run", show_progress=False)
        trainer.checkpoint(checkpoint, with_optimizers=False)
    return logs, store_dir, checkpoint


def heaviest_user(store_dir: Path, logs: Path) -> tuple[object, int, dict]:
    """(user id, its events in the store, one of its raw content_view events) of the user with the most events."""
    import polars as pl

    from eventrec.store.reader import EventStore

    store = EventStore.open(store_dir)
    counts = sum(np.diff(data.user_offsets) for data in store.streams.values())
    row = int(np.argmax(counts))
    user = store.user_ids[row].item() if hasattr(store.user_ids[row], "item") else store.user_ids[row]
    events = pl.read_parquet(logs / "events.parquet").filter((pl.col("user_id") == user) & (pl.col("event_type") == "content_view"))
    last = events.sort("timestamp").row(-1, named=True)
    return user, int(counts[row]), last


def candidate_columns(logs: Path, count: int) -> tuple[dict, dict]:
    """``count`` distinct ads of the impressions as columns, and one impression's context."""
    import polars as pl

    impressions = pl.read_parquet(logs / "impressions.parquet")
    ads = impressions.select("ad_id", "advertiser_id", "category", "price").unique("ad_id", keep="first", maintain_order=True).head(count)
    context = impressions.select("placement", "hour_of_day").row(0, named=True)
    return {c: ads[c].to_list() for c in ads.columns}, context


def percentiles(samples: list[float]) -> str:
    return f"{np.percentile(samples, 50) * 1e3:.1f} / {np.percentile(samples, 99) * 1e3:.1f}"


def rank(client, url: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.post(f"{url}/rank", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        sys.exit(f"/rank: HTTP {response.status_code}: {response.text[:500]}")
    return seconds, response.json()


def scores_of(answer: dict) -> np.ndarray:
    ranked = sorted(answer["ranked"], key=lambda r: r["index"])
    return np.array([[r["scores"][k] for k in sorted(r["scores"])] for r in ranked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", type=Path, default=None, help="an already generated long world (default: WORKDIR/logs, generated)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "serve_long")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--state-precision", choices=["fp32", "bf16", "int8"], default="int8")
    parser.add_argument("--max-state-mb", type=int, default=256, help="eventrec serve --max-state-mb (larger states are not kept in Redis)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import httpx
    import redis

    args.workdir.mkdir(parents=True, exist_ok=True)
    logs, store_dir, checkpoint = prepare(args)
    user, events, raw_event = heaviest_user(store_dir, logs)
    columns, context = candidate_columns(logs, args.candidates)
    timestamp = int(raw_event["timestamp"]) + 3_600
    body = {"user_id": user, "candidates": columns, "context": context, "timestamp": timestamp}
    appended = {k: v for k, v in raw_event.items() if v is not None and k != "user_id"} | {"timestamp": timestamp - 60}
    print(f"user {user}: {events:,} events in the store; {len(columns['ad_id'])} candidates; state precision {args.state_precision}", flush=True)

    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found (make redis-server, or apt-get install -y redis-server)")
    redis_process, redis_url = start_redis(args.workdir / "redis")
    servers = []
    rows = []
    try:
        log = args.workdir / "serve.log"
        first, url = start_server(checkpoint, store_dir, redis_url, args, log)
        servers.append(first)
        with httpx.Client(timeout=600) as client:
            seconds, answer = rank(client, url, body)
            rows.append(("cold (user side from the store)", f"{seconds * 1e3:.0f}", answer["user_state"]))
            cached, states = [], set()
            for _ in range(args.repeats):
                seconds, answer = rank(client, url, body)
                cached.append(seconds)
                states.add(answer["user_state"])
            rows.append((f"cached (x{args.repeats})", percentiles(cached), ",".join(sorted(states))))
            started = time.perf_counter()
            response = client.post(f"{url}/events", json={"user_id": user, "events": [appended]})
            append_seconds = time.perf_counter() - started
            if response.status_code != 200:
                sys.exit(f"/events: HTTP {response.status_code}: {response.text[:500]}")
            rows.append(("POST /events (1 event)", f"{append_seconds * 1e3:.1f}", "-"))
            seconds, grown = rank(client, url, body)
            rows.append(("rank after the append", f"{seconds * 1e3:.1f}", grown["user_state"]))
            again = []
            for _ in range(args.repeats):
                seconds, answer = rank(client, url, body)
                again.append(seconds)
            rows.append((f"cached after the append (x{args.repeats})", percentiles(again), answer["user_state"]))
            keys = redis.Redis.from_url(redis_url)
            state_bytes = {key.decode(): keys.strlen(key) for key in keys.scan_iter() if keys.type(key) == b"string"}
            second, url2 = start_server(checkpoint, store_dir, redis_url, args, log)
            servers.append(second)
            seconds, replica = rank(client, url2, body)
            rows.append(("other replica, first request (state from Redis)", f"{seconds * 1e3:.1f}", replica["user_state"]))
            difference = float(np.abs(scores_of(replica) - scores_of(grown)).max())
    finally:
        for process in servers:
            stop(process)
        stop(redis_process)
    print(f"\n| step | client ms (p50 / p99) | user_state |\n|---|---:|---|")
    for step, ms, state in rows:
        print(f"| {step} | {ms} | {state} |")
    print(f"\nRedis string entries (bytes): {json.dumps(state_bytes)}")
    print(f"largest |score difference| between the replicas after the append: {difference:.2e}")
    print(f"torch threads {args.threads}; model {json.dumps(MODEL)} (random weights); cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
