"""A gradient-boosted-trees peer on the engineered features, beside a comparison's models.

What an engineer's GBDT makes of the hand-crafted features: the engineered DLRM's dense features
(:class:`eventrec.data.dlrm_features.DlrmFeatureBuilder` with the item counters: per window the
user's event counts, the candidate-match counts and recency, numeric means, the items' counts by all
users) and the rules' point-in-time scores (:mod:`eventrec.evaluation.rules`: count and recency of
the candidate in history, the user's earlier positive rate, the counts by all users; not "item
popularity in training", which holds a training row's own label) as columns, one
``sklearn.ensemble.HistGradientBoostingClassifier`` per task fitted on the training split, its number
of trees chosen by validation AUC (never test), feature subsampling 0.8 drawn with the seed. No id
bags: trees take the ids' counts, not the ids.

It reads the store of a ``bench/compare_models.py`` work directory and prints its test metrics
(mean ± std over seeds) beside that directory's finished runs, every model against it by the gain
rule; the rows go to ``WORKDIR/gbdt_peer.json``.

    .venv/bin/python bench/gbdt_peer.py --workdir bench/out/small20_amazon_grocery_conversion --seeds 3
    .venv/bin/python bench/gbdt_peer.py --workdir bench/out/cnt_trivago --store bench/out/cmp20_trivago/store
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEAKY_RULES = ("item popularity in training",)  # its training rows count their own label


def feature_matrices(store, index: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    """Per task ``[B, F]`` float64: the engineered DLRM's dense features (computed once) and the
    point-in-time rule scores of that task; and the column names."""
    from eventrec.data.dlrm_features import DlrmFeatureBuilder
    from eventrec.evaluation.rules import rule_scores

    batch = DlrmFeatureBuilder(engineered=True, item_counters=True)(store, index)
    dense = batch.dense.numpy().astype(np.float64)
    rules = {name: np.asarray(score, dtype=np.float64) for name, score in rule_scores(store, index).items() if name not in LEAKY_RULES}
    per_task = [np.concatenate([dense] + [score[:, task, None] for score in rules.values()], axis=1) for task in range(len(store.label_names))]
    return per_task, list(batch.dense_names) + list(rules)


def feature_matrix(store, index: np.ndarray, task: int) -> tuple[np.ndarray, list[str]]:
    """``[B, F]`` float64: the engineered DLRM's dense features and the point-in-time rule scores of ``task``."""
    per_task, names = feature_matrices(store, index)
    return per_task[task], names


def fit_and_score(x: dict, y: dict, seed: int, max_trees: int) -> tuple[np.ndarray, int, float]:
    """Fit on ``x["train"]``; the number of trees with the best validation AUC; test probabilities ``[B_test]``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from eventrec.evaluation.metrics import auc

    model = HistGradientBoostingClassifier(max_iter=max_trees, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=50,
                                           l2_regularization=1.0, max_features=0.8, early_stopping=False, random_state=seed)
    model.fit(x["train"], y["train"])
    scores = [auc(y["validation"], p[:, 1]) for p in model.staged_predict_proba(x["validation"])]
    best = int(np.argmax(scores))
    for trees, probs in enumerate(model.staged_predict_proba(x["test"])):
        if trees == best:
            return probs[:, 1], best + 1, float(scores[best])
    raise AssertionError("unreachable: staged predictions stop before the chosen tree count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="a bench/compare_models.py work directory (its store/ and runs/)")
    parser.add_argument("--store", type=Path, default=None,
                        help="the store those runs read, where it is not WORKDIR/store (a work directory made with --runs-from DIR: DIR/store)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-trees", type=int, default=400)
    args = parser.parse_args()
    store_dir = args.store or args.workdir / "store"
    if not (store_dir / "manifest.json").exists():
        parser.error(f"no store at {store_dir} (run bench/compare_models.py with this --workdir first, or name its store with --store)")

    from eventrec.evaluation.experiment import SeedRun, format_table, summarize
    from eventrec.evaluation.predict import metrics_by_task
    from eventrec.evaluation.rules import rule_metrics
    from eventrec.store.reader import EventStore

    started = time.perf_counter()
    store = EventStore.open(store_dir)
    index = {split: store.split_indices(split) for split in ("train", "validation", "test")}
    matrices = {split: feature_matrices(store, rows)[0] for split, rows in index.items()}  # the DLRM features once per split
    features = {(split, task): matrices[split][task] for split in index for task in range(len(store.label_names))}
    runs: list[SeedRun] = []
    for seed in range(args.seeds):
        probs = np.zeros((len(index["test"]), len(store.label_names)))
        chosen = {}
        for task, name in enumerate(store.label_names):
            x, y = {}, {}
            for split, rows in index.items():
                labels = store.labels[rows, task]
                present = ~np.isnan(labels) if split != "test" else np.ones(len(rows), dtype=bool)  # every test row scored
                x[split], y[split] = features[split, task][present], labels[present]
            probs[:, task], trees, validation_auc = fit_and_score(x, y, seed, args.max_trees)
            chosen[name] = {"trees": trees, "validation_auc": validation_auc}
        runs.append(SeedRun("gbdt", seed, metrics_by_task(store, index["test"], probs), chosen, {}, 0, 0.0))
        print(f"seed {seed}: {chosen}", flush=True)
    for done in sorted((args.workdir / "runs").glob("*_seed*/run.json")):
        run = SeedRun(**json.loads(done.read_text()))
        if run.seed < args.seeds:
            runs.append(run)
    rules = {split: rule_metrics(store, split) for split in ("validation", "test")}
    print(format_table(summarize(runs), baseline="gbdt", rules=rules))
    out = args.workdir / "gbdt_peer.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([r.__dict__ for r in runs if r.model == "gbdt"], indent=1, default=float))
    tmp.replace(out)
    print(f"{out}; {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
