"""Rule baselines on the tiny world (tests/tiny_world.py), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eventrec.evaluation.rules import NEVER, best_rule, rule_metrics, rule_scores


def test_rule_scores_by_hand(tiny_store):
    scores = rule_scores(tiny_store, np.arange(7))
    assert scores["count of ad_id in history"][:, 0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    # click.category and view.category summed: example 1 (t=90, hats) sees the two hat clicks at 50
    assert scores["count of category in history"][:, 0].tolist() == [0, 2, 0, 0, 0, 0, 1]
    assert scores["recency of ad_id"][:, 0].tolist() == [NEVER] * 5 + [-40, -100]
    # clicks [1, 0, 0, 1, 0, 0, 1]; training = examples 0..2 (t < 100), base rate 1/3
    rate = scores["user's earlier positive rate"][:, 0]
    assert rate[0] == pytest.approx(1 / 3)  # no earlier impression: the base rate
    assert rate[3] == pytest.approx((1 + 1 / 3) / 3)  # user 1 at 150: examples 0 (1) and 1 (0)
    assert rate[5] == pytest.approx((2 + 1 / 3) / 4)  # user 1 at 250: examples 0, 1, 3
    assert rate[6] == pytest.approx((0 + 1 / 3) / 2)  # user 2 at 400: example 2
    # conversions [0, -, 0, 1, -, 0, 0]: missing labels are skipped; training base rate 0
    assert scores["user's earlier positive rate"][5, 1] == pytest.approx(1 / 3)
    popularity = scores["item popularity in training"][:, 0]
    assert popularity.tolist() == [1, 0, 0, 0, 0, 0, 0]  # ad 6's click in training; ad 5's training impression had none
    # every user's events strictly before the impression: ad 5 clicked at 10 (user 1) and 300 (user 2), ad 99 at 210
    assert scores["count of ad_id by all users"][:, 0].tolist() == [0, 0, 1, 0, 1, 1, 2]
    # clicks and views summed: shoes at 10, 12, 300; bags viewed at 5 (its click at 150 is not before example 3);
    # example 5's category "new" is out of vocabulary: it counts nothing
    assert scores["count of category by all users"][:, 0].tolist() == [0, 2, 2, 1, 2, 0, 3]


def test_best_rule_is_chosen_on_validation(tiny_store):
    validation = rule_metrics(tiny_store, "validation")
    test = rule_metrics(tiny_store, "test")
    assert set(validation) == set(test) and "recency of ad_id" in test
    name = best_rule(validation, "click")
    finite = {n: m["click"]["auc"] for n, m in validation.items() if not np.isnan(m["click"]["auc"])}
    assert name in finite and finite[name] == max(finite.values())


def test_a_derived_label_counts_once_its_window_closed(tiny_store, monkeypatch):
    from eventrec.evaluation import rules

    monkeypatch.setattr(rules, "label_delays", lambda store: np.array([100, 0]))
    rate = rules.user_positive_rates(tiny_store, np.arange(7))[:, 0]
    # user 1 at 150: example 0 (t=50) is known at 150, not before it: only nothing counts → base rate
    assert rate[3] == pytest.approx(1 / 3)
    # user 1 at 250: examples 0 (known at 150) and 1 (known at 190); example 3 (known at 250) not yet
    assert rate[5] == pytest.approx((1 + 1 / 3) / 3)
