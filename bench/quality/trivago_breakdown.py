"""trivago: MRR of every saved run and of the rules, split by what the user touched before the clickout.

    .venv/bin/python bench/quality/trivago_breakdown.py      # after bench/quality/trivago.py

Three kinds of test clickout, by the user's hotel events strictly before it (the same events as the
recency rule, ``bench/quality/trivago_data.recency_scores``):

* **clicked hotel touched**: the user had touched the hotel they clicked;
* **another listed hotel touched**: some listed hotel was touched, but not the clicked one;
* **no listed hotel touched**: the rule falls back to the display position.

Where the clicked hotel was touched, "the most recently touched first" is nearly always right; in
the other two groups a model has to know better than recency and position. Reads the test
predictions of ``bench/out/quality/trivago/runs/`` (one row per run folder, mean ± std over its
seeds) and writes the ``trivago-breakdown`` section of ``docs/results.md``.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.quality.ranking_metrics import mean_reciprocal_rank  # noqa: E402
from bench.quality.report import markdown_table, write_section  # noqa: E402

GROUPS = ("clicked hotel touched", "another listed hotel touched", "no listed hotel touched")


def clickout_groups(labels: np.ndarray, touched: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """``[n]`` group index (into :data:`GROUPS`) of each test row's clickout."""
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


def main() -> None:
    from bench.quality.trivago import WORK, prepare_store
    from bench.quality.trivago_data import examples_in_store_order, item_events, recency_scores

    runs = WORK / "runs"
    if not runs.is_dir():
        raise SystemExit(f"no runs in {runs}: run bench/quality/trivago.py first")
    store, logs = prepare_store()
    examples = examples_in_store_order(store, logs)
    test = store.split_indices("test")
    labels = store.labels[test, 0].astype(np.float64)
    requests = examples["request_id"].to_numpy()[test]
    recency = recency_scores(examples, item_events(logs))[test]
    position = examples["position"].to_numpy()[test].astype(np.float64)
    groups = clickout_groups(labels, recency > 0, requests)
    counts = {name: len(np.unique(requests[groups == g])) for g, name in enumerate(GROUPS)}

    rows: dict[str, dict[str, list[float]]] = {}
    for name, scores in {"rule: recency, ties by display position": recency + 1e-9 / (1.0 + position),
                         "rule: display position alone": 1.0 / (1.0 + position)}.items():
        rows[name] = {k: [v] for k, v in group_mrr(labels, scores, requests, groups).items()}
    by_run: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(runs.glob("*_seed*/test_predictions.npy")):
        run = re.sub(r"_seed\d+$", "", path.parent.name)
        scores = np.load(path)[:, 0]
        if len(scores) != len(labels):
            raise SystemExit(f"{path}: {len(scores)} predictions for {len(labels)} test rows (a run of another split?)")
        for k, v in group_mrr(labels, scores, requests, groups).items():
            by_run[f"`{run}`"][k].append(v)
    rows.update(by_run)

    header = {name: f"MRR, {name} ({counts[name]:,})" for name in GROUPS} | {"all": f"MRR, all ({len(np.unique(requests)):,})"}
    body = "\n".join([
        "## trivago: test MRR by what the user touched before the clickout",
        "",
        "Command: `.venv/bin/python bench/quality/trivago_breakdown.py` (after `bench/quality/trivago.py`). One row per run "
        "folder of `bench/out/quality/trivago/runs/` (mean ± std over its seeds; folder names are the first 60 characters of "
        "the trivago table's row names). Groups of test clickouts by the user's hotel events strictly before the clickout: "
        "the clicked hotel touched; another listed hotel touched but not the clicked one; no listed hotel touched.",
        "",
        markdown_table(rows, [*GROUPS, "all"], header),
    ])
    write_section("trivago-breakdown", body)
    print(body)


if __name__ == "__main__":
    main()
