"""trivago: MRR of every saved run and of the rules, split by what the user touched before the clickout.

    .venv/bin/python -m bench.quality.trivago_breakdown                     # after bench.quality.run on trivago
    .venv/bin/python -m bench.quality.trivago_breakdown --split validation  # the same on validation

Three kinds of test clickout, by the user's hotel events strictly before it (the same events as the
recency rule, ``bench/quality/trivago_data.recency_scores``):

* **clicked hotel touched**: the user had touched the hotel they clicked;
* **another listed hotel touched**: some listed hotel was touched, but not the clicked one;
* **no listed hotel touched**: the rule falls back to the display position.

Where the clicked hotel was touched, "the most recently touched first" is nearly always right; in
the other two groups a model has to know better than recency and position. Reads the test
predictions of ``bench/out/quality/trivago/runs/`` (one row per run id, named by its variant's
label, mean ± std over its seeds) and prints the table (earlier tables: ``docs/history/``). With
``--split validation`` it predicts the validation split with each run's kept weights (``best/``)
instead: the split on which to choose between the rows, since every row of the test table has been
looked at.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.quality.ranking_metrics import mean_reciprocal_rank
from bench.quality.report import markdown_table

GROUPS = ("clicked hotel touched", "another listed hotel touched", "no listed hotel touched")


def clickout_groups(labels: np.ndarray, touched: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """``[n]`` group index (into :data:`GROUPS`) of each row's clickout (``touched [n]``: the user had
    touched the row's hotel before the clickout)."""
    _, clickout = np.unique(requests, return_inverse=True)
    clicked_touched = np.bincount(clickout, weights=labels.astype(bool) & touched) > 0
    any_touched = np.bincount(clickout, weights=touched) > 0
    per_clickout = np.where(clicked_touched, 0, np.where(any_touched, 1, 2))
    return per_clickout[clickout]


def group_mrr(labels: np.ndarray, scores: np.ndarray, requests: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """MRR within each group of clickouts, and overall."""
    out = {name: mean_reciprocal_rank(labels[groups == g], scores[groups == g], requests[groups == g]) for g, name in enumerate(GROUPS)}
    out["all"] = mean_reciprocal_rank(labels, scores, requests)
    return out


def run_scores(run_dir: Path, store, split_rows: np.ndarray, split: str) -> np.ndarray:
    """``[n]`` scores of one run on the split's rows: its saved test predictions, or, for validation,
    those of its kept weights (``best/``; Platt scaling is monotone, so the ranks are the model's)."""
    if split == "test":
        return np.load(run_dir / "test_predictions.npy")[:, 0]
    from eventrec.evaluation.predict import predict
    from eventrec.training.factory import batch_function, load_trained_model

    model, config, _, _ = load_trained_model(run_dir / "best")
    return predict(model, store, split_rows, batch_function(config))[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    args = parser.parse_args()
    from bench.quality.trivago import RUNS as runs, prepare_store
    from bench.quality.trivago_data import examples_in_store_order, item_events, recency_scores, recency_then_position

    if not runs.is_dir():
        raise SystemExit(f"no runs in {runs}: run python -m bench.quality.run bench/quality/variants/trivago first")
    store, logs = prepare_store()
    examples = examples_in_store_order(store, logs)
    rows_of_split = store.split_indices(args.split)
    labels = store.labels[rows_of_split, 0].astype(np.float64)
    requests = examples["request_id"].to_numpy()[rows_of_split]
    recency = recency_scores(examples, item_events(logs))[rows_of_split]
    position = examples["position"].to_numpy()[rows_of_split].astype(np.float64)
    groups = clickout_groups(labels, recency > 0, requests)
    counts = {name: len(np.unique(requests[groups == g])) for g, name in enumerate(GROUPS)}

    rows: dict[str, dict[str, list[float]]] = {}
    for name, scores in {"rule: recency, ties by display position": recency_then_position(recency, position),
                         "rule: display position alone": 1.0 / (1.0 + position)}.items():
        rows[name] = {k: [v] for k, v in group_mrr(labels, scores, requests, groups).items()}
    by_run: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(runs.glob("*_seed*/test_predictions.npy")):  # finished runs only
        run = re.sub(r"_seed\d+$", "", path.parent.name)
        variant = runs / f"{run}.json"
        name = json.loads(variant.read_text())["label"] if variant.exists() else f"`{run}`"
        scores = run_scores(path.parent, store, rows_of_split, args.split)
        if len(scores) != len(labels):
            raise SystemExit(f"{path.parent}: {len(scores)} predictions for {len(labels)} {args.split} rows (a run of another split?)")
        for k, v in group_mrr(labels, scores, requests, groups).items():
            by_run[name][k].append(v)
    rows.update(by_run)

    header = {name: f"MRR, {name} ({counts[name]:,})" for name in GROUPS} | {"all": f"MRR, all ({len(np.unique(requests)):,})"}
    print(f"{args.split} MRR by what the user touched before the clickout\n")
    print(markdown_table(rows, [*GROUPS, "all"], header))


if __name__ == "__main__":
    main()
