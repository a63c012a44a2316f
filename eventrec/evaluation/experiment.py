"""Compare models over seeds on one store: test metrics (mean ± std), plots, offline A/B.

Every model trains with the same loop on the same train split, stops early on the validation split,
and is measured once on the test split. The comparison table reports mean ± standard deviation over
seeds; a gain counts only when it exceeds max(0.001 AUC, twice the seed spread) with NE moving the
same way (see the evaluation section of ``docs/models.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from eventrec.store.reader import EventStore
from eventrec.evaluation.predict import metrics_by_segment, metrics_by_task, predict, predict_by_user
from eventrec.model.config import SequenceModelConfig, as_recorded
from eventrec.training.factory import ModelConfig, batch_function, parse_model_config
from eventrec.training.trainer import TrainConfig, train

METRICS = ("ne", "auc", "gauc", "logloss", "calibration")


@dataclass
class SeedRun:
    model: str
    seed: int
    test: dict
    validation: dict
    segments: dict
    steps: int
    seconds: float
    ab: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the model config it trained (checked when a run is reused)


def top_k_per_request(score: np.ndarray, requests: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` highest scores within each request (``[n]`` → picked rows)."""
    order = np.lexsort((-score, requests))
    sorted_requests = requests[order]
    first = np.r_[True, sorted_requests[1:] != sorted_requests[:-1]]
    rank = np.arange(len(order)) - np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    return order[rank < top_k]


def offline_ab(store: EventStore, model, model_config: ModelConfig, candidates: pl.DataFrame, top_k: int, conversion_given_click: bool) -> dict:
    """Expected clicks and conversions of the model's top-k picks per request of a candidate pool.

    ``candidates`` carries the true ``p_click`` and ``p_conversion`` (P(conversion | click)) of each
    candidate; the model ranks candidates by its predicted click probability for clicks, and by its
    predicted conversion probability per impression for conversions.
    """
    from eventrec.data.requests import store_for_requests

    view = store_for_requests(store, candidates, "candidates.parquet")
    probs = predict(model, view, np.arange(view.num_examples), batch_function(model_config))
    p_click_hat = probs[:, 0]
    p_conv_hat = probs[:, 1] * (probs[:, 0] if conversion_given_click else 1.0) if probs.shape[1] > 1 else probs[:, 0]
    truth_click = candidates["p_click"].to_numpy()
    truth_conv = truth_click * candidates["p_conversion"].to_numpy()
    requests = candidates["request_id"].to_numpy()
    out = {}
    for objective, score in (("clicks", p_click_hat), ("conversions", p_conv_hat)):
        picked = top_k_per_request(score, requests, top_k)
        out[f"by_{objective}"] = {
            "expected_clicks": float(truth_click[picked].sum()),
            "expected_conversions": float(truth_conv[picked].sum()),
        }
    out["requests"] = int(len(np.unique(requests)))
    out["top_k"] = top_k
    # the oracle (true probabilities) and a random pick, for scale
    for name, score in (("oracle", truth_conv), ("random", np.random.default_rng(0).random(len(requests)))):
        picked = top_k_per_request(score, requests, top_k)
        out[name] = {"expected_clicks": float(truth_click[picked].sum()), "expected_conversions": float(truth_conv[picked].sum())}
    return out


def run_comparison(
    store: EventStore,
    models: dict[str, ModelConfig],
    train_config: TrainConfig,
    seeds: list[int],
    out_dir: Path,
    candidates: pl.DataFrame | None = None,
    top_k: int = 3,
    conversion_given_click: bool = False,
    show_progress: bool = True,
    validation_score: Callable[[ModelConfig], Callable] | None = None,
) -> list[SeedRun]:
    """Train every model for every seed (resumable: a finished run is read back) and score its test
    predictions. ``validation_score``: for a ``train_config`` with ``stop_on: score``, builds the
    ``train(..., validation_score=...)`` function of each model config (its batch function differs)."""
    out_dir = Path(out_dir)
    runs: list[SeedRun] = []
    test = store.split_indices("test")
    for name, config in models.items():
        for seed in seeds:
            run_dir = out_dir / f"{name}_seed{seed}"
            done = run_dir / "run.json"
            wanted = json.loads(config.model_dump_json())
            if done.exists():  # a killed comparison resumes: finished runs are not repeated
                finished = SeedRun(**json.loads(done.read_text()))
                if not finished.config or json.loads(parse_model_config(as_recorded(finished.config)).model_dump_json()) != wanted:
                    raise ValueError(f"{run_dir} holds a finished run of another {name!r} config (found {finished.config or 'none recorded'}, "
                                     f"want {wanted}); use another output folder (nothing was deleted)")
                runs.append(finished)
                continue
            score = validation_score(config) if validation_score is not None else None
            mine = train_config
            if train_config.user_batches and not isinstance(config, SequenceModelConfig):  # user batches are for the sequence model: a DLRM trains as usual
                mine = train_config.model_copy(update={"experimental": train_config.experimental.model_copy(update={"user_batches": False})})
            model, result = train(store, config, mine.model_copy(update={"seed": seed}), run_dir, show_progress, validation_score=score)
            if mine.user_batches:  # the same probabilities, each user's history encoded once per batch
                probs = predict_by_user(model, store, test, train_config.eval_batch_size)
            else:
                probs = predict(model, store, test, batch_function(config), train_config.eval_batch_size)
            np.save(run_dir / "test_predictions.npy", probs, allow_pickle=False)
            run = SeedRun(name, seed, metrics_by_task(store, test, probs), result.best_validation,
                          metrics_by_segment(store, test, probs), result.steps, result.seconds, config=wanted)
            if candidates is not None:
                run.ab = offline_ab(store, model, config, candidates, top_k, conversion_given_click)
            done.write_text(json.dumps(run.__dict__, indent=1, default=float))
            runs.append(run)
    return runs


def summarize(runs: list[SeedRun]) -> dict:
    """``{model: {task: {metric: (mean, std)}}}`` over seeds, plus the A/B means."""
    out: dict = {}
    for name in dict.fromkeys(r.model for r in runs):
        mine = [r for r in runs if r.model == name]
        out[name] = {"seeds": [r.seed for r in mine], "tasks": {}, "ab": {}}
        for task in mine[0].test:
            out[name]["tasks"][task] = {
                m: (float(np.mean([r.test[task][m] for r in mine])), float(np.std([r.test[task][m] for r in mine], ddof=1)) if len(mine) > 1 else 0.0)
                for m in METRICS if m in mine[0].test[task]
            }
        if mine[0].ab:
            for objective in ("by_clicks", "by_conversions"):
                for quantity in ("expected_clicks", "expected_conversions"):
                    values = [r.ab[objective][quantity] for r in mine]
                    out[name]["ab"][f"{objective}.{quantity}"] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            out[name]["ab_reference"] = {k: mine[0].ab[k] for k in ("oracle", "random", "requests", "top_k")}
    return out


def gain_threshold(*stds: float) -> float:
    """The gain rule's threshold: max(0.001, twice the larger seed std)."""
    return max(0.001, 2 * max(stds))


def format_table(summary: dict, baseline: str | list[str] | None = None, rules: dict | None = None) -> str:
    """A markdown table: model × task with NE, AUC, gAUC, logloss, calibration (mean ± std).

    ``baseline``: one model name or several; every other model is compared with each by the gain
    rule. ``rules``: ``{"validation": ..., "test": ...}`` from :func:`eventrec.evaluation.rules.rule_metrics`;
    the best rule per task (chosen on validation) gets a row with its test AUC and gAUC, and every
    model is compared with it on AUC."""
    lines = ["| model | task | NE | AUC | gAUC | logloss | calibration |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        for task, metrics in s["tasks"].items():
            cells = [f"{metrics[m][0]:.4f} ± {metrics[m][1]:.4f}" if m in metrics else "-" for m in METRICS]
            lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    best: dict[str, str] = {}
    if rules:
        from eventrec.evaluation.rules import best_rule

        tasks = list(dict.fromkeys(t for s in summary.values() for t in s["tasks"]))
        for task in tasks:
            best[task] = best_rule(rules["validation"], task)
            test = rules["test"][best[task]][task]
            lines.append(f"| best rule on validation: {best[task]} | {task} | - | {test['auc']:.4f} | {test['gauc']:.4f} | - | - |")
    baselines = [baseline] if isinstance(baseline, str) else list(baseline or [])
    comparisons = []
    for base_name in [b for b in baselines if b in summary]:
        for name, s in summary.items():
            if name in baselines:
                continue
            for task, metrics in s["tasks"].items():
                base = summary[base_name]["tasks"][task]
                d_auc = metrics["auc"][0] - base["auc"][0]
                d_ne = metrics["ne"][0] - base["ne"][0]
                threshold = gain_threshold(metrics["auc"][1], base["auc"][1])
                verdict = "gain" if d_auc > threshold and d_ne < 0 else ("loss" if d_auc < -threshold and d_ne > 0 else "no clear difference")
                comparisons.append(f"- {name} vs {base_name}, {task}: ΔAUC {d_auc:+.4f} (threshold {threshold:.4f}), ΔNE {d_ne:+.4f} → {verdict}")
    for name, s in summary.items():
        for task, metrics in s["tasks"].items():
            if task in best:
                d_auc = metrics["auc"][0] - rules["test"][best[task]][task]["auc"]
                threshold = gain_threshold(metrics["auc"][1])
                verdict = "gain" if d_auc > threshold else ("loss" if d_auc < -threshold else "no clear difference")
                comparisons.append(f"- {name} vs the best rule ({best[task]}), {task}: ΔAUC {d_auc:+.4f} (threshold {threshold:.4f}) → {verdict}")
    if comparisons:
        lines += [""] + comparisons
    ab_rows = [(n, s) for n, s in summary.items() if s.get("ab")]
    if ab_rows:
        ref = ab_rows[0][1]["ab_reference"]
        lines += ["", f"Offline A/B: {ref['requests']:,} held-out requests, top-{ref['top_k']} picks each, expected outcomes under the true probabilities:", "",
                  "| model | clicks (ranked by p̂ click) | conversions (ranked by p̂ conversion) |", "|---|---|---|"]
        for name, s in ab_rows:
            c, v = s["ab"]["by_clicks.expected_clicks"], s["ab"]["by_conversions.expected_conversions"]
            lines.append(f"| {name} | {c[0]:.1f} ± {c[1]:.1f} | {v[0]:.2f} ± {v[1]:.2f} |")
        lines.append(f"| oracle | {ref['oracle']['expected_clicks']:.1f} | {ref['oracle']['expected_conversions']:.2f} |")
        lines.append(f"| random | {ref['random']['expected_clicks']:.1f} | {ref['random']['expected_conversions']:.2f} |")
        for base_name in [b for b in baselines if summary.get(b, {}).get("ab")]:
            base_conv = summary[base_name]["ab"]["by_conversions.expected_conversions"][0]
            for name, s in ab_rows:
                if name not in baselines:
                    lift = s["ab"]["by_conversions.expected_conversions"][0] / base_conv - 1
                    lines.append(f"- {name} vs {base_name}: {lift:+.1%} expected conversions")
    return "\n".join(lines)
