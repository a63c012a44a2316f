"""Memory against quality for fp32 / lower precisions of the store's vectors, the embedding tables at
inference and the cached user states (issue 23 item 2), in one run on the synthetic world.

    .venv/bin/python bench/quantization.py --users 50000 [--checkpoint RUN/best] [--workdir bench/out/quantization]
    .venv/bin/python bench/quantization.py --latency-only [--threads 2]     # step 6 alone

1. The synthetic world (``--users``), its store built four times: the ad content table
   (``content_tables.ad_content.precision``) at float32, float16, int8 and int4 (per-row scale).
2. The default sequence model trained on the float32 store (one seed, like ``bench/compare_models.py``:
   1 epoch, validation 4 times per epoch, patience 2), or the ``--checkpoint`` given; a finished run in the
   work directory is reused.
3. Test-split predictions of that one model, each with one thing at a lower precision (and all at once):
   the store's vectors (the float16 / int8 store, read by the same checkpoint), the embedding tables
   (``quantize_tables``: fp16, int8 row-wise) and the user states (``state_precision``: the user side's
   ``encoded``/``keys``/``values``/``match_keys`` kept at bf16 / int8 and read back, what serving does with a cached
   state). Test AUC per task, its change against fp32, and the largest / mean |score difference| to fp32.
4. Serving on ``--requests`` sampled test requests of the trained model: ``RankingService`` with each
   ``state_precision`` (and int8 states with an int4 KV cache, and with int8 tables) against the fp32
   service: max |dp| with the user's state computed per request and grown by appends (served first
   without the last ``--grown-by`` events: the KV cache at its precision is what the appended events
   read), and the cached bytes per user.
5. The memory table: bytes per content-vector row (the synthetic world looks its vectors up by ad id, so
   an event stores no vector; stored with each event, a vector would cost its row's bytes per event),
   per embedding-table row (E = ``attribute_dim``) and in all, per cached user (mean over the sampled
   requests) and per cached position.
6. Serving latency with int8 states against fp32 (``bench/serving_latency.py``'s world: users of exactly
   N click events, random default-size model, random candidates): the cached-user request (the state is
   dequantized per request) and the recomputed-user request (encoded, then compressed), interleaved;
   ``--latency-events 0`` skips it.

Goal (issue 23): >= 4x less memory for states and content vectors with <= 0.001 AUC loss and serving
scores within 1e-2 of fp32. Prints Markdown tables and a verdict per goal; writes them to
``WORKDIR/report.md``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STORE_PRECISIONS = ("float32", "float16", "int8", "int4")
TABLE_PRECISIONS = ("fp32", "fp16", "int8")
STATE_PRECISIONS = ("fp32", "bf16", "int8")


class StatesAt(nn.Module):
    """``model`` whose user side is kept at ``precision`` and read back before the candidate side,
    as a cached serving state is (:mod:`eventrec.serving.state_precision`)."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, batch) -> torch.Tensor:
        from eventrec.serving.state_precision import compress, decompress

        side = self.model.user_side(batch)
        kept = replace(side, **{name: decompress(compress(getattr(side, name), self.precision)) for name in ("encoded", "keys", "values", "match_keys")})
        return self.model.candidate_side(kept, batch.item, batch.context, batch.history_index)


def build_stores(logs: Path, workdir: Path) -> dict:
    from eventrec.schema import builtin_schema_path, parse_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore

    stores = {}
    for precision in STORE_PRECISIONS:
        data = yaml.safe_load(builtin_schema_path("synthetic").read_text())
        for table in data.get("content_tables", []):
            table["precision"] = precision
        for stream in data["streams"]:  # per-event vector columns too, if the schema has any
            for attribute in stream["attributes"]:
                if attribute["kind"] == "embedding" and "table" not in attribute:
                    attribute["precision"] = precision
        directory = workdir / f"store_{precision}"
        if not (directory / "manifest.json").exists():
            started = time.perf_counter()
            build_store(parse_schema(data, f"synthetic ({precision} vectors)"), logs, directory)
            print(f"built {directory.name} in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        stores[precision] = EventStore.open(directory)
    return stores


def trained_checkpoint(store, workdir: Path, args) -> Path:
    if args.checkpoint is not None:
        return args.checkpoint
    from eventrec.training.factory import default_config
    from eventrec.training.trainer import TrainConfig, train

    run = workdir / "run"
    if not (run / "best" / "model.safetensors").exists() or not (run / "done").exists():
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, validations_per_epoch=4, patience=2, seed=0)
        started = time.perf_counter()
        train(store, default_config("sequence"), config, run, show_progress=False)
        (run / "done").write_text("trained\n")
        print(f"trained the default sequence model in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return run / "best"


def quality(model: nn.Module, store, batch_fn, test: np.ndarray, batch_size: int) -> tuple[np.ndarray, dict]:
    from eventrec.evaluation.predict import metrics_by_task, predict

    probs = predict(model, store, test, batch_fn, batch_size)
    return probs, metrics_by_task(store, test, probs)


def quality_rows(stores: dict, checkpoint: Path, args) -> list[dict]:
    """One row per variant: AUC per task and |dp| against the fp32 predictions of the same model."""
    from eventrec.model.quantized_tables import quantize_tables
    from eventrec.training.factory import batch_function, load_trained_model

    base_store = stores["float32"]
    test = base_store.split_indices("test")
    for precision, store in stores.items():  # the same examples in the same order
        assert np.array_equal(store.split_indices("test"), test) and np.array_equal(store.item_ids[test], base_store.item_ids[test]), precision
    model, config, _, _ = load_trained_model(checkpoint, base_store)
    batch_fn = batch_function(config)
    variants: list[tuple[str, str, nn.Module, object]] = [("fp32", "-", model, base_store)]
    for precision in STORE_PRECISIONS[1:]:
        variants.append(("store vectors", precision, load_trained_model(checkpoint, stores[precision])[0], stores[precision]))
    for precision in TABLE_PRECISIONS[1:]:
        variants.append(("embedding tables", precision, quantize_tables(copy.deepcopy(model), precision), base_store))
    for precision in STATE_PRECISIONS[1:]:
        variants.append(("user states", precision, StatesAt(model, precision), base_store))
    all_int8 = StatesAt(quantize_tables(load_trained_model(checkpoint, stores["int8"])[0], "int8"), "int8")
    variants.append(("all three", "int8", all_int8, stores["int8"]))
    rows, reference = [], None
    for what, precision, variant, store in variants:
        started = time.perf_counter()
        probs, metrics = quality(variant.eval(), store, batch_fn, test, args.eval_batch_size)
        if reference is None:
            reference = (probs, metrics)
        difference = np.abs(probs - reference[0])
        row = {"what": what, "precision": precision, "metrics": metrics, "max_dp": float(difference.max()), "mean_dp": float(difference.mean())}
        rows.append(row)
        aucs = ", ".join(f"{task} {m['auc']:.4f}" for task, m in metrics.items())
        print(f"{what} {precision}: AUC {aucs}; max |dp| {row['max_dp']:.1e} ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return rows


def sampled_requests(logs: Path, store, count: int, seed: int = 0) -> list[pl.DataFrame]:
    """``count`` test requests (seeded sample), each its raw impressions frame."""
    imp = store.schema.impressions
    test_start = int(store.manifest["splits"]["validation_end"])
    frame = pl.read_parquet(logs / imp.path).filter(pl.col(imp.timestamp_column) >= test_start)
    ids = np.unique(frame[imp.request_column].to_numpy())
    chosen = np.random.default_rng(seed).choice(ids, size=min(count, len(ids)), replace=False)
    picked = frame.filter(pl.col(imp.request_column).is_in(chosen.tolist())).sort(imp.request_column, imp.timestamp_column)
    return list(picked.partition_by(imp.request_column, maintain_order=True))


def earlier_time(events, timestamp: int, grown_by: int) -> int | None:
    """A request time before ``timestamp`` whose window lacks the last ``grown_by`` events before
    ``timestamp`` (None when the user has no more than ``grown_by`` of them)."""
    times = np.sort(np.concatenate([d.timestamps for d in events.streams.values()] + [np.zeros(0, dtype=np.int64)]))
    times = times[times < timestamp]
    return int(times[-grown_by]) if len(times) > grown_by else None


SERVING_SETTINGS = (("fp32", "fp32", "fp32"), ("fp32", "bf16", "bf16"), ("fp32", "int8", "int8"), ("fp32", "int8", "int4"), ("int8", "int8", "int4"))


def serving_rows(store, checkpoint: Path, logs: Path, args) -> tuple[list[dict], dict]:
    """Max |dp| of each serving precision (tables, states, KV cache) against the fp32 service over
    sampled test requests, the user's state computed per request and, separately, grown by appends:
    served first at an earlier time whose window lacks the last ``--grown-by`` events, then at the
    request's (the state grown through the KV cache, where the window starts at the user's first
    event); and the cached bytes per user."""
    from eventrec.serving import RankingService

    requests = sampled_requests(logs, store, args.requests)
    imp = store.schema.impressions
    settings = SERVING_SETTINGS
    services = {s: RankingService.load(checkpoint, store, table_precision=s[0], state_precision=s[1], kv_cache_precision=s[2], max_candidates=100_000)
                for s in settings}
    scores: dict[tuple, list[np.ndarray]] = {s: [] for s in settings}
    grown: dict[tuple, list[np.ndarray]] = {s: [] for s in settings}
    states: dict[tuple, list[tuple[int, int]]] = {s: [] for s in settings}
    statuses: dict[str, int] = {}
    grown_labels: list[np.ndarray] = []
    for frame in requests:
        first = frame.row(0, named=True)
        user, timestamp = first[imp.user_column], first[imp.timestamp_column]
        context = {c: first[c] for c in services[settings[0]].records.context_columns}
        earlier = earlier_time(services[settings[0]].user_events(user), timestamp, args.grown_by)
        if earlier is not None:
            grown_labels.append(frame[imp.all_labels[0]].to_numpy().astype(np.float64))
        for setting, service in services.items():
            key = (service._user_key(user), service.state_version)
            result = service.rank(user, frame, context, timestamp)
            scores[setting].append(result.scores)
            state = service.users.get(key)
            if state is not None:
                states[setting].append((state.nbytes, state.positions))
            service.users.pop(key)  # next request of this user: computed again
            if earlier is not None:
                service.rank(user, frame, context, earlier)
                result = service.rank(user, frame, context, timestamp)
                grown[setting].append(result.scores)
                if setting == settings[0]:
                    statuses[result.user_state] = statuses.get(result.user_state, 0) + 1
                service.users.pop(key)
    reference, grown_reference = np.concatenate(scores[settings[0]]), np.concatenate(grown[settings[0]] or [np.zeros((0, 1))])
    labels = pl.concat(requests)[imp.all_labels[0]].to_numpy().astype(np.float64)
    from eventrec.evaluation.metrics import auc

    grown_known_labels = np.concatenate(grown_labels or [np.zeros(0)])
    grown_known = ~np.isnan(grown_known_labels)
    rows = []
    for setting in settings:
        got = np.concatenate(scores[setting])
        after = np.concatenate(grown[setting] or [np.zeros((0, 1))])
        known = ~np.isnan(labels)
        sizes = np.array(states[setting] or [(0, 1)], dtype=np.float64)
        rows.append({"tables": setting[0], "states": setting[1], "kv": setting[2], "max_dp": float(np.abs(got - reference).max()),
                     "mean_dp": float(np.abs(got - reference).mean()), "auc": auc(labels[known], got[known, 0]),
                     "grown_max_dp": float(np.abs(after - grown_reference).max()) if len(after) else float("nan"),
                     "grown_auc": auc(grown_known_labels[grown_known], after[grown_known, 0]) if len(after) else float("nan"),
                     "bytes_per_user": float(sizes[:, 0].mean()), "bytes_per_position": float(sizes[:, 0].sum() / sizes[:, 1].sum())})
    info = {"requests": len(requests), "impressions": int(len(reference)), "users": len({f.row(0, named=True)[imp.user_column] for f in requests}),
            "grown_requests": len(grown[settings[0]]), "grown_statuses": statuses}
    return rows, info


def memory_rows(stores: dict, checkpoint: Path) -> list[tuple[str, str, float, float]]:
    """(part, precision, bytes per row, MiB in all) for the content vectors and the embedding tables."""
    from eventrec.model.quantized_tables import quantize_tables, table_bytes
    from eventrec.training.factory import load_trained_model

    out = []
    for precision, store in stores.items():
        rows = sum(len(m) for m in store.content.values())
        held = sum(m.nbytes for m in store.content.values())
        per_event = [(name, a) for name, d in store.streams.items() for a, c in d.attributes.items() if getattr(c, "ndim", 1) == 2]
        out.append(("content vectors (per table row)", precision, held / max(rows, 1), held / 2**20))
        for stream, attribute in per_event:
            column = store.streams[stream].attributes[attribute]
            out.append((f"{stream}.{attribute} (per event)", precision, column.nbytes / max(len(column), 1), column.nbytes / 2**20))
    model = load_trained_model(checkpoint, stores["float32"])[0]
    for precision in TABLE_PRECISIONS:
        tables = table_bytes(quantize_tables(copy.deepcopy(model), precision))
        rows, held = sum(r for r, _ in tables.values()), sum(b for _, b in tables.values())
        out.append(("embedding tables (per row)", precision, held / rows, held / 2**20))
    return out


def latency_rows(args) -> list[dict]:
    """Cached-user and recomputed-user request latency (p50/p99 ms) with fp32 and int8 states."""
    sys.path.insert(0, str(ROOT / "bench"))
    from serving_latency import CATEGORIES, REQUEST_TIME, build_world, percentiles, timed

    from eventrec.model.config import SequenceModelConfig
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.model.sequence_ranker import SequenceRanker
    from eventrec.serving import RankingService

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_world(Path(tmp) / "world", args.latency_events)
    model = SequenceRanker(FeatureSpec.from_store(store), SequenceModelConfig()).eval()
    settings = {"fp32": {}, "int8 states": {"state_precision": "int8"}, "int8 states + tables": {"state_precision": "int8", "table_precision": "int8"}}
    services = {name: RankingService(model, store, "bench", max_candidates=max(args.latency_candidates), **options) for name, options in settings.items()}
    rng = np.random.default_rng(1)
    context = {"placement": "feed"}
    rows = []
    for user, n in enumerate(args.latency_events):
        for c in args.latency_candidates:
            pool = pl.DataFrame({"ad_id": rng.integers(0, 1_000_000, c), "category": [CATEGORIES[i] for i in rng.integers(0, 50, c)]})
            samples = {(name, kind): [] for name in services for kind in ("cached", "recomputed")}
            results = {name: service.rank(user, pool, context, REQUEST_TIME) for name, service in services.items()}  # warm
            for _ in range(args.repeats):  # interleaved: every service sees the same machine load
                for name, service in services.items():
                    elapsed, result = timed(lambda: service.rank(user, pool, context, REQUEST_TIME))
                    assert result.user_state == "hit"
                    samples[(name, "cached")].append(elapsed)
                for name, service in services.items():
                    service.users.pop((str(user), service.state_version))
                    elapsed, _ = timed(lambda: service.rank(user, pool, context, REQUEST_TIME))
                    samples[(name, "recomputed")].append(elapsed)
            row = {"n": n, "c": c}
            for name, service in services.items():
                row[name] = {kind: percentiles(samples[(name, kind)]) for kind in ("cached", "recomputed")}
                row[name]["max_dp"] = float(np.abs(results[name].scores - results["fp32"].scores).max())
                row[name]["state_bytes"] = service.users.get((str(user), service.state_version)).nbytes
            rows.append(row)
            print(f"latency N={n} C={c}: " + "; ".join(f"{name} cached {row[name]['cached'][0]:.1f} ms, recomputed {row[name]['recomputed'][0]:.1f} ms"
                                                      for name in services), file=sys.stderr, flush=True)
    return rows


def latency_table(latency: list[dict], args) -> list[str]:
    """The serving latency rows (:func:`latency_rows`) as a Markdown table with its heading."""
    names = [k for k in latency[0] if k not in ("n", "c")]
    lines = [f"## Serving latency (p50 / p99 ms; random default-size model, {args.repeats} requests per cell, {torch.get_num_threads()} threads)", "",
             "| N events | C candidates | " + " | ".join(f"{name}: cached user | {name}: user recomputed" for name in names) +
             " | " + " | ".join(f"{name}: state KiB, max abs dp" for name in names[1:]) + " |",
             "|---:|---:|" + "---:|" * (3 * len(names) - 1)]
    for row in latency:
        cells = " | ".join(f"{row[n]['cached'][0]:.1f} / {row[n]['cached'][1]:.1f} | {row[n]['recomputed'][0]:.1f} / {row[n]['recomputed'][1]:.1f}" for n in names)
        extra = " | ".join(f"{row[n]['state_bytes'] / 1024:.0f} (fp32 {row['fp32']['state_bytes'] / 1024:.0f}), {row[n]['max_dp']:.1e}" for n in names[1:])
        lines.append(f"| {row['n']} | {row['c']} | {cells} | {extra} |")
    return lines


def report(quality: list[dict], serving: list[dict], serving_info: dict, memory: list, latency: list[dict], args) -> str:
    tasks = list(quality[0]["metrics"])
    base = quality[0]["metrics"]
    lines = [f"## Quality: test split, one model (the default sequence model trained on the float32 store), {args.users:,} users", "",
             "| what | precision | " + " | ".join(f"{t} AUC (Δ vs fp32)" for t in tasks) + " | max abs dp | mean abs dp |",
             "|---|---|" + "---:|" * (len(tasks) + 2)]
    for row in quality:
        cells = " | ".join(f"{row['metrics'][t]['auc']:.4f} ({row['metrics'][t]['auc'] - base[t]['auc']:+.4f})" for t in tasks)
        lines.append(f"| {row['what']} | {row['precision']} | {cells} | {row['max_dp']:.1e} | {row['mean_dp']:.1e} |")
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(serving_info["grown_statuses"].items()))
    lines += ["", f"## Serving: {serving_info['requests']} sampled test requests ({serving_info['impressions']:,} impressions, "
              f"{serving_info['users']} users), each user's state computed per request; \"grown\": {serving_info['grown_requests']} of them "
              f"served first without the last {args.grown_by} events, then at their time (fp32 states: {statuses})", "",
              f"| tables | states | KV cache | max abs dp vs fp32 | mean abs dp | {tasks[0]} AUC on these | grown: max abs dp vs fp32 grown | "
              f"grown: {tasks[0]} AUC | bytes per cached user | bytes per cached position |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in serving:
        lines.append(f"| {row['tables']} | {row['states']} | {row['kv']} | {row['max_dp']:.1e} | {row['mean_dp']:.1e} | {row['auc']:.4f} | "
                     f"{row['grown_max_dp']:.1e} | {row['grown_auc']:.4f} | {row['bytes_per_user']:,.0f} | {row['bytes_per_position']:,.0f} |")
    lines += ["", "## Memory", "", "| part | precision | bytes per row | MiB in all |", "|---|---|---:|---:|"]
    lines += [f"| {part} | {precision} | {per_row:.1f} | {mib:.2f} |" for part, precision, per_row, mib in memory]
    states = {(r["states"] if r["kv"] == r["states"] else f"{r['states']}, KV cache {r['kv']}"): r["bytes_per_user"] for r in serving if r["tables"] == "fp32"}
    lines.append(f"| cached user state (per user) | {' / '.join(states)} | {' / '.join(f'{b:,.0f}' for b in states.values())} | |")
    if latency:
        lines += ["", *latency_table(latency, args)]
    lines += ["", "## Goal (issue 23): >= 4x less memory for states and content vectors, <= 0.001 AUC loss, serving scores within 1e-2", ""]
    content = {p: r for part, p, r, _ in memory if part.startswith("content vectors")}
    for precision in STORE_PRECISIONS[1:]:
        ratio = content["float32"] / content[precision]
        q = next(r for r in quality if r["what"] == "store vectors" and r["precision"] == precision)
        loss = base[tasks[0]]["auc"] - q["metrics"][tasks[0]]["auc"]
        lines.append(f"* content vectors {precision}: {ratio:.2f}x less memory per row, {tasks[0]} AUC change {-loss:+.4f}, max abs dp {q['max_dp']:.1e}: "
                     f"{'met' if ratio >= 4 and loss <= 0.001 and q['max_dp'] <= 1e-2 else 'not met'}")
    for name, bytes_per_user in states.items():
        if name == "fp32":
            continue
        ratio = states["fp32"] / bytes_per_user
        precision = name.split(",")[0]
        q = next(r for r in quality if r["what"] == "user states" and r["precision"] == precision)
        s = next(r for r in serving if r["tables"] == "fp32" and (r["states"] if r["kv"] == r["states"] else f"{r['states']}, KV cache {r['kv']}") == name)
        loss = base[tasks[0]]["auc"] - q["metrics"][tasks[0]]["auc"]
        worst = max(s["max_dp"], s["grown_max_dp"] if s["grown_max_dp"] == s["grown_max_dp"] else 0.0)
        lines.append(f"* user states {name}: {ratio:.2f}x less memory per cached user, {tasks[0]} AUC change {-loss:+.4f}, serving max abs dp "
                     f"{s['max_dp']:.1e} (grown by appends {s['grown_max_dp']:.1e}): {'met' if ratio >= 4 and loss <= 0.001 and worst <= 1e-2 else 'not met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50_000, help="synthetic world size")
    parser.add_argument("--workdir", type=Path, default=None, help="default bench/out/quantization_<users>")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained sequence model of the float32 store (default: train one)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--eval-batch-size", type=int, default=2048)
    parser.add_argument("--requests", type=int, default=500, help="sampled test requests served per precision")
    parser.add_argument("--grown-by", type=int, default=16, help="events each sampled request's state is grown by (through the KV cache)")
    parser.add_argument("--latency-events", type=int, nargs="+", default=[256, 1024, 4096], help="history lengths N (0: no latency table)")
    parser.add_argument("--latency-candidates", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=15, help="requests per latency cell and service")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-only", action="store_true", help="only step 6, the serving latency table (no world, no training)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.latency_only:
        print("\n".join(latency_table(latency_rows(args), args)) + f"\n\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
        return

    from eventrec.synthetic import generate_world

    started = time.perf_counter()
    workdir = args.workdir or ROOT / "bench" / "out" / f"quantization_{args.users}"
    logs = workdir / "logs"
    if not (logs / "world.json").exists():
        generate_world(logs, num_users=args.users, seed=0)
    stores = build_stores(logs, workdir)
    checkpoint = trained_checkpoint(stores["float32"], workdir, args)
    quality_table = quality_rows(stores, checkpoint, args)
    serving, serving_info = serving_rows(stores["float32"], checkpoint, logs, args)
    memory = memory_rows(stores, checkpoint)
    latency = latency_rows(args) if args.latency_events != [0] else []
    text = report(quality_table, serving, serving_info, memory, latency, args)
    text += f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; {time.perf_counter() - started:.0f}s in all\n"
    (workdir / "report.md").write_text(f"# Quantization: memory vs quality (bench/quantization.py --users {args.users})\n\n{text}")
    print(text)
    print(f"report {workdir / 'report.md'}")


if __name__ == "__main__":
    main()
