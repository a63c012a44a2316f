"""Content on MovieLens-100K: no content vs raw 384-d text vectors vs residual-VQ codes, overall and on
test impressions of cold items (items never seen in training).

    OMP_NUM_THREADS=1 .venv/bin/python bench/content_vq.py --seeds 3 --threads 1 --out bench/out/vq_ml100k
    OMP_NUM_THREADS=1 .venv/bin/python bench/content_vq.py --users 80 --seeds 1 --out /tmp/vq_tiny   # a tiny check
    .venv/bin/python bench/content_vq.py --levels 1 --codes 32 --variants codes --threads 2 --out bench/out/vq_32x1  # coarser codes
    .venv/bin/python bench/content_vq.py --seeds 3 --threads 2 --hold-out-items 0.2 --out bench/out/vq_holdout  # cold items in numbers

Steps, each skipped when its output exists (a killed run resumes):

1. ``eventrec.adapters.ml100k.prepare`` into ``OUT/logs`` (``--users N``: then only users 1..N's rows);
   with ``--hold-out-items F``, a drawn share ``F`` of the movies then loses its rows before the
   validation end (:func:`hold_out_items`);
2. ``content embed``: the adapter's ``item_text.parquet`` (title, year, genres) → 384-d MiniLM
   vectors ``item_text_minilm.parquet`` (needs the ``text`` extra);
3. ``content quantize``: ``--levels`` (default 3) × ``--codes`` (default 256) codes fitted on the
   training period's movies (schema ``ml100k``'s splits), every movie encoded, the codes attached to
   the events and impressions (fewer than 3 levels: the code schemas less the levels beyond, written
   to ``OUT/schemas``; use a separate ``--out`` per codebook shape);
4. seed by seed, per variant, one process after the other: ``bench/compare_models.py --dataset ml100k
   --schema S --models sequence --seeds k --workdir OUT/<variant>`` for k = 1..K (finished seeds are
   read back; ``OUT/<variant>/logs`` links to ``OUT/logs``), so that a stopped run leaves every variant
   with the same seeds (``--report-only`` tables them), with
   the schemas ``ml100k`` (none), ``ml100k_text`` (vectors: an ``embedding`` content table),
   ``ml100k_text_vq`` (codes: 3 categorical attributes shared by events and candidates) and
   ``ml100k_text_vq_codewords`` (the codes, and each code's codeword looked up from its level's
   codebook table: the events still carry 3 codes);
5. the table: test AUC / NE (mean ± std over seeds) overall, on cold items
   (:mod:`eventrec.evaluation.cold_items`) and on rare items (1–9 training impressions), the gains
   over no content, the share of the vectors' cold-item gain the codes keep, and bytes per event.
   Written to ``OUT/report.md`` and ``OUT/report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"none": "ml100k", "vectors": "ml100k_text", "codes": "ml100k_text_vq", "codewords": "ml100k_text_vq_codewords"}
RARE_BELOW = 10  # "rare": items with 1..RARE_BELOW-1 training impressions


def prepare_logs(logs: Path, users: int | None) -> None:
    """The adapter's files in ``logs`` (only users 1..``users`` with ``users``)."""
    import polars as pl

    from eventrec.adapters import prepare_dataset

    if (logs / "impressions.parquet").exists():
        return
    prepare_dataset("ml100k", logs)
    if users:
        for name in ("events.parquet", "impressions.parquet"):
            frame = pl.read_parquet(logs / name).filter(pl.col("user_id") <= users)
            tmp = logs / f".{name}.tmp"
            frame.write_parquet(tmp)
            os.replace(tmp, logs / name)


def hold_out_items(logs: Path, fraction: float, seed: int) -> dict:
    """Make a share of the movies cold by construction: ``fraction`` of the distinct movies (drawn by
    ``numpy.random.default_rng(seed)``) lose every event and impression before the schema's
    ``validation_end`` (resolved on the logs as they were, as the build resolves it), so that they
    reach neither the training period, nor the vocabularies and codebooks fitted on it, and their test
    impressions are cold items in numbers (the natural cold set of MovieLens-100K is 148 impressions).
    The build then resolves its own boundaries on the filtered logs: removing ``r`` rows before
    ``validation_end`` moves ``train_end`` later but never past it while ``r`` is under half the
    impressions (checked), so a held-out movie still never appears in training. Written once
    (``logs/hold_out.json`` records the draw; a second call with other settings is refused)."""
    import polars as pl

    from eventrec.content.training_items import training_items
    from eventrec.schema import builtin_schema_path, load_schema

    record_path = logs / "hold_out.json"
    drop = lambda record: pl.col("movie_id").is_in(record["held_out"]) & (pl.col("timestamp") < record["validation_end_before"])  # noqa: E731
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if (record["fraction"], record["seed"]) != (fraction, seed):
            raise SystemExit(f"{logs} holds out {record['fraction']} of the movies (seed {record['seed']}), not {fraction} (seed {seed}): use another --out")
    else:  # the draw and what it removes are recorded first; the filtering after it is idempotent (a killed run filters again)
        boundary = training_items(load_schema(builtin_schema_path("ml100k")), logs, "movie_id").validation_end
        movies = np.sort(pl.read_parquet(logs / "impressions.parquet", columns=["movie_id"])["movie_id"].unique().to_numpy())
        held = np.sort(np.random.default_rng(seed).choice(movies, size=round(fraction * len(movies)), replace=False))
        record = {"fraction": fraction, "seed": seed, "validation_end_before": int(boundary), "movies": int(len(held)),
                  "of_movies": int(len(movies)), "held_out": held.tolist()}
        record["rows_removed"] = {name: int(pl.read_parquet(logs / name).select(drop(record).sum()).item())
                                  for name in ("events.parquet", "impressions.parquet")}
        impressions = pl.read_parquet(logs / "impressions.parquet", columns=["movie_id"]).height
        if record["rows_removed"]["impressions.parquet"] >= impressions / 2:
            raise SystemExit(f"--hold-out-items {fraction}: {record['rows_removed']['impressions.parquet']:,} of {impressions:,} "
                             "impressions would go; hold out fewer movies")
        _write_json(record_path, record)
    for name in ("events.parquet", "impressions.parquet"):
        frame = pl.read_parquet(logs / name)
        if frame.select(drop(record).any()).item():
            tmp = logs / f".{name}.tmp"
            frame.filter(~drop(record)).write_parquet(tmp)
            os.replace(tmp, logs / name)
    return record


def _write_json(path: Path, data: dict) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def embed_and_quantize(logs: Path, threads: int, seed: int, levels: int = 3, codes: int = 256) -> dict:
    import torch

    from eventrec.content.quantize import quantize_table
    from eventrec.content.text_encoder import MiniLMEncoder, embed_table
    from eventrec.schema import builtin_schema_path, load_schema

    torch.set_num_threads(threads)
    vectors = logs / "item_text_minilm.parquet"
    if not vectors.exists():
        print(json.dumps(embed_table(logs / "item_text.parquet", "movie_id", "text", vectors, MiniLMEncoder(), batch_size=64)), flush=True)
    report_path = logs / "text_vq.json"
    if not all((logs / f).exists() for f in ("impressions_text_vq.parquet", f"text_vq{levels - 1}_codebook.parquet", report_path.name)):
        quantize_table(load_schema(builtin_schema_path("ml100k")), logs, vectors, "movie_id", "text", levels=levels, codes=codes, seed=seed,
                       attach=["events.parquet", "impressions.parquet"])
    quantized = json.loads(report_path.read_text())
    if (quantized["levels"], quantized["codes"]) != (levels, codes):
        raise SystemExit(f"{logs} holds codes of {quantized['levels']} x {quantized['codes']}, not {levels} x {codes}: use another --out")
    return quantized


def schema_path(out: Path, variant: str, levels: int) -> Path:
    """The variant's schema: the built-in one, or for the code variants with fewer than 3 levels that
    schema less the attributes and codebook tables of the levels beyond (written under ``OUT/schemas``)."""
    import yaml

    builtin = ROOT / "eventrec" / "schemas" / f"{VARIANTS[variant]}.yaml"
    if levels == 3 or variant in ("none", "vectors"):
        return builtin
    if not 1 <= levels < 3:
        raise SystemExit(f"--levels {levels}: the code schemas have 3 levels; 1 or 2 are derived from them")
    dropped = tuple(f"text_vq{level}" for level in range(levels, 3))
    spec = yaml.safe_load(builtin.read_text())
    keep = lambda attribute: not str(attribute["name"]).startswith(dropped)  # noqa: E731
    for stream in spec["streams"]:
        stream["attributes"] = [a for a in stream["attributes"] if keep(a)]
    spec["impressions"]["item_attributes"] = [a for a in spec["impressions"]["item_attributes"] if keep(a)]
    if "content_tables" in spec:
        spec["content_tables"] = [t for t in spec["content_tables"] if not str(t["name"]).startswith(dropped)]
    spec["name"] = f"{spec['name']}_{levels}levels"
    path = out / "schemas" / f"{spec['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_variant(out: Path, variant: str, seeds: int, args: argparse.Namespace) -> None:
    """compare_models for one schema and seeds 0..``seeds``-1, in a child process (one training at a
    time; the seeds it finished before are read back, not trained again)."""
    workdir = out / variant
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "logs").exists():
        (workdir / "logs").symlink_to(out / "logs", target_is_directory=True)
    command = [sys.executable, str(ROOT / "bench" / "compare_models.py"), "--dataset", "ml100k", "--models", "sequence",
               "--schema", str(schema_path(out, variant, args.levels)), "--seeds", str(seeds),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--workdir", str(workdir)]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def finished_seeds(out: Path, variants: list[str]) -> int:
    """How many seeds (0, 1, ...) every variant has finished."""
    done = [next(s for s in range(10**6) if not (out / v / "runs" / f"sequence_seed{s}" / "run.json").exists()) for v in variants]
    return min(done)


def measure(out: Path, seeds: int, variants: list[str]) -> dict:
    """Per variant and subset: AUC and NE per seed (seeds 0..``seeds``-1), and the subsets' sizes."""
    from eventrec.evaluation.cold_items import cold_item_mask, cold_item_metrics
    from eventrec.store.reader import EventStore

    result: dict = {}
    for variant in variants:
        store = EventStore.open(out / variant / "store")
        test = store.split_indices("test")
        train_counts: dict = {}
        for item in store.item_ids[store.split_indices("train")].tolist():
            train_counts[item] = train_counts.get(item, 0) + 1
        counts = np.array([train_counts.get(item, 0) for item in store.item_ids[test].tolist()])
        cold = cold_item_mask(store, test)
        subsets = {"all": np.ones(len(test), dtype=bool), "cold": cold, "rare": (counts > 0) & (counts < RARE_BELOW) & ~cold}
        rows: dict = {name: {"auc": [], "ne": []} for name in subsets}
        for seed in range(seeds):
            probs = np.load(out / variant / "runs" / f"sequence_seed{seed}" / "test_predictions.npy")
            for name, mask in subsets.items():
                metrics = cold_item_metrics(store, test, probs, mask)[store.label_names[0]]
                rows[name]["auc"].append(metrics["auc"])
                rows[name]["ne"].append(metrics["ne"])
        sizes = {name: {"impressions": int(mask.sum()), "items": int(len(np.unique(store.item_ids[test][mask])))} for name, mask in subsets.items()}
        stream = store.streams["rating"]
        code_names = [a for a in stream.attributes if "_vq" in a]
        result[variant] = {"metrics": rows, "sizes": sizes, "train_end": int(store.manifest["splits"]["train_end"]),
                           "code_bytes_in_memory": int(sum(np.asarray(stream.attributes[a]).dtype.itemsize for a in code_names))}
    return result


def report(measured: dict, quantized: dict, command: str) -> tuple[str, dict]:
    lines = [f"Command: `{command}`", "",
             "| variant | subset | impressions (items) | AUC | NE | ΔAUC vs none |", "|---|---|---|---|---|---|"]
    summary: dict = {}
    for subset in ("all", "cold", "rare"):
        base = _mean_std(measured["none"]["metrics"][subset]["auc"])[0]
        for variant in measured:
            m = measured[variant]["metrics"][subset]
            auc, ne = _mean_std(m["auc"]), _mean_std(m["ne"])
            size = measured[variant]["sizes"][subset]
            summary.setdefault(variant, {})[subset] = {"auc": auc, "ne": ne, **size}
            delta = "" if variant == "none" else f"{auc[0] - base:+.4f}"
            lines.append(f"| {variant} | {subset} | {size['impressions']:,} ({size['items']:,}) | {auc[0]:.4f} ± {auc[1]:.4f} | "
                         f"{ne[0]:.4f} ± {ne[1]:.4f} | {delta} |")
    cold = {v: summary[v]["cold"]["auc"][0] for v in measured}
    gains = {v: cold[v] - cold["none"] for v in measured if v != "none"}
    vector_gain = gains["vectors"]
    kept = {v: gains[v] / vector_gain if vector_gain > 0 else None for v in gains if v != "vectors"}
    vector_bytes = quantized["bytes_per_item"]["float32_vector"]
    code_bytes, in_memory = quantized["bytes_per_item"]["codes"], measured["codes"]["code_bytes_in_memory"]
    lines += ["",
              "Cold-item gain over no content (AUC): " + ", ".join(f"{v} {g:+.4f}" for v, g in gains.items())
              + ("; share of the vectors' gain kept: " + ", ".join(f"{v} {k:.0%}" for v, k in kept.items()) + "."
                 if vector_gain > 0 else " (the vectors show no gain: no share to keep)."),
              f"Bytes per event for the item's content: float32 vector {vector_bytes} B; {quantized['levels']} codes of {quantized['codes']}: "
              f"{code_bytes} B at one byte each ({vector_bytes / code_bytes:.0f}x smaller), {in_memory} B as the store holds them "
              f"in memory ({vector_bytes / max(in_memory, 1):.0f}x smaller); codewords adds the shared codebooks, "
              f"{quantized['levels']} x {quantized['codes']} x {vector_bytes // 4} float32 ({quantized['levels'] * quantized['codes'] * vector_bytes:,} B), none per event.",
              f"Codebooks fitted on {quantized['fitted_items']} training-period movies (before {quantized['train_end']}); "
              f"{quantized['items_not_in_training']} movies only encoded. Reconstruction MSE after 0..{quantized['levels']} levels: "
              f"training movies {', '.join(f'{e:.3f}' for e in quantized['mse_by_levels']['training_items'])}; "
              f"others {', '.join(f'{e:.3f}' for e in quantized['mse_by_levels'].get('other_items', []))}."]
    return "\n".join(lines), {"summary": summary, "cold_gain": {**gains, "kept": kept},
                              "bytes_per_event": {"float32_vector": vector_bytes, "codes": code_bytes, "codes_in_memory": in_memory},
                              "per_seed": measured, "quantize": quantized}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "vq_ml100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--users", type=int, default=None, help="keep users 1..N only (a tiny check)")
    parser.add_argument("--vq-seed", type=int, default=0)
    parser.add_argument("--levels", type=int, default=3, help="residual levels of the codebooks (1..3)")
    parser.add_argument("--codes", type=int, default=256, help="codes per level")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the variants to train (none, vectors and codes always)")
    parser.add_argument("--hold-out-items", type=float, default=0.0,
                        help="share of the movies whose rows before the validation end are removed: cold test items in numbers (0: none)")
    parser.add_argument("--hold-out-seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the seeds every variant has finished")
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out.resolve()
    variants = [v for v in VARIANTS if v in {"none", "vectors", "codes", *args.variants}]
    prepare_logs(out / "logs", args.users)
    held_out = hold_out_items(out / "logs", args.hold_out_items, args.hold_out_seed) if args.hold_out_items else None
    quantized = embed_and_quantize(out / "logs", args.threads, args.vq_seed, args.levels, args.codes)
    if not args.report_only:
        for seeds in range(1, args.seeds + 1):  # seed by seed across the variants: a stopped run leaves comparable seeds
            for variant in variants:
                run_variant(out, variant, seeds, args)
    seeds = min(args.seeds, finished_seeds(out, variants))
    if seeds == 0:
        raise SystemExit(f"no variant-complete seed under {out} yet")
    measured = measure(out, seeds, variants)
    ends = {v: m["train_end"] for v, m in measured.items()}
    if len(set(ends.values()) | {quantized["train_end"]}) != 1:
        raise SystemExit(f"train_end differs between the stores {ends} and the codebooks' fit {quantized['train_end']}")
    command = "OMP_NUM_THREADS=1 python bench/content_vq.py " + " ".join(sys.argv[1:])
    table, data = report(measured, quantized, command)
    if held_out:
        data["hold_out"] = {k: v for k, v in held_out.items() if k != "held_out"}
        table += (f"\nHeld out: {held_out['movies']:,} of {held_out['of_movies']:,} movies (seed {held_out['seed']}) lost their "
                  f"{held_out['rows_removed']['impressions.parquet']:,} impressions and {held_out['rows_removed']['events.parquet']:,} events "
                  f"before {held_out['validation_end_before']} (the validation end of the full logs); their later impressions are "
                  f"among the cold ones.")
    table = f"Seeds: {seeds} (mean ± std over seeds 0..{seeds - 1}).\n\n{table}"
    (out / "report.md").write_text(f"# ml100k: no content vs text vectors vs VQ codes\n\n{table}\n")
    (out / "report.json").write_text(json.dumps(data, indent=1, default=float) + "\n")
    print(table)
    print(f"report {out / 'report.md'}; {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
