"""How much does truncating the history cost on a long-history world? The truncated-oracle report.

For every impression, the world's own click probability from the full history (``p_click``) is
compared with the same formula evaluated on only the last N events before the impression
(:func:`~eventrec.synthetic.long_model.probabilities` with ``length=N``), and two cheap rules are
compared: "the user ever engaged with the ad's category" vs "... within the last N events". Two
AUCs per score: against the click labels, and against the true probabilities as soft labels
(:func:`expected_auc`, no label noise). Run on a written world:
``python -m eventrec.synthetic.long_truncation WORLD_DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from eventrec.evaluation.metrics import auc
from eventrec.synthetic.long_history import LongHistoryIndex, WindowCounts
from eventrec.synthetic.long_model import organic_terms, probabilities
from eventrec.synthetic.long_world import LongWorld
from eventrec.synthetic.model import PLACEMENT_EFFECT, _sigmoid
from eventrec.synthetic.world import hour_effect

LENGTHS = (64, 256, 1024, 4096)
RULE_LENGTHS = (64, 256)


def expected_auc(p_true: np.ndarray, scores: np.ndarray) -> float:
    """AUC of ``scores`` when row i is a positive with probability ``p_true[i]`` (ties count 1/2).

    = sum_ij p_i (1 - p_j) ([s_i > s_j] + [s_i = s_j] / 2) / (sum p * sum (1 - p)): the AUC against
    labels drawn from ``p_true``, in expectation over the pairs, without the label noise.
    """
    order = np.argsort(scores, kind="stable")
    s = np.asarray(scores, np.float64)[order]
    pos = np.asarray(p_true, np.float64)[order]
    neg = 1.0 - pos
    if len(s) == 0 or pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    start = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    group_pos = np.add.reduceat(pos, start)
    group_neg = np.add.reduceat(neg, start)
    below = np.cumsum(group_neg) - group_neg
    return float((group_pos * (below + 0.5 * group_neg)).sum() / (pos.sum() * neg.sum()))


def window_features(world: LongWorld, ads: np.ndarray, placement: np.ndarray, hour: np.ndarray,
                    counts: WindowCounts) -> np.ndarray:
    """What a model reading a window could compute: ``[n, F]`` float64 (the truth's own terms of the
    window, log counts, the window's length, placement, hour and price), for :func:`fitted_aucs`."""
    terms = organic_terms(world, ads, counts)
    cols = [terms["recent"], terms["memory"], terms["returning"], terms["price"],
            (counts.clicks > 0).astype(np.float64), (counts.conversions > 0).astype(np.float64),
            np.log1p(counts.ever), np.log1p(counts.last_2d), np.log1p(counts.between), np.log1p(counts.window),
            hour_effect(hour)]
    cols += [(placement == k).astype(np.float64) for k in range(1, len(PLACEMENT_EFFECT))]
    return np.stack(cols, axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iterations: int = 25) -> np.ndarray:
    """Weights ``[F + 1]`` (bias last) of an L2-regularised logistic regression, by Newton's method."""
    x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.zeros(x1.shape[1])
    ridge = l2 * len(x) * np.eye(x1.shape[1])
    ridge[-1, -1] = 0.0
    for _ in range(iterations):
        p = _sigmoid(x1 @ w)
        grad = x1.T @ (p - y) + ridge @ w
        hess = (x1 * (p * (1 - p))[:, None]).T @ x1 + ridge
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fitted_aucs(world: LongWorld, index: LongHistoryIndex, users, t, ads, placement, hour, click, p_click,
                lengths, train_fraction: float = 0.7) -> dict:
    """Test AUCs of a logistic regression fitted on the features of each window (``None``: full history).

    Impressions are split by time: the first ``train_fraction`` train, the rest test. Returns
    ``{str(length) or "full": {"auc", "expected_auc"}}``: what a simple model can learn from N events.
    """
    order = np.argsort(t, kind="stable")
    n_train = int(train_fraction * len(order))
    train, test = order[:n_train], order[n_train:]
    click = np.asarray(click).astype(np.float64)
    base = world.base
    out = {}
    for n in list(lengths) + [None]:
        counts = index.counts(users, t, base.ad_category[ads], base.ad_advertiser[ads], length=n)
        x = window_features(world, ads, placement, hour, counts)
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
        w = fit_logistic(x[train], click[train])
        score = x[test] @ w[:-1] + w[-1]
        out["full" if n is None else str(n)] = {"auc": round(auc(click[test].astype(bool), score), 4),
                                                "expected_auc": round(expected_auc(p_click[test], score), 4)}
    return out


def truncation_report(world: LongWorld, index: LongHistoryIndex, users, t, ads, placement, hour, click,
                      p_click, lengths=LENGTHS, rule_lengths=RULE_LENGTHS, fitted: bool = True) -> dict:
    """AUCs of the full-history truth, of truncated oracles and of the category rules (see the module).

    ``users``/``ads`` 0-based, ``t`` seconds from the start, ``click`` 0/1 and ``p_click`` (the
    truth) ``[n]`` per impression.
    """
    base = world.base
    click = np.asarray(click).astype(bool)
    p_click = np.asarray(p_click, np.float64)
    category, advertiser = base.ad_category[ads], base.ad_advertiser[ads]
    full = index.counts(users, t, category, advertiser)
    history = full.window

    def row(score) -> dict:
        return {"auc": round(auc(click, score), 4), "expected_auc": round(expected_auc(p_click, score), 4)}

    report = {
        "impressions": int(len(click)),
        "clicks": int(click.sum()),
        "history_at_impression": {"mean": round(float(history.mean()), 1) if len(history) else None,
                                  **{f"p{q}": int(np.percentile(history, q)) if len(history) else None
                                     for q in (50, 90, 99)},
                                  "max": int(history.max()) if len(history) else None},
        "full": row(p_click),
        "truncated": {},
        "rules": {"ever_engaged_category": row((full.ever > 0).astype(np.float64))},
    }
    for n in lengths:
        p_n, _ = probabilities(world, index, users, t, ads, placement, hour, length=n)
        entry = row(p_n)
        entry["impressions_with_longer_history"] = round(float((history > n).mean()), 4) if len(history) else None
        entry["auc_gap"] = round(report["full"]["auc"] - entry["auc"], 4)
        entry["expected_auc_gap"] = round(report["full"]["expected_auc"] - entry["expected_auc"], 4)
        report["truncated"][str(n)] = entry
    report["rules"]["engaged_category_over_14_days_ago"] = row((full.old > 0).astype(np.float64))
    report["rules"]["log_events_of_category"] = row(np.log1p(full.ever))
    for n in rule_lengths:
        window = index.counts(users, t, category, advertiser, length=n)
        report["rules"][f"engaged_category_in_last_{n}"] = row((window.ever > 0).astype(np.float64))
        report["rules"][f"log_events_of_category_in_last_{n}"] = row(np.log1p(window.ever))
    if fitted:
        report["fitted"] = fitted_aucs(world, index, users, t, ads, placement, hour, click, p_click, lengths)
    return report


def report_for_directory(directory: str | Path, lengths=LENGTHS) -> dict:
    """:func:`truncation_report` on a written long world (reads events and impressions)."""
    import polars as pl

    from eventrec.synthetic.generate import load_world
    from eventrec.synthetic.long_model import index_from_frame
    from eventrec.synthetic.world import PLACEMENTS

    directory = Path(directory)
    world = load_world(directory)
    if not isinstance(world, LongWorld):
        raise ValueError(f"{directory}: not a long-history world (generate it with preset='long')")
    cfg = world.config
    index = index_from_frame(world, pl.read_parquet(directory / "events.parquet"))
    imp = pl.read_parquet(directory / "impressions.parquet")
    placement = imp["placement"].replace_strict({n: i for i, n in enumerate(PLACEMENTS)},
                                                return_dtype=pl.Int64).to_numpy()
    return truncation_report(world, index, imp["user_id"].to_numpy() - 1,
                             imp["timestamp"].to_numpy() - cfg.start_timestamp, imp["ad_id"].to_numpy() - 1,
                             placement, imp["hour_of_day"].to_numpy(), imp["click"].to_numpy(),
                             imp["p_click"].to_numpy(), lengths=lengths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("world", type=Path, help="a directory written by generate_world(..., preset='long')")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="history lengths to truncate to")
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.lengths):
        parser.error("--lengths: expected positive integers")
    try:
        report = report_for_directory(args.world, lengths=tuple(args.lengths))
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
