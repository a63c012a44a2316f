"""Item counters (``eventrec/data/item_counters.py``): what all users did with the candidate before the
request, point-in-time, equal to the per-impression definition; read by the model only when configured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eventrec.data.gather import make_batch
from eventrec.data.item_counters import ItemCounters, PairIndex, item_counters_of, item_counts_reference
from eventrec.data.requests import store_for_requests
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.sequence_ranker import SequenceRanker
from eventrec.training.factory import batch_function

SMALL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], dropout=0.0)


def test_counts_follow_the_definition(tiny_store):
    every = np.arange(tiny_store.num_examples)
    counters = ItemCounters.from_store(tiny_store)
    assert [p.name for p in counters.pairs] == ["click.ad_id==ad_id", "click.category==category", "view.category==category"]
    for windows in ((), (30, 100), (1, 2, 1000)):
        np.testing.assert_array_equal(counters.counts_of_examples(tiny_store, every, windows), item_counts_reference(tiny_store, every, windows))


def test_counts_by_hand(tiny_store):
    """Impression 7 (t=400, ad 5, shoes): clicks on ad 5 at 10 and 300, shoes clicked at 10 and 300, viewed at
    12; impression 4 (t=150, bags): the bags click at 150 is not before it (equal time), the bags view at 5 is;
    impression 6's category "new" is out of vocabulary (first seen after training): it counts nothing."""
    counts = ItemCounters.from_store(tiny_store).counts_of_examples(tiny_store, np.array([6, 3, 5]), (100,))
    np.testing.assert_array_equal(counts[0], [2, 1, 2, 1, 1, 0])  # per pair: whole history, last 100 s
    np.testing.assert_array_equal(counts[1, 2:], [0, 0, 1, 0])
    np.testing.assert_array_equal(counts[2, 2:], [0, 0, 0, 0])


@pytest.mark.parametrize("seed", range(4))
def test_pair_index_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    ids, times = rng.integers(0, 6, 200), rng.integers(0, 50, 200)  # repeated ids and equal times
    index = PairIndex.build(ids, times, reserved=(0,))
    queries, at = rng.integers(-1, 9, 100), rng.integers(-5, 60, 100)  # ids never seen, reserved, before every event
    expected = [0 if q <= 0 else int(((ids == q) & (times < t)).sum()) for q, t in zip(queries, at)]
    np.testing.assert_array_equal(index.count_before(queries, at), expected)


def test_request_views_share_the_store_counters(tiny_store):
    import polars as pl

    counters = item_counters_of(tiny_store)
    assert item_counters_of(tiny_store) is counters
    frame = pl.DataFrame({"user_id": [1, 9], "timestamp": [400, 400], "ad_id": [5, 5], "category": ["shoes", "shoes"], "placement": ["feed", "feed"]})
    view = store_for_requests(tiny_store, frame)
    assert item_counters_of(view) is counters  # a new (even unknown) user: the same counts as anyone's
    np.testing.assert_array_equal(counters.counts_of_examples(view, np.arange(2), (100,)), [[2, 1, 2, 1, 1, 0]] * 2)


def test_the_model_reads_them_only_when_configured(tiny_store):
    every = np.arange(tiny_store.num_examples)
    spec = FeatureSpec.from_store(tiny_store)
    config = SequenceModelConfig(**SMALL, item_counters=[100])
    model = SequenceRanker(spec, config).eval()
    assert model.item_counter_features == 6
    with pytest.raises(ValueError, match="no item_counts"):
        model(make_batch(tiny_store, every))
    batch = batch_function(config)(tiny_store, every)
    assert batch.item_counts.shape == (len(every), 6)
    logits = model(batch)
    batch.item_counts = batch.item_counts * 10
    assert not torch.allclose(model(batch), logits)  # the counts reach the logits
    assert batch_function(SequenceModelConfig(**SMALL, item_counters=None)) is make_batch  # without them: nothing computed
    assert SequenceModelConfig(**SMALL).item_counter_windows == (86_400, 604_800, 2_592_000)  # the default
    assert SequenceModelConfig(**SMALL, experimental={"item_counters": [100]}).item_counters == [100]  # as written while experimental
    with pytest.raises(ValueError, match="item_counters: positive seconds in increasing order"):
        SequenceModelConfig(**SMALL, item_counters=[100, 50])


def test_the_engineered_dlrm_reads_them_by_window(tiny_store):
    from eventrec.data.dlrm_features import DlrmFeatureBuilder
    from eventrec.model.config import DlrmConfig

    windows = {"100s": 100, "all": None, "30s": 30}  # the whole history between two finite windows
    every = np.arange(tiny_store.num_examples)
    plain = DlrmFeatureBuilder(windows)(tiny_store, every)
    counted = DlrmFeatureBuilder(windows, item_counters=True)(tiny_store, every)
    names = counted.dense_names
    assert names[: len(plain.dense_names)] == plain.dense_names and counted.dense.shape == (len(every), len(names))
    expected = item_counts_reference(tiny_store, every, (100, 30))  # per pair: all, 100 s, 30 s
    for p, pair in enumerate(["click.ad_id==ad_id", "click.category==category", "view.category==category"]):
        for column, window in ((1, "100s"), (0, "all"), (2, "30s")):
            got = counted.dense[:, names.index(f"{pair}.{window}.log_item_count")].numpy()
            np.testing.assert_allclose(got, np.log1p(expected[:, 3 * p + column]), rtol=1e-6)
    with pytest.raises(ValueError, match="item_counters: an engineered feature"):
        DlrmConfig(features="id_bags", item_counters=True)
    assert DlrmConfig().reads_item_counters and not DlrmConfig(features="id_bags").reads_item_counters


def test_configs_recorded_before_them_load_without_them():
    from eventrec.model.config import DlrmConfig, as_recorded

    assert SequenceModelConfig(**as_recorded({"kind": "sequence", **SMALL})).item_counters is None
    assert not DlrmConfig(**as_recorded({"kind": "dlrm"})).reads_item_counters
    assert as_recorded({"kind": "dlrm", "features": "id_bags"})["item_counters"] is None  # id bags: the same config as today's
    assert DlrmConfig(**as_recorded(DlrmConfig().model_dump(mode="json"))).reads_item_counters  # a new dump keeps them
