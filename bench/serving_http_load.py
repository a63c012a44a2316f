"""HTTP load: the real `eventrec serve` (uvicorn, one process) on 127.0.0.1 under concurrent clients for a
bounded time, next to the Python core on the same model, store and requests, in the same run.

    .venv/bin/python bench/serving_http_load.py [--events 1024] [--candidates 1000 5000] [--duration 60] [--clients 1 4] [--scoring-slots 1 2] [--payload records columns]

Setup: the synthetic world of `bench/serving_latency.py` (users with exactly N click events), the default
`SequenceModelConfig` with random weights saved as a checkpoint (safetensors + JSON), served by
`eventrec serve --model CKPT --store STORE --threads T --precision P --scoring-slots S` in a subprocess, one server per
value of `--scoring-slots` (loopback only; `--redis` serves with `--redis-url` on a local `redis-server` started here).
Per (N, C) cell:

* core: `RankingService.rank` in this process (cached user and candidates), `--core-repeats` requests,
  measured before the server starts so the two do not share the CPU;
* HTTP: for each value of `--clients`, that many threads, each with its own `httpx.Client`, POST /rank with the same pre-encoded
  JSON body (cached user, top_k 100) back to back for `--duration` seconds (at most `--max-requests` in
  all). Latency is client-side (request sent → response parsed). Errors: non-200 answers and exceptions.
  With `--payload records columns`, each load phase runs once per form of the candidates: records
  (`[{ad_id, category}, ...]`) and columns (`{ad_id: [...], category: [...]}`), same candidates.

Prints a Markdown table: core p50/p99, HTTP p50/p99, requests/s, requests, errors; each server's request
counts from its /metrics go to stderr.

`--mixed` (the bounded load test of issue 21) runs, per server, instead of the /rank-only cells, one phase
of `--duration` seconds with the largest `--clients` value: each client owns its users (a known user of the
world, and cold users) and alternates at random between POST /rank (C = the smallest `--candidates`, a request
time after every appended event) and POST /events (one click, times increasing per user). It reports p50/p99
per endpoint, requests/s and errors (any non-200 answer or exception), then checks that every appended
event is present: one more append per user must answer `events` = the store's count + every accepted append
+ 1, and /metrics' `eventrec_events_appended_total` must equal the events accepted; it exits 1 otherwise.

    .venv/bin/python bench/serving_http_load.py --mixed --duration 60 --clients 4 --events 256 --candidates 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from serving_latency import CATEGORIES, REQUEST_TIME, build_world, percentiles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def load(url: str, body: bytes, clients: int, duration_s: float, max_requests: int) -> tuple[list[float], int, int, float]:
    """(latencies in s, requests, errors, elapsed s) of ``clients`` threads posting ``body`` to ``url``."""
    import httpx

    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s
    headers = {"content-type": "application/json"}

    def client() -> None:
        with httpx.Client(timeout=30) as session:
            while time.perf_counter() < stop_at:
                with lock:
                    if counts["requests"] >= max_requests:
                        return
                    counts["requests"] += 1
                started = time.perf_counter()
                ok = False
                try:
                    response = session.post(url, content=body, headers=headers)
                    ok = response.status_code == 200 and len(response.json()["ranked"]) > 0
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    counts["errors"] += 0 if ok else 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, counts["requests"], counts["errors"], time.perf_counter() - started


def mixed_load(base: str, users: list[list[tuple]], rank_body, clients: int, duration_s: float, seed: int = 0) -> dict:
    """``clients`` threads, client i alternating at random between POST /rank and POST /events for its
    own ``users[i]`` (``(user id, events in the store)``) for ``duration_s``; then every append checked."""
    import httpx

    latencies: dict[str, list[float]] = {"/rank": [], "/events": []}
    errors: list[str] = []
    appended: dict = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration_s

    def client(i: int) -> None:
        rng = np.random.default_rng(seed + i)
        with httpx.Client(base_url=base, timeout=30) as session:
            while time.perf_counter() < stop_at:
                user, _ = users[i][int(rng.integers(len(users[i])))]
                path = "/events" if rng.random() < 0.5 else "/rank"
                count = appended.get(user, 0)
                body = {"user_id": user, "events": [{"event_type": "click", "timestamp": REQUEST_TIME - 1_000_000 + count, "ad_id": int(rng.integers(0, 1_000_000)),
                                                     "category": CATEGORIES[int(rng.integers(50))], "price": 1.0}]} if path == "/events" else rank_body(user)
                started = time.perf_counter()
                try:
                    response = session.post(path, json=body)
                    ok = response.status_code == 200
                    detail = f"{path} {response.status_code} {response.text[:200]}"
                except httpx.HTTPError as error:
                    ok, detail = False, f"{path} {error!r}"
                with lock:
                    latencies[path].append(time.perf_counter() - started)
                    if not ok:
                        errors.append(detail)
                    elif path == "/events":
                        appended[user] = count + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    missing = []
    with httpx.Client(base_url=base, timeout=30) as session:  # every accepted append is there: one more append per user counts them
        for user, stored in (u for owned in users[:clients] for u in owned):
            n = appended.get(user, 0)
            check = {"event_type": "click", "timestamp": REQUEST_TIME - 1_000_000 + n, "ad_id": 1, "category": CATEGORIES[0], "price": 1.0}
            answer = session.post("/events", json={"user_id": user, "events": [check]}).json()
            if answer.get("events") != stored + n + 1:
                missing.append((user, stored + n + 1, answer))
        text = session.get("/metrics").text
    total = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("eventrec_events_appended_total"))
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed, "appended": sum(appended.values()), "missing": missing,
            "metrics_appended": total - len([u for owned in users[:clients] for u in owned])}


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    """A real redis-server on a free loopback port, no persistence, answering PING: (process, url)."""
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.time() + 10
    while time.time() < deadline and process.poll() is None:
        try:
            client.ping()
            return process, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def report_mixed(result: dict, clients: int, candidates: int, slots: int) -> None:
    """The mixed phase as a Markdown table, and its checks."""
    everything = result["latencies"]["/rank"] + result["latencies"]["/events"]
    print(f"\nmixed load: {clients} clients, {result['elapsed']:.0f} s, /rank with C={candidates}, {slots} scoring slot(s), torch {torch.__version__}")
    print("\n| endpoint | requests | p50 (ms) | p99 (ms) | requests/s |\n|---|---:|---:|---:|---:|")
    for name, samples in [*result["latencies"].items(), ("all", everything)]:
        p50, p99 = percentiles(samples) if samples else (float("nan"), float("nan"))
        print(f"| {name} | {len(samples)} | {p50:.1f} | {p99:.1f} | {len(samples) / result['elapsed']:.1f} |")
    print(f"\nerrors: {len(result['errors'])} {result['errors'][:5]}")
    print(f"events appended (accepted): {result['appended']}; counted by /metrics: {result['metrics_appended']:.0f}; "
          f"users with events missing afterwards: {len(result['missing'])} {result['missing'][:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1024])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per cell")
    parser.add_argument("--clients", type=int, nargs="+", default=[4], help="concurrent client threads (one load phase per value)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="upper bound on requests per cell")
    parser.add_argument("--core-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, core and server")
    parser.add_argument("--redis", action="store_true", help="serve with --redis-url on a local redis-server")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="scoring precision, core and server (eventrec serve --precision)")
    parser.add_argument("--payload", nargs="+", choices=["records", "columns"], default=["records"],
                        help="the form of the candidates in the /rank body (one load phase per value)")
    parser.add_argument("--mixed", action="store_true", help="the mixed /rank + /events load with its checks (see above), instead of the /rank cells")
    parser.add_argument("--scoring-slots", type=int, nargs="+", default=[1],
                        help="requests the server scores at the same time (eventrec serve --scoring-slots); one server per value, same load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.model.sequence_ranker import SequenceRanker
    from eventrec.serving import RankingService, model_version
    from eventrec.training.checkpoint import save_checkpoint
    from eventrec.training.store_match import STORE_KEY, store_record

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="eventrec-http-load-"))
    processes: list[subprocess.Popen] = []
    try:
        store = build_world(tmp / "world", args.events)
        spec, config = FeatureSpec.from_store(store), SequenceModelConfig()
        model = SequenceRanker(spec, config).eval()
        save_checkpoint(tmp / "ckpt", model, {"model_config": config.model_dump(mode="json"), "feature_spec": spec.to_json(), STORE_KEY: store_record(store)})
        service = RankingService.load(tmp / "ckpt", store, max_candidates=max(args.candidates), precision=args.precision)
        rng = np.random.default_rng(1)
        pools = {c: [{"ad_id": int(a), "category": CATEGORIES[k]} for a, k in zip(rng.integers(0, 1_000_000, c), rng.integers(0, 50, c))]
                 for c in args.candidates}
        context = {"placement": "feed"}
        core = {}
        for user, n in enumerate(args.events):
            for c in args.candidates:
                service.rank(user, pools[c], context, REQUEST_TIME)
                samples = []
                for _ in range(args.core_repeats):
                    started = time.perf_counter()
                    service.rank(user, pools[c], context, REQUEST_TIME, top_k=100)
                    samples.append(time.perf_counter() - started)
                core[(n, c)] = percentiles(samples)
                print(f"core N={n} C={c}: {core[(n, c)][0]:.1f} / {core[(n, c)][1]:.1f} ms", file=sys.stderr, flush=True)
        del service

        redis_url = None
        if args.redis:
            if shutil.which("redis-server") is None:
                raise SystemExit("--redis: redis-server not found")
            redis_process, redis_url = start_redis(tmp)
            processes.append(redis_process)
        import httpx

        forms = {"records": lambda pool: pool, "columns": lambda pool: {k: [r[k] for r in pool] for k in pool[0]}}
        bodies = {(user, c, form): json.dumps({"user_id": user, "candidates": forms[form](pools[c]), "context": context, "timestamp": REQUEST_TIME,
                                               "top_k": 100}).encode()
                  for user in range(len(args.events)) for c in args.candidates for form in args.payload}
        rows = []
        for slots in args.scoring_slots:  # one server per value, the same load against each
            port = free_port()
            command = [str(Path(sys.executable).with_name("eventrec")), "serve", "--model", str(tmp / "ckpt"), "--store", str(store.path),
                       "--port", str(port), "--max-candidates", str(max(args.candidates)), "--threads", str(args.threads),
                       "--precision", args.precision, "--scoring-slots", str(slots)] + (["--redis-url", redis_url] if redis_url else [])
            env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
            server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            processes.append(server)
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + "/health", server)
            if args.mixed:
                clients = max(args.clients)
                owned = [[(i, args.events[i])] if i < len(args.events) else [] for i in range(clients)]
                owned = [o + [(f"cold-{i}-{j}", 0) for j in range(3)] for i, o in enumerate(owned)]
                c = min(args.candidates)
                rank_body = lambda user: {"user_id": user, "candidates": pools[c], "context": context, "timestamp": REQUEST_TIME, "top_k": 100}
                result = mixed_load(base, owned, rank_body, clients, args.duration)
                report_mixed(result, clients, c, slots)
                failed = bool(result["errors"] or result["missing"] or result["metrics_appended"] != result["appended"])
                server.terminate()
                server.wait(10)
                if failed:
                    raise SystemExit(1)
                continue
            for user, n in enumerate(args.events):
                for c in args.candidates:
                    load(base + "/rank", bodies[(user, c, args.payload[0])], 1, 0.0, 3)  # warm: user state and candidate cache
                    for clients in args.clients:
                        for form in args.payload:
                            latencies, requests, errors, elapsed = load(base + "/rank", bodies[(user, c, form)], clients, args.duration, args.max_requests)
                            p50, p99 = percentiles(latencies)
                            rows.append((n, c, slots, clients, form, *core[(n, c)], p50, p99, requests / elapsed, requests, errors, elapsed))
                            print(f"http N={n} C={c} slots={slots} clients={clients} payload={form}: {p50:.1f} / {p99:.1f} ms, "
                                  f"{requests / elapsed:.1f} req/s, {requests} requests, {errors} errors", file=sys.stderr, flush=True)
            metrics = httpx.get(base + "/metrics", timeout=10).text
            served = [line for line in metrics.splitlines() if line.startswith("eventrec_requests_total")]
            print(f"server with {slots} scoring slot(s), its /metrics: " + "; ".join(served), file=sys.stderr)
            server.terminate()
            server.wait(10)
        if not rows:
            return
        print(f"\ntorch {torch.__version__}, {args.threads} torch thread(s) in core and server; {args.duration:.0f} s of load per row; "
              f"model {model_version(tmp / 'ckpt')}; precision {args.precision}{'; state in Redis' if args.redis else ''}")
        print("\n| N events | C candidates | scoring slots | clients | payload | core p50 / p99 (ms) | HTTP p50 / p99 (ms) | HTTP requests/s | requests | errors | seconds |")
        print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for n, c, slots, clients, form, c50, c99, h50, h99, rate, requests, errors, elapsed in rows:
            print(f"| {n} | {c} | {slots} | {clients} | {form} | {c50:.1f} / {c99:.1f} | {h50:.1f} / {h99:.1f} | {rate:.1f} | {requests} | {errors} | {elapsed:.0f} |")
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
