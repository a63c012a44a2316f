"""trivago clicks: eventrec's sequence model and DLRM against FuxiCTR's DNN / DIN / TransAct and two rules.

    .venv/bin/python bench/quality/trivago.py                 # eventrec models + rules (+ peers if set up)
    bash bench/quality/setup_peers.sh                          # once: .venv-peers with FuxiCTR, RecBole
    .venv/bin/python bench/quality/trivago.py --ablations      # also the ablation table

Protocol: one example per (clickout, impressed hotel), label = clicked; the store's 80 / 10 / 10
time split over the clickouts' impressions (validation for early stopping and Platt scaling, test
touched once). Every model is scored on the same test rows; all metrics are computed here from each
model's saved test predictions, by the same code (AUC, gAUC over clickouts, NE, logloss,
calibration, MRR of the clicked hotel within its list). Mean ± std over seeds.

Writes ``bench/out/quality/trivago/`` (runs, predictions) and the ``trivago`` (and
``trivago-ablations``) sections of ``docs/results.md``. Finished runs are reused when re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality.ranking_metrics import click_metrics  # noqa: E402
from bench.quality.report import KEPT_NOTE, gain_verdict, markdown_table, summary_values, with_kept_rows, write_section  # noqa: E402

WORK = ROOT / "bench" / "out" / "quality" / "trivago"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
METRICS = ["auc", "gauc", "ne", "logloss", "calibration", "mrr"]
HEADER = {"auc": "AUC", "gauc": "gAUC (clickouts)", "ne": "NE", "logloss": "logloss", "calibration": "calibration", "mrr": "MRR"}
# FuxiCTR's pip package (2.3.10) has no BST (nor the classic DNN / DIN): DIN and TransAct come from its
# model_zoo.LongCTR, DNN is built from its layers (bench/quality/peers/README.md)
PEER_NAMES = {"dnn": "FuxiCTR DNN (mean-pooled history)", "din": "FuxiCTR DIN", "transact": "FuxiCTR TransAct (in place of BST)"}


def ablation_configs() -> dict:
    from eventrec.model.config import SequenceModelConfig

    return {
        "full model (M=4, all history, timestamps, attributes)": SequenceModelConfig(),
        "no timestamp encoding (no recency/order, no time bias)": SequenceModelConfig(timestamp_encoding=False, time_bias=False),
        "mean pooling instead of keyed attention pooling": SequenceModelConfig(pooling="mean"),
        "keyed pooling without target (match) attention": SequenceModelConfig(match_attention=False),
        "M = 1 slot": SequenceModelConfig(pooling_slots=1),
        "M = 16 slots": SequenceModelConfig(pooling_slots=16),
        "max history 16": SequenceModelConfig(max_history=16),
        "max history 64": SequenceModelConfig(max_history=64),
        "max history 256": SequenceModelConfig(max_history=256),
        "ids only (no event attributes beyond the id)": SequenceModelConfig(event_attributes=False),
    }


def prepare_store():
    from eventrec.adapters import ADAPTERS, default_data_dir
    from eventrec.schema import builtin_schema_path, load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

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


RUN_NAMES: dict[str, str] = {}  # run folder slug -> the row name that owns it


def run_eventrec(store, models: dict, seeds: list[int], runs_dir: Path, epochs: int, listwise_weight: float = 0.0,
                 select_mrr=None, weight_average_decay: float = 0.0) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Train each model per seed (resumable); ``{name: [(test probabilities [n_test], seconds)]}``.
    ``listwise_weight``: adds that weight times the softmax over each clickout's impressions to the
    bce loss (``TrainConfig.listwise_weight``), and then stops early on validation AUC (the listwise
    term moves the logits, so NE stops the run before the order has been learned). ``select_mrr``
    (:func:`validation_mrr`): early stopping and the kept weights on validation MRR instead.
    ``weight_average_decay``: validate and keep a moving average of the weights
    (``TrainConfig.weight_average_decay``)."""
    from eventrec.evaluation.experiment import run_comparison
    from eventrec.training.trainer import TrainConfig

    stop_on = "score" if select_mrr is not None else "auc" if listwise_weight else "ne"
    train_config = TrainConfig(epochs=epochs, batch_size=512, validations_per_epoch=4, patience=2, listwise_weight=listwise_weight, stop_on=stop_on,
                                weight_average_decay=weight_average_decay)
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name, config in models.items():
        slug = "".join(c if c.isalnum() else "_" for c in name)[:60]
        if RUN_NAMES.setdefault(slug, name) != name:  # runs are found by slug: two rows must not share one
            raise RuntimeError(f"rows {RUN_NAMES[slug]!r} and {name!r} would share the run folder {slug}; make their first 60 characters differ")
        runs = run_comparison(store, {slug: config}, train_config, seeds, runs_dir, show_progress=False, validation_score=select_mrr)
        out[name] = [(np.load(runs_dir / f"{slug}_seed{r.seed}" / "test_predictions.npy")[:, 0], r.seconds) for r in runs]
    return out


def run_peers(data_dir: Path, seeds: list[int]) -> dict[str, list[tuple[np.ndarray, float]]]:
    """FuxiCTR's DNN / DIN / BST in ``.venv-peers`` (resumable); empty if that venv is absent."""
    if not PEERS_PYTHON.exists():
        print(f"peers skipped: {PEERS_PYTHON} not found (run bench/quality/setup_peers.sh)")
        return {}
    out_dir = WORK / "fuxictr"
    command = [str(PEERS_PYTHON), str(ROOT / "bench/quality/peers/fuxictr_trivago.py"), "--data", str(data_dir), "--out", str(out_dir),
               "--models", *PEER_NAMES, "--seeds", *map(str, seeds)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env)
    found: dict[str, list[tuple[np.ndarray, float]]] = {}
    for key, name in PEER_NAMES.items():
        for seed in seeds:
            run = out_dir / f"{key}_seed{seed}"
            if (run / "test_predictions.npy").exists():
                seconds = json.loads((run / "run.json").read_text()).get("train_seconds", float("nan"))
                found.setdefault(name, []).append((np.load(run / "test_predictions.npy").astype(np.float64), seconds))
    return found


def score_table(predictions: dict[str, list[tuple[np.ndarray, float]]], labels: np.ndarray, requests: np.ndarray) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = {}
    for name, runs in predictions.items():
        for probs, seconds in runs:
            metrics = click_metrics(labels, probs, requests)
            for key in METRICS:
                rows.setdefault(name, {}).setdefault(key, []).append(metrics[key])
            rows[name].setdefault("seconds", []).append(seconds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--ablations", action="store_true", help="also train the ablation table")
    parser.add_argument("--ablation-seeds", type=int, default=2)
    parser.add_argument("--listwise-weight", type=float, nargs="*", default=[],
                        help="also train the sequence model with bce + each weight times a softmax over each clickout (a row each)")
    parser.add_argument("--select-mrr", type=int, default=0, metavar="EPOCHS",
                        help="also train the sequence model for up to EPOCHS epochs with early stopping and model selection on "
                        "validation MRR (a row; 0: not)")
    parser.add_argument("--attribute-dim", type=int, nargs="*", default=[],
                        help="also train the sequence model with each of these attribute embedding sizes (item ids and the "
                        "match attention's cosine included; the default config has 16): a row each")
    parser.add_argument("--dropout", type=float, nargs="*", default=[],
                        help="also train the sequence model with each of these dropout rates (event embeddings and the encoder's "
                        "sublayers; the default config has 0): a row each")
    parser.add_argument("--identity-match", action="store_true",
                        help="also train the sequence model with identity codes in the match attention (SequenceModelConfig."
                        "identity_match: an exact-id channel beside the learned embeddings' cosine): a row")
    parser.add_argument("--identity-listwise-weight", type=float, nargs="*", default=[],
                        help="also train the sequence model with identity_match and bce + each weight times a softmax over "
                        "each clickout (a row each)")
    parser.add_argument("--transition-match", action="store_true",
                        help="also train the sequence model with identity codes and the directed transition channel in the match "
                        "attention (SequenceModelConfig.transition_match): a row")
    parser.add_argument("--transition-listwise-weight", type=float, nargs="*", default=[],
                        help="also train the sequence model with identity_match, transition_match and bce + each weight times a "
                        "softmax over each clickout (a row each)")
    parser.add_argument("--weight-average", type=float, nargs="*", default=[], metavar="DECAY",
                        help="also train the sequence model with identity_match, bce + --weight-average-listwise times the "
                        "clickout softmax, validating and keeping a moving average of the weights with each decay "
                        "(TrainConfig.weight_average_decay): a row each")
    parser.add_argument("--weight-average-listwise", type=float, default=0.3, metavar="W",
                        help="the clickout softmax weight of the --weight-average rows")
    args = parser.parse_args()
    if any(not 0 < d < 1 for d in args.weight_average):
        parser.error(f"--weight-average: decays must be in (0, 1), got {args.weight_average}")
    if any(not 0 <= d < 1 for d in args.dropout):
        parser.error(f"--dropout: rates must be in [0, 1), got {args.dropout}")
    if args.select_mrr < 0:
        parser.error(f"--select-mrr: epochs must be >= 0, got {args.select_mrr}")
    started = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    from bench.quality.trivago_data import examples_in_store_order, export_for_peers, item_events, recency_scores, recency_then_position
    from eventrec.model.config import DlrmConfig, SequenceModelConfig

    store, logs = prepare_store()
    examples = examples_in_store_order(store, logs)
    test = store.split_indices("test")
    labels = store.labels[test, 0].astype(np.float64)
    requests = examples["request_id"].to_numpy()[test]
    seeds = list(range(args.seeds))
    runs_dir = WORK / ("runs" if args.epochs == 1 else f"runs_e{args.epochs}")  # finished runs are reused: one directory per budget
    section = "trivago" if args.epochs == 1 else f"trivago-e{args.epochs}"

    predictions = run_eventrec(store, {"eventrec sequence model": SequenceModelConfig(), "eventrec DLRM (aggregated features)": DlrmConfig()},
                               seeds, runs_dir, args.epochs)
    listwise_rows = [(f"eventrec sequence model, bce + {w:g} × clickout softmax, stop on AUC", SequenceModelConfig(), w) for w in args.listwise_weight] \
        + [(f"eventrec sequence model, identity match, bce + {w:g} × clickout softmax, stop on AUC", SequenceModelConfig(identity_match=True), w)
           for w in args.identity_listwise_weight] \
        + [(f"eventrec sequence model, id+transition match, bce + {w:g} × clickout softmax, stop on AUC",
            SequenceModelConfig(identity_match=True, transition_match=True), w) for w in args.transition_listwise_weight]
    variant_rows = [name for name, _, _ in listwise_rows]
    for name, config, weight in listwise_rows:
        predictions.update(run_eventrec(store, {name: config}, seeds, runs_dir, args.epochs, weight))
    for decay in args.weight_average:
        name = f"eventrec sequence model, weight average {decay:g}, identity match, bce + {args.weight_average_listwise:g} × clickout softmax"
        variant_rows.append(name)
        predictions.update(run_eventrec(store, {name: SequenceModelConfig(identity_match=True)}, seeds, runs_dir, args.epochs,
                                        args.weight_average_listwise, weight_average_decay=decay))
    if args.select_mrr:
        variant_rows.append(f"eventrec sequence model, up to {args.select_mrr} epochs, stop on validation MRR")
        predictions.update(run_eventrec(store, {variant_rows[-1]: SequenceModelConfig()}, seeds, runs_dir, args.select_mrr,
                                        select_mrr=validation_mrr(store, examples["request_id"].to_numpy())))
    config_variants = [(f"attribute dim {dim}", {"attribute_dim": dim}) for dim in args.attribute_dim] \
        + [(f"dropout {rate:g}", {"dropout": rate}) for rate in args.dropout] \
        + ([("identity match", {"identity_match": True})] if args.identity_match else []) \
        + ([("id+transition match", {"identity_match": True, "transition_match": True})] if args.transition_match else [])
    for label, override in config_variants:  # one row per model-config change, trained like the main row
        variant_rows.append(f"eventrec sequence model, {label}")
        predictions.update(run_eventrec(store, {variant_rows[-1]: SequenceModelConfig(**override)}, seeds, runs_dir, args.epochs))
    if not args.skip_peers:
        predictions.update(run_peers(export_for_peers(store, logs, WORK / "peers"), seeds))
    recency = recency_scores(examples, item_events(logs))[test]
    position = examples["position"].to_numpy()[test].astype(np.float64)
    rule_scores = {"rule: recency of the user's last touch of the hotel": recency,
                   "rule: recency, ties by display position": recency_then_position(recency, position)}
    rows = score_table(predictions, labels, requests)
    for name, scores in rule_scores.items():
        metrics = click_metrics(labels, scores, requests)
        rows[name] = {k: [metrics[k]] for k in ("auc", "gauc", "mrr")}

    table, earlier = with_kept_rows(section, markdown_table(rows, METRICS + ["seconds"], {**HEADER, "seconds": "train s"}, {"seconds": 0}),
                                    set(rows))  # rows whose runs are not in this checkout (e.g. the peers'), kept as written
    for name, cells in earlier.items():  # in the verdicts too, from their written mean ± std
        rows[name] = summary_values(cells, METRICS + ["seconds"])
        if name.startswith("eventrec sequence model,"):
            variant_rows.append(name)
    seq = rows["eventrec sequence model"]
    verdicts = [f"- sequence model vs {other}: {gain_verdict(seq, rows[other], lower_better='ne' if 'ne' in rows[other] else None)}"
                for other in rows if other != "eventrec sequence model" and other not in variant_rows]
    best_rule = "rule: recency, ties by display position"
    for name in ["eventrec sequence model", *variant_rows]:
        verdicts.append(f"- {name} vs {best_rule}, on MRR: {gain_verdict(rows[name], rows[best_rule], metric='mrr', lower_better=None)}")
    for name in variant_rows:
        verdicts.append(f"- {name} vs eventrec sequence model (bce only): {gain_verdict(rows[name], seq)}; "
                        f"on MRR: {gain_verdict(rows[name], seq, metric='mrr', lower_better=None)}")
    n_test, n_requests = len(test), len(np.unique(requests))
    body = [
        "## trivago clicks (RecSys Challenge 2019 sample)" + ("" if args.epochs == 1 else f", eventrec trained for up to {args.epochs} epochs"),
        "",
        f"Command: `.venv/bin/python bench/quality/trivago.py --seeds {args.seeds}" + (f" --epochs {args.epochs}" if args.epochs != 1 else "")
        + (" --listwise-weight " + " ".join(f"{w:g}" for w in args.listwise_weight) if args.listwise_weight else "")
        + (f" --select-mrr {args.select_mrr}" if args.select_mrr else "")
        + (" --attribute-dim " + " ".join(map(str, args.attribute_dim)) if args.attribute_dim else "")
        + (" --dropout " + " ".join(f"{d:g}" for d in args.dropout) if args.dropout else "")
        + (" --identity-match" if args.identity_match else "")
        + (" --identity-listwise-weight " + " ".join(f"{w:g}" for w in args.identity_listwise_weight) if args.identity_listwise_weight else "")
        + (" --transition-match" if args.transition_match else "")
        + (" --transition-listwise-weight " + " ".join(f"{w:g}" for w in args.transition_listwise_weight) if args.transition_listwise_weight else "")
        + "` (peers: `bash bench/quality/setup_peers.sh` first). "
        f"Test split: {n_test:,} impressions in {n_requests:,} clickouts, click rate {labels.mean():.4f}; "
        f"train {len(store.split_indices('train')):,} / validation {len(store.split_indices('validation')):,} impressions. "
        "Rules have no seeds and output scores, not probabilities (no NE / calibration). "
        "Training seconds are per seed, 1 thread, on a 2-core machine shared with other jobs." + (KEPT_NOTE if earlier else ""),
        "",
        table,
        "",
        *verdicts,
        "- reference from the issue (same sample, FuxiCTR DIN given two hand-made features: count and recency of the candidate in the history): 0.858 AUC",
    ]
    write_section(section, "\n".join(body))
    print("\n".join(body))

    if args.ablations:
        ablation_predictions = run_eventrec(store, ablation_configs(), list(range(args.ablation_seeds)), WORK / "ablation_runs", args.epochs)
        ablation_rows = score_table(ablation_predictions, labels, requests)
        full = ablation_rows[next(iter(ablation_rows))]
        lines = ["## trivago ablations (eventrec sequence model)", "",
                 f"Command: `.venv/bin/python bench/quality/trivago.py --ablations --ablation-seeds {args.ablation_seeds}`; same split and training as above.",
                 "", markdown_table(ablation_rows, ["auc", "gauc", "ne", "mrr", "seconds"], {**HEADER, "seconds": "train s"}, {"seconds": 0}), ""]
        lines += [f"- {name} vs full model: {gain_verdict(r, full)}" for name, r in list(ablation_rows.items())[1:]]
        cap = sum(stream.max_length for stream in store.schema.streams)
        lines += ["", f"A \"loss\" above means that removing the part costs quality, i.e. the part earns its place. The schema's "
                  f"per-stream caps already bound the merged history at {cap} events, so \"max history 256\" is the full model here "
                  "(identical predictions); the maximum history ablation only bites at 16 and 64."]
        write_section("trivago-ablations", "\n".join(lines))
        print("\n".join(lines))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
