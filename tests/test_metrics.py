from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from eventrec.evaluation.metrics import NonFiniteScores, auc, calibration, group_auc, logloss, normalized_entropy, task_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    p = np.clip(rng.beta(2, 5, 2000), 1e-4, 1 - 1e-4)
    p_tied = np.round(p, 2)  # many ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auc(y, p_tied) == pytest.approx(roc_auc_score(y, p_tied), abs=1e-12)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)
    base = y.mean()
    assert normalized_entropy(y, p) == pytest.approx(log_loss(y, p) / log_loss(y, np.full(len(y), base)), rel=1e-9)
    assert calibration(y, p) == pytest.approx(p.sum() / y.sum())


def test_group_auc_is_the_weighted_mean_of_per_group_aucs():
    rng = np.random.default_rng(5)
    y, s, g = rng.integers(0, 2, 3000), np.round(rng.random(3000), 2), rng.integers(0, 80, 3000)
    per_group, weights = [], []
    for group in np.unique(g):
        m = g == group
        if 0 < y[m].sum() < m.sum():
            per_group.append(roc_auc_score(y[m], s[m]))
            weights.append(m.sum())
    assert group_auc(y, s, g) == pytest.approx(np.average(per_group, weights=weights), abs=1e-12)


def test_degenerate_cases():
    assert np.isnan(auc(np.ones(5), np.random.rand(5)))
    assert np.isnan(group_auc(np.zeros(4), np.arange(4.0), np.array([0, 0, 1, 1])))
    assert normalized_entropy(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(1.0)
    out = task_metrics(np.array([np.nan, 1.0, 0.0]), np.array([0.9, 0.8, 0.1]))
    assert out["count"] == 2 and out["auc"] == 1.0


def test_platt_scaling_recovers_scale_and_bias():
    import torch

    from eventrec.model.heads import fit_platt

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=generator)
    y = (torch.rand(20000, generator=generator) < torch.sigmoid(2.0 * z - 1.0)).float()
    y[:100] = float("nan")  # missing labels are ignored
    a, b = fit_platt(z, y)
    assert abs(a - 2.0) < 0.1 and abs(b + 1.0) < 0.1
    assert fit_platt(z, torch.zeros(20000)) == (1.0, 0.0)  # one class only: identity


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_refused_naming_the_rows(bad):
    """All-NaN scores gave an AUC of 0.47 (issue 21, item 9): now every metric refuses them."""
    y = np.array([0, 1, 0, 1, 1, 0])
    all_bad = np.full(6, bad)
    for metric in (auc, logloss, normalized_entropy, calibration):
        with pytest.raises(NonFiniteScores, match="6 of 6"):
            metric(y, all_bad)
    with pytest.raises(NonFiniteScores, match="6 of 6"):
        group_auc(y, all_bad, np.array([0, 0, 0, 1, 1, 1]))
    one_bad = np.array([0.1, 0.9, 0.2, bad, 0.8, 0.3])
    with pytest.raises(NonFiniteScores, match=r"1 of 6 .* at positions \[3\]"):
        task_metrics(y.astype(float), one_bad)
    with pytest.raises(NonFiniteScores):  # also where the label is missing
        task_metrics(np.array([0.0, 1.0, np.nan]), np.array([0.1, 0.9, bad]))


def test_json_ready_turns_undefined_metrics_into_null():
    import json

    from eventrec.evaluation.metrics import json_ready

    out = json.dumps(json_ready({"auc": float("nan"), "x": [np.float32(np.inf), np.int64(3)], "ne": np.float64(0.5)}))
    assert out == '{"auc": null, "x": [null, 3], "ne": 0.5}'


def test_worse_than_constant_warns_only_above_one():
    from eventrec.evaluation.metrics import worse_than_constant

    assert worse_than_constant({"click": {"ne": 1.02}}, "click") and "1.0200" in worse_than_constant({"click": {"ne": 1.02}}, "click")
    assert worse_than_constant({"click": {"ne": 0.98}}, "click") is None
    assert worse_than_constant({"click": {"count": 0}}, "click") is None and worse_than_constant({}, "click") is None
