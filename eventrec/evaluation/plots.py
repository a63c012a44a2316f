"""PNG plots of a comparison: training curves, calibration (reliability), NE by history length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from eventrec.evaluation.experiment import SeedRun  # noqa: E402
from eventrec.store.reader import EventStore  # noqa: E402


def training_curves(out_dir: Path, runs: list[SeedRun], path: Path) -> None:
    """Left: each run's smoothed training loss; right: its validation NE (primary task), both by step
    (a run validates several times per epoch)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        log = out_dir / f"{run.model}_seed{run.seed}" / "train_log.csv"
        if log.exists():
            frame = pl.read_csv(log)
            loss = frame["loss"].to_numpy()
            window = max(1, len(loss) // 50)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            left.plot(frame["step"].to_numpy()[: len(smooth)], smooth, label=f"{run.model} s{run.seed}", alpha=0.8)
        evals = out_dir / f"{run.model}_seed{run.seed}" / "eval_log.csv"
        if evals.exists():
            frame = pl.read_csv(evals)
            task = frame["task"][0]
            frame = frame.filter(pl.col("task") == task)
            right.plot(frame["step"].to_numpy(), frame["ne"].to_numpy(), marker="o", label=f"{run.model} s{run.seed}")
    left.set(title="training loss (smoothed)", xlabel="step", ylabel="loss")
    right.set(title="validation NE (primary task)", xlabel="step", ylabel="NE")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_plot(store: EventStore, out_dir: Path, runs: list[SeedRun], path: Path, bins: int = 12) -> None:
    test = store.split_indices("test")
    labels = store.labels[test, 0]
    present = ~np.isnan(labels)
    fig, ax = plt.subplots(figsize=(5, 5))
    top = 0.0
    for run in runs:
        if run.seed != runs[0].seed:
            continue
        probs = np.load(out_dir / f"{run.model}_seed{run.seed}" / "test_predictions.npy")[:, 0][present]
        y = labels[present]
        edges = np.quantile(probs, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, bins - 1)
        predicted = np.bincount(which, probs, bins) / np.maximum(np.bincount(which, minlength=bins), 1)
        observed = np.bincount(which, y, bins) / np.maximum(np.bincount(which, minlength=bins), 1)
        ax.plot(predicted, observed, marker="o", label=run.model)
        top = max(top, predicted.max(), observed.max())
    ax.plot([0, top], [0, top], "k--", linewidth=1, label="perfect")
    ax.set(title=f"calibration on test ({store.label_names[0]})", xlabel="mean predicted", ylabel="observed rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ne_by_history_length(runs: list[SeedRun], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    models = list(dict.fromkeys(r.model for r in runs))
    segments = [k for k in runs[0].segments if k.startswith("history")]
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        mine = [r for r in runs if r.model == model]
        means = [np.mean([r.segments[s]["ne"] for r in mine if s in r.segments]) for s in segments]
        stds = [np.std([r.segments[s]["ne"] for r in mine if s in r.segments]) for s in segments]
        ax.bar(np.arange(len(segments)) + i * width, means, width, yerr=stds, label=model)
    ax.set_xticks(np.arange(len(segments)) + width * (len(models) - 1) / 2, [s.replace("history ", "") for s in segments])
    ax.set(title="test NE by history length (events before the impression)", xlabel="history length", ylabel="NE (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(store: EventStore, out_dir: Path, runs: list[SeedRun]) -> list[Path]:
    paths = [out_dir / "training_curves.png", out_dir / "calibration.png", out_dir / "ne_by_history_length.png"]
    training_curves(out_dir, runs, paths[0])
    calibration_plot(store, out_dir, runs, paths[1])
    ne_by_history_length(runs, paths[2])
    return paths
