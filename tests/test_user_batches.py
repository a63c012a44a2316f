"""Impressions grouped by user (``eventrec/data/user_batches.py``): each user's history encoded once,
each impression reading its prefix. The prefix search and match features follow their definitions,
and a model's logits and gradients on user batches equal those on per-impression batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eventrec.data.gather import make_batch
from eventrec.data.user_batches import make_user_batch
from eventrec.model.candidate_search import UserSearchIndex
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.match_features import match_features_before, match_features_reference
from eventrec.model.sequence_ranker import SequenceRanker
from eventrec.schema import load_schema
from eventrec.store.build import build_store
from eventrec.store.reader import EventStore
from eventrec.training.factory import batch_function
from test_candidate_search import _brute_force, _random_histories
from tiny_world import write_tiny_world

SMALL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], dropout=0.0)


def tiny_store(tmp: Path, max_length: int = 1024, sampling: str | None = None) -> EventStore:
    """The tiny world's store with every stream's ``max_length`` set (and ``sampling``, if given)."""
    schema_path = write_tiny_world(tmp / "tiny")
    schema = yaml.safe_load(schema_path.read_text())
    for stream in schema["streams"]:
        stream["max_length"] = max_length
        if sampling is not None:
            stream["sampling"] = sampling
    schema_path.write_text(yaml.safe_dump(schema))
    build_store(load_schema(schema_path), tmp / "tiny", tmp / "store")
    return EventStore.open(tmp / "store")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EventStore:
    return tiny_store(tmp_path_factory.mktemp("user_batches"))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("recent,per_match,summary", [(0, 1, True), (2, 1, True), (3, 2, False), (100, 100, True)])
def test_prefix_search_and_features_follow_the_definition(seed, recent, per_match, summary):
    """Each candidate over a random prefix of one history: the searched positions are those of the
    definition on that prefix, and the match features those of the reference on it."""
    ids, offsets, candidates, _ = _random_histories(seed, summary=summary)
    rng = np.random.default_rng(100 + seed)
    times = np.sort(rng.integers(0, 10_000, len(ids)))
    for g in range(len(offsets) - 1):
        history = ids[offsets[g] : offsets[g + 1]]
        n = len(history)
        if n == 0 or not len(candidates):
            continue
        cuts = rng.integers(0, n + 1, len(candidates))
        index = UserSearchIndex.build(torch.from_numpy(history))
        positions, candidate = index.positions_before(torch.from_numpy(candidates), torch.from_numpy(cuts), recent, per_match, summary)
        assert (np.diff(candidate.numpy() * (n + 1) + positions.numpy()) > 0).all()  # sorted, no duplicates
        requests = torch.from_numpy(rng.integers(10_000, 20_000, len(candidates)))
        features = match_features_before(index, torch.from_numpy(times[offsets[g] : offsets[g + 1]]), requests, torch.from_numpy(candidates),
                                         torch.from_numpy(cuts))
        for c, wanted in enumerate(candidates):
            prefix = history[: cuts[c]]
            assert set(positions[candidate == c].tolist()) == _brute_force(prefix, wanted, recent, per_match, summary)
            expected = match_features_reference(torch.from_numpy(prefix), torch.tensor([0, cuts[c]]), torch.from_numpy(times[offsets[g] : offsets[g] + cuts[c]]),
                                                requests[c : c + 1], torch.from_numpy(wanted[None]), torch.zeros(1, dtype=torch.int64))
            torch.testing.assert_close(features[c : c + 1], expected, rtol=1e-6, atol=1e-6)


def test_user_batch_holds_one_history_per_user_and_each_impression_s_prefix(store):
    every = np.arange(store.num_examples)
    grouped, single = make_user_batch(store, every), make_batch(store, every)
    users = np.unique(store.user_rows)
    assert grouped.num_histories == len(users) and grouped.num_histories < single.num_histories
    for b in range(len(every)):
        g, h = int(grouped.history_index[b]), int(single.history_index[b])
        for name in store.streams:
            mine, full = single.streams[name], grouped.streams[name]
            own = mine.timestamps[mine.offsets[h] : mine.offsets[h + 1]]
            users_events = full.timestamps[full.offsets[g] : full.offsets[g + 1]]
            assert torch.equal(users_events[: len(own)], own)  # a prefix of the user's stream
            assert (users_events[len(own) :] >= single.request_timestamps[b]).all()
        assert int(grouped.history_cuts[b]) == sum(int(s.lengths()[h]) for s in single.streams.values())


def test_user_batches_are_refused_where_a_history_is_not_a_prefix(tmp_path):
    short = tiny_store(tmp_path / "short", max_length=2)
    with pytest.raises(ValueError, match=r"streams\.click: a user has \d+ events before its latest impression, more than max_length 2"):
        make_user_batch(short, np.arange(short.num_examples))
    model = SequenceRanker(FeatureSpec.from_store(short), SequenceModelConfig(**SMALL))
    with pytest.raises(ValueError, match="candidate_search"):
        model.check_prefix_batches()
    reading_time = SequenceRanker(FeatureSpec.from_store(short), SequenceModelConfig(**SMALL, recency="encoder", candidate_search={"recent": 1, "per_match": 1}))
    with pytest.raises(ValueError, match="causal and not read the request time"):
        reading_time.check_prefix_batches()


@pytest.mark.parametrize("config", [
    dict(candidate_search={"recent": 1, "per_match": 1}),
    dict(candidate_search={"recent": 2, "per_match": 3}, summary_token=False),
    dict(candidate_search={"recent": 1, "per_match": 2}, encoder="linear"),
    dict(candidate_search={"recent": 0, "per_match": 1}, match_features=False),
    dict(candidate_search={"recent": 1, "per_match": 1}, experimental={"match_windows": [3600, 86400 * 30]}),
    dict(candidate_search={"recent": 1, "per_match": 1}, item_counters=None),
], ids=["search", "no_summary", "linear", "no_features", "windows", "no_item_counters"])
def test_logits_and_gradients_equal_per_impression_batches(store, config):
    torch.manual_seed(0)
    model = SequenceRanker(FeatureSpec.from_store(store), SequenceModelConfig(**SMALL, **config)).train()
    every = np.arange(store.num_examples)
    outputs = {}
    model_config = SequenceModelConfig(**SMALL, **config)
    for name, batch in (("grouped", batch_function(model_config, user_batches=True)(store, every)), ("single", batch_function(model_config)(store, every))):
        model.zero_grad()
        logits = model(batch)
        logits.square().sum().backward()
        grads = {n: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        outputs[name] = (logits.detach(), grads)  # sparse (embedding) gradients: one row per copy of an event; compared dense
    torch.testing.assert_close(outputs["grouped"][0], outputs["single"][0], rtol=1e-5, atol=1e-5)
    assert outputs["grouped"][1].keys() == outputs["single"][1].keys()
    for name, grad in outputs["grouped"][1].items():
        torch.testing.assert_close(grad, outputs["single"][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_training_on_user_batches(store, tmp_path):
    """``experimental.user_batches``: batches of whole users; the best weights' validation predictions
    on user batches equal those on per-impression batches; a model that cannot read them is refused."""
    from eventrec.evaluation.predict import predict
    from eventrec.training.factory import load_trained_model
    from eventrec.training.trainer import TrainConfig, train

    config = SequenceModelConfig(**SMALL, candidate_search={"recent": 1, "per_match": 1})
    train_config = TrainConfig(epochs=2, batch_size=4, warmup_steps=1, experimental={"user_batches": True})
    train(store, config, train_config, tmp_path / "run", show_progress=False)
    model = load_trained_model(tmp_path / "run" / "best", store)[0]
    every = np.arange(store.num_examples)
    np.testing.assert_allclose(predict(model, store, every, batch_function(model.config, user_batches=True), 5),
                               predict(model, store, every, batch_function(model.config), 5), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="candidate_search"):
        train(store, SequenceModelConfig(**SMALL), train_config, tmp_path / "refused", show_progress=False)
    from typer.testing import CliRunner

    from eventrec.cli import app

    reports = []
    for flags in ([], ["--user-batches"]):
        result = CliRunner().invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(tmp_path / "run" / "best"), "--split", "train", *flags])
        assert result.exit_code == 0, result.output
        reports.append([line for line in result.output.splitlines() if "model AUC" in line])
    assert reports[0] == reports[1] and len(reports[0]) == len(store.label_names)


def test_an_epoch_of_whole_users_has_its_own_number_of_batches(store, tmp_path):
    """Batches pack whole users from each epoch's shuffled order, so epochs can differ in batch count:
    every epoch is trained to its own end and validated there (a fixed count from the first epoch
    asked a shorter epoch for a batch it does not have: IndexError)."""
    import json

    from eventrec.data.loader import BatchDataset
    from eventrec.training.trainer import TrainConfig, train

    train_split = store.split_indices("train")
    lengths = {}
    for batch_size in range(2, 12):
        for seed in range(8):
            dataset = BatchDataset(store, "train", batch_size, shuffle=True, seed=seed, groups=store.user_rows[train_split])
            counts = []
            for epoch in range(3):
                dataset.set_epoch(epoch)
                counts.append(len(dataset))
            if min(counts[1:]) < counts[0]:  # a later epoch shorter than the first
                lengths[(batch_size, seed)] = counts
    assert lengths, "the tiny store (3 training impressions of 2 users) has a batch size whose epochs differ in batch count"
    (batch_size, seed), counts = next(iter(lengths.items()))
    config = SequenceModelConfig(**SMALL, candidate_search={"recent": 1, "per_match": 1})
    train_config = TrainConfig(epochs=3, batch_size=batch_size, seed=seed, warmup_steps=1, patience=5, experimental={"user_batches": True})
    train(store, config, train_config, tmp_path / "run", show_progress=False)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["steps"] == sum(counts)
    assert [h["step"] for h in result["history"]] == list(np.cumsum(counts))
