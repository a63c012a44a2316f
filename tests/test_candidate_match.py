"""Candidate-match statistics and numeric aggregates (the engineered DLRM's features and the rules'
scores), checked by hand on the tiny world (see tests/tiny_world.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eventrec.data.candidate_match import MatchPair, match_pairs, match_statistics, numeric_means
from eventrec.data.dlrm_features import DlrmFeatureBuilder

WINDOWS = {"30s": 30, "all": None}


def test_pairs_are_the_shared_vocabularies(tiny_store):
    names = [p.name for p in match_pairs(tiny_store.schema)]
    assert names == ["click.ad_id==ad_id", "click.category==category", "view.category==category"]


def test_counts_and_recency_by_hand(tiny_store):
    everything = np.arange(7)
    ad = match_statistics(tiny_store, everything, MatchPair("click", "ad_id", "ad_id"), WINDOWS)
    # example 5 (user 1, ad 99, t=250): the click of ad 99 at 210; example 6 (user 2, ad 5, t=400): the click at 300
    assert ad.counts[:, 1].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert ad.counts[:, 0].tolist() == [0, 0, 0, 0, 0, 0, 0]  # 30 s windows: 220..249 and 370..399 hold none
    assert ad.seconds_since_last[5] == 40 and ad.seconds_since_last[6] == 100
    assert np.isnan(ad.seconds_since_last[[0, 1, 2, 3, 4]]).all()
    category = match_statistics(tiny_store, everything, MatchPair("click", "category", "category"), WINDOWS)
    # example 1 (t=90, hats): the two hat clicks at t=50, 40 s before; example 0 (t=50) sees neither (equal timestamps)
    assert category.counts[:, 1].tolist() == [0, 2, 0, 0, 0, 0, 1]
    assert category.seconds_since_last[1] == 40
    # example 5's category "new" is out of the vocabulary (first seen after training): OOV never matches,
    # though the click at 210 is OOV too
    assert category.counts[5, 1] == 0 and np.isnan(category.seconds_since_last[5])
    view = match_statistics(tiny_store, everything, MatchPair("view", "category", "category"), WINDOWS)
    # example 5 (t=250, "new"): none; example 3 (t=150, bags): views shoes@12, hats@120; example 6: bags@5 ≠ shoes
    assert view.counts[:, 1].tolist() == [0, 0, 0, 0, 0, 0, 0]


def test_counts_never_see_the_impression_second_or_later(tiny_store):
    """Point-in-time: a pair's counts on each example equal a brute-force count over raw events before it."""
    everything = np.arange(tiny_store.num_examples)
    for pair in match_pairs(tiny_store.schema):
        stats = match_statistics(tiny_store, everything, pair, {"all": None})
        data = tiny_store.streams[pair.stream]
        column = data.attributes[pair.event_attribute]
        for example in everything:
            row = tiny_store.user_rows[example]
            lo, hi = data.user_offsets[row], data.user_offsets[row + 1]
            before = [e for e in range(lo, hi) if data.timestamps[e] < tiny_store.timestamps[example]]
            candidate = tiny_store.item[pair.item_attribute][example]
            expected = sum(1 for e in before if column[e] == candidate and candidate > 1)
            assert stats.counts[example, 0] == expected, (pair.name, example)


def test_numeric_means_and_last(tiny_store):
    price = tiny_store.streams["click"].attributes["price"]
    user1 = tiny_store.streams["click"].user_offsets[tiny_store.user_rows[1]]
    means, last = numeric_means(tiny_store, np.array([1, 2, 3]), "click", "price", WINDOWS)
    # example 1 (t=90): user 1's clicks at 10, 50, 50; the 30 s window (60..89) is empty
    assert means[0, 1] == pytest.approx(np.mean(price[user1 : user1 + 3]), rel=1e-6)
    assert means[0, 0] == 0.0 and last[0] == pytest.approx(price[user1 + 2])
    assert means[1].tolist() == [0.0, 0.0] and last[1] == 0.0  # example 2: user 2 has no click before t=95
    # example 3 (t=150): the null price of the click at 150 is not before it; three known prices
    assert means[2, 1] == pytest.approx(np.mean(price[user1 : user1 + 3]), rel=1e-6)


def test_engineered_dlrm_has_the_match_columns(tiny_store):
    engineered = DlrmFeatureBuilder(WINDOWS)(tiny_store, np.arange(7))
    plain = DlrmFeatureBuilder(WINDOWS, engineered=False)(tiny_store, np.arange(7))
    names = engineered.dense_names
    assert names[: len(plain.dense_names)] == plain.dense_names
    assert engineered.dense.shape == (7, len(names)) and plain.dense.shape == (7, len(plain.dense_names))
    assert engineered.dense[:, names.index("click.ad_id==ad_id.all.log_count")].tolist() == pytest.approx(np.log1p([0, 0, 0, 0, 0, 1, 1]).tolist())
    assert engineered.dense[:, names.index("click.ad_id==ad_id.has_match")].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert engineered.dense[6, names.index("click.ad_id==ad_id.log_seconds_since_last")].item() == pytest.approx(np.log1p(100))
    assert "click.price.all.mean" in names and "click.price.last" in names
    assert np.isfinite(engineered.dense.numpy()).all()


def test_named_models():
    from eventrec.training.factory import default_config

    assert default_config("dlrm").features == "engineered"
    assert default_config("dlrm_id_bags").features == "id_bags"
    assert default_config("dlrm_id_bags", {"attribute_dim": 8, "bottom_mlp": [8]}).attribute_dim == 8
    with pytest.raises(ValueError, match="dlrm_id_bags"):
        default_config("dlrm_v0")
