"""trivago clicks: eventrec's variants against FuxiCTR's DNN / DIN / TransAct and two rules.

    .venv/bin/python -m bench.quality.run bench/quality/variants/trivago             # the main table
    .venv/bin/python -m bench.quality.run bench/quality/variants/trivago-ablations   # the ablations
    bash bench/quality/setup_peers.sh                                                 # once: .venv-peers (FuxiCTR)

Protocol: one example per (clickout, impressed hotel), label = clicked; the store's 80 / 10 / 10
time split over the clickouts' impressions (validation for early stopping and Platt scaling, test
touched once). Every model is scored on the same test rows; all metrics are computed here from each
model's saved test predictions, by the same code (AUC, gAUC over clickouts, NE, logloss,
calibration, MRR of the clicked hotel within its list). Mean ± std over seeds.

Runs live in ``bench/out/quality/trivago/runs/<run id>_seed<k>/`` (``<run id>.json``: the resolved
variant); finished runs are reused.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from bench.quality.ranking_metrics import click_metrics
from bench.quality.report import KEPT_NOTE, gain_verdict, markdown_table, summary_values, with_kept_rows
from bench.quality.variant import TrivagoVariant

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench" / "out" / "quality" / "trivago"
RUNS = WORK / "runs"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
METRICS = ["auc", "gauc", "ne", "logloss", "calibration", "mrr"]
HEADER = {"auc": "AUC", "gauc": "gAUC (clickouts)", "ne": "NE", "logloss": "logloss", "calibration": "calibration", "mrr": "MRR", "seconds": "train s"}
# FuxiCTR's pip package (2.3.10) has no BST (nor the classic DNN / DIN): DIN and TransAct come from its
# model_zoo.LongCTR, DNN is built from its layers (bench/quality/peers/README.md)
PEER_NAMES = {"dnn": "FuxiCTR DNN (mean-pooled history)", "din": "FuxiCTR DIN", "transact": "FuxiCTR TransAct (in place of BST)"}
BEST_RULE = "rule: recency, ties by display position"


def prepare_store():
    """The trivago store and the adapter's logs (built once under :data:`WORK`)."""
    from eventrec.adapters import ADAPTERS, default_data_dir
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore

    logs, store_dir = WORK / "logs", WORK / "store"
    if not (logs / "impressions.parquet").exists():
        ADAPTERS["trivago"][0](default_data_dir() / "trivago", logs)
    if not (store_dir / "manifest.json").exists():
        build_store(load_schema(builtin_schema_path("trivago")), logs, store_dir)
    return EventStore.open(store_dir), logs


def validation_mrr(store, requests: np.ndarray):
    """``run_comparison``'s ``validation_score``: per model config, a function giving the MRR of the
    clicked hotel within each validation clickout (``requests``: request id per store example, all
    splits), computed from the model's validation predictions; the test split is never read."""
    from eventrec.evaluation.predict import predict
    from eventrec.training.factory import batch_function

    validation = store.split_indices("validation")
    labels, groups = store.labels[validation, 0].astype(np.float64), requests[validation]

    def for_config(config):
        batch_fn = batch_function(config)

        def score(model) -> dict[str, float]:
            mrr = click_metrics(labels, predict(model, store, validation, batch_fn)[:, 0].astype(np.float64), groups)["mrr"]
            return {"score": mrr, "mrr": mrr}

        return score

    return for_config


def prepare(variant: TrivagoVariant) -> None:
    """Everything the seeds of ``variant`` share (the store), built before any worker starts."""
    prepare_store()


def train_seed(variant: TrivagoVariant, seed: int) -> None:
    """Train (or read back) one seed of ``variant``: ``runs/<run id>_seed<seed>/test_predictions.npy``."""
    from bench.quality.trivago_data import examples_in_store_order
    from eventrec.evaluation.experiment import run_comparison

    store, logs = prepare_store()
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{variant.run_id}.json").write_text(json.dumps(variant.resolved(), indent=1) + "\n")
    select = validation_mrr(store, examples_in_store_order(store, logs)["request_id"].to_numpy()) if variant.protocol.select == "mrr" else None
    run_comparison(store, {variant.run_id: variant.model}, variant.train_config(seed), [seed], RUNS, show_progress=False, validation_score=select)


def finished(variant: TrivagoVariant, seeds: int) -> list[tuple[np.ndarray, float]]:
    """``[(test probabilities [n_test], train seconds)]`` of the finished seeds among the first ``seeds``."""
    out = []
    for seed in range(seeds):
        run = RUNS / f"{variant.run_id}_seed{seed}"
        if (run / "run.json").exists():
            out.append((np.load(run / "test_predictions.npy")[:, 0], json.loads((run / "run.json").read_text())["seconds"]))
    return out


def run_peers(data_dir: Path, seeds: list[int]) -> dict[str, list[tuple[np.ndarray, float]]]:
    """FuxiCTR's DNN / DIN / TransAct in ``.venv-peers`` (resumable); empty if that venv is absent."""
    if not PEERS_PYTHON.exists():
        print(f"peers skipped: {PEERS_PYTHON} not found (run bench/quality/setup_peers.sh)")
        return {}
    out_dir = WORK / "fuxictr"
    command = [str(PEERS_PYTHON), str(ROOT / "bench/quality/peers/fuxictr_trivago.py"), "--data", str(data_dir), "--out", str(out_dir),
               "--models", *PEER_NAMES, "--seeds", *map(str, seeds)]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    found: dict[str, list[tuple[np.ndarray, float]]] = {}
    for key, name in PEER_NAMES.items():
        for seed in seeds:
            run = out_dir / f"{key}_seed{seed}"
            if (run / "test_predictions.npy").exists():
                seconds = json.loads((run / "run.json").read_text()).get("train_seconds", float("nan"))
                found.setdefault(name, []).append((np.load(run / "test_predictions.npy").astype(np.float64), seconds))
    return found


def score_table(predictions: dict[str, list[tuple[np.ndarray, float]]], labels: np.ndarray, requests: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """``{row: {metric: [one value per seed]}}`` from each row's test predictions."""
    rows: dict[str, dict[str, list[float]]] = {}
    for name, runs in predictions.items():
        for probs, seconds in runs:
            metrics = click_metrics(labels, probs, requests)
            for key in METRICS:
                rows.setdefault(name, {}).setdefault(key, []).append(metrics[key])
            rows[name].setdefault("seconds", []).append(seconds)
    return rows


def report(table: str, variants: list[TrivagoVariant], seeds: int | None, with_peers: bool, results: Path) -> str:
    """The section ``table`` (``trivago``, or ``trivago-ablations``: each row against the first) from the
    finished runs; rows without runs here are kept as written in ``results``."""
    from bench.quality.trivago_data import examples_in_store_order, export_for_peers, item_events, recency_scores, recency_then_position

    store, logs = prepare_store()
    examples = examples_in_store_order(store, logs)
    test = store.split_indices("test")
    labels, requests = store.labels[test, 0].astype(np.float64), examples["request_id"].to_numpy()[test]
    predictions = {v.label: found for v in variants if (found := finished(v, seeds or v.seeds))}
    if table.endswith("ablations"):
        return _ablation_section(table, results, variants, score_table(predictions, labels, requests), store)
    if with_peers:
        predictions.update(run_peers(export_for_peers(store, logs, WORK / "peers"), list(range(seeds or variants[0].seeds))))
    rows = score_table(predictions, labels, requests)
    recency = recency_scores(examples, item_events(logs))[test]
    position = examples["position"].to_numpy()[test].astype(np.float64)
    for name, scores in {"rule: recency of the user's last touch of the hotel": recency, BEST_RULE: recency_then_position(recency, position)}.items():
        metrics = click_metrics(labels, scores, requests)
        rows[name] = {k: [metrics[k]] for k in ("auc", "gauc", "mrr")}
    text, earlier = with_kept_rows(table, markdown_table(rows, METRICS + ["seconds"], HEADER, {"seconds": 0}), set(rows), results)
    for name, cells in earlier.items():  # kept rows enter the verdicts with their written mean ± std
        rows[name] = summary_values(cells, METRICS + ["seconds"])
    main, labels_of = variants[0].label, {v.label: v for v in variants}
    others = [v.label for v in variants[1:] if not v.baseline and v.label in rows]
    verdicts = [f"- {main} vs {other}: {gain_verdict(rows[main], rows[other], lower_better='ne' if 'ne' in rows[other] else None)}"
                for other in rows if other != main and other not in others and (other not in labels_of or labels_of[other].baseline)]
    for name in [main, *others]:
        verdicts.append(f"- {name} vs {BEST_RULE}, on MRR: {gain_verdict(rows[name], rows[BEST_RULE], metric='mrr', lower_better=None)}")
    for name in others:
        verdicts.append(f"- {name} vs {main}: {gain_verdict(rows[name], rows[main])}; on MRR: {gain_verdict(rows[name], rows[main], metric='mrr', lower_better=None)}")
    return "\n".join([
        "## trivago clicks (RecSys Challenge 2019 sample)", "",
        f"Command: `.venv/bin/python -m bench.quality.run bench/quality/variants/{table}` (peers: `bash bench/quality/setup_peers.sh` first). "
        f"Test split: {len(test):,} impressions in {len(np.unique(requests)):,} clickouts, click rate {labels.mean():.4f}; "
        f"train {len(store.split_indices('train')):,} / validation {len(store.split_indices('validation')):,} impressions. "
        "Rules have no seeds and output scores, not probabilities (no NE / calibration). "
        "Training seconds are per seed, 1 thread, on a 2-core machine shared with other jobs." + (KEPT_NOTE if earlier else ""),
        "", text, "", *verdicts,
        "- reference from the issue (same sample, FuxiCTR DIN given two hand-made features: count and recency of the candidate in the history): 0.858 AUC",
    ])


def _ablation_section(table: str, results: Path, variants: list[TrivagoVariant], rows: dict[str, dict[str, list[float]]], store) -> str:
    metrics = ["auc", "gauc", "ne", "mrr", "seconds"]
    text, earlier = with_kept_rows(table, markdown_table(rows, metrics, HEADER, {"seconds": 0}), set(rows), results)
    for name, cells in earlier.items():
        rows[name] = summary_values(cells, metrics)
    full = variants[0].label
    lines = ["## trivago ablations (eventrec sequence model)", "",
             f"Command: `.venv/bin/python -m bench.quality.run bench/quality/variants/{table}`; same split and training as the trivago table."
             + (KEPT_NOTE if earlier else ""), "", text, ""]
    lines += [f"- {v.label} vs full model: {gain_verdict(rows[v.label], rows[full])}" for v in variants[1:] if v.label in rows and full in rows]
    cap = sum(stream.max_length for stream in store.schema.streams)
    lines += ["", f"A \"loss\" above means that removing the part costs quality, i.e. the part earns its place. The schema's "
              f"per-stream caps already bound the merged history at {cap} events, so \"max history 256\" is the full model here "
              "(identical predictions); the maximum history ablation only bites at 16 and 64."]
    return "\n".join(lines)
