"""Sanity table of the peer runs (runs in the project's ``.venv``, not ``.venv-peers``).

    .venv/bin/python -m bench.quality.peers.summarize [--root bench/out/quality] [--json OUT.json]

trivago: each ``fuxictr/<model>_seed<seed>/test_predictions.npy`` scored against test.parquet with
``bench/quality/ranking_metrics.click_metrics`` (AUC, gAUC, NE, logloss, calibration, MRR) plus
sklearn's AUC / logloss as an independent cross-check. Next item: ``sasrec/seed<seed>/result.json``
(RecBole's HR@10 / NDCG@10) and the same metrics recomputed from ``test_ranks.npy`` with
``ranking_metrics.hit_rate_and_ndcg``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score

from bench.quality.ranking_metrics import click_metrics, hit_rate_and_ndcg


def trivago(root: Path) -> list[dict]:
    test = pl.read_parquet(root / "trivago" / "peers" / "test.parquet", columns=["example", "request_id", "click"])
    labels, requests = test["click"].to_numpy().astype(np.float64), test["request_id"].to_numpy()
    rows = []
    for run in sorted((root / "trivago" / "fuxictr").glob("*_seed*/run.json")):
        info = json.loads(run.read_text())
        probs = np.load(run.parent / "test_predictions.npy")
        assert probs.shape == labels.shape and probs.dtype == np.float64
        metrics = click_metrics(labels, probs, requests)
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["sklearn_auc"] = float(roc_auc_score(labels, probs))
        metrics["sklearn_logloss"] = float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7)))
        rows.append({"model": info["model"], "seed": info["seed"], "epochs": info["epochs_trained"],
                     "train_seconds": info["train_seconds"],
                     "valid_auc": info["best_validation"]["AUC"], **metrics})
    return rows


def next_item(root: Path) -> list[dict]:
    rows = []
    for result in sorted(root.glob("*/sasrec/seed*/result.json")):
        info = json.loads(result.read_text())
        hr, ndcg = hit_rate_and_ndcg(np.load(result.parent / "test_ranks.npy"), 10)
        rows.append({"dataset": info["dataset"], "seed": info["seed"], "HR@10": info["test"]["HR@10"],
                     "NDCG@10": info["test"]["NDCG@10"], "HR@10_from_ranks": hr, "NDCG@10_from_ranks": ndcg,
                     "valid_NDCG@10": info["best_validation_NDCG@10"], "epochs": info["epochs_trained"],
                     "best_epoch": info["best_epoch"], "s_per_epoch": info["seconds_per_epoch_train"],
                     "stop": info["stop_reason"], "split_ok": info["split_checks"]["held_out_items_match"]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("bench/out/quality"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {"trivago": trivago(args.root), "next_item": next_item(args.root)}
    keys = ["auc", "gauc", "ne", "logloss", "calibration", "mrr", "sklearn_auc", "sklearn_logloss"]
    for row in out["trivago"]:
        shown = " ".join(f"{k}={row[k]:.4f}" for k in keys if k in row)
        print(f"trivago {row['model']:8s} seed {row['seed']}: {shown} valid_auc={row['valid_auc']:.4f} "
              f"epochs={row['epochs']} train_s={row['train_seconds']}")
    models = sorted({r["model"] for r in out["trivago"]})
    for model in models:
        runs = [r for r in out["trivago"] if r["model"] == model]
        stats = " ".join(f"{k}={np.mean([r[k] for r in runs]):.4f}±{np.std([r[k] for r in runs]):.4f}"
                         for k in ("auc", "gauc", "ne", "logloss", "mrr") if k in runs[0])
        print(f"trivago {model:8s} mean±std over {len(runs)} seeds: {stats}")
    for row in out["next_item"]:
        print(f"{row['dataset']} SASRec seed {row['seed']}: HR@10={row['HR@10']:.4f} NDCG@10={row['NDCG@10']:.4f} "
              f"(from ranks {row['HR@10_from_ranks']:.4f} / {row['NDCG@10_from_ranks']:.4f}) "
              f"valid NDCG@10={row['valid_NDCG@10']:.4f} epochs={row['epochs']} best_epoch={row['best_epoch']} "
              f"{row['s_per_epoch']}s/epoch split_ok={row['split_ok']} stop: {row['stop']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
