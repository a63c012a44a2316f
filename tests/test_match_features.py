"""Exact candidate-match features (``match_features``, the default): the batched form and the one-user
index form follow the definition's loop (the model's one-user path against its batched path:
``tests/test_candidate_search.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eventrec.model.candidate_search import NO_ID, NO_MATCH, UserSearchIndex
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.match_features import (FEATURES, features_per_vocabulary, match_features, match_features_before, match_features_one_user,
                                           match_features_reference)
from eventrec.training.config import TrainConfig
from eventrec.training.factory import batch_function, build_model


def _random(seed: int, histories: int = 5, vocab: int = 4, v: int = 2):
    """Histories with a summary token (``NO_ID``), time-ordered events, repeated ids, reserved candidate ids."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 15, histories) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, vocab, (int(lengths.sum()), v))
    ids[offsets[:-1]] = NO_ID
    ids[rng.random(ids.shape) < 0.1] = NO_ID
    times = np.concatenate([np.sort(rng.integers(0, 10**6, n)) for n in lengths])
    request_times = 10**6 + rng.integers(0, 10**5, histories)
    history_index = rng.integers(0, histories, 12)
    candidates = rng.integers(-1, vocab, (12, v))  # -1 = NO_MATCH
    return [torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (ids, offsets, times, request_times, candidates, history_index)]


@pytest.mark.parametrize("seed", range(5))
def test_batched_and_one_user_forms_follow_the_definition(seed):
    ids, offsets, times, request_times, candidates, history_index = _random(seed)
    expected = match_features_reference(ids, offsets, times, request_times, candidates, history_index)
    torch.testing.assert_close(match_features(ids, offsets, times, request_times, candidates, history_index), expected)
    for g in range(len(offsets) - 1):
        mine = history_index == g
        if not mine.any():
            continue
        span = slice(int(offsets[g]), int(offsets[g + 1]))
        got = match_features_one_user(UserSearchIndex.build(ids[span]), times[span], request_times[g], candidates[mine])
        torch.testing.assert_close(got, expected[mine])


def test_counts_and_ages_by_hand():
    # one history: token, then ids 7, 3, 7 at times 10, 20, 30; request at 100
    ids = torch.tensor([[NO_ID], [7], [3], [7]])
    times = torch.tensor([0, 10, 20, 30])
    offsets, request = torch.tensor([0, 4]), torch.tensor([100])
    candidates = torch.tensor([[7], [3], [5], [NO_MATCH]])
    got = match_features(ids, offsets, times, request, candidates, torch.zeros(4, dtype=torch.int64))
    scale = math.log1p(2**31 - 1)
    expected = torch.tensor([[math.log1p(2), 1, math.log1p(70) / scale], [math.log1p(1), 1, math.log1p(80) / scale], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(got, expected.float())
    assert got.shape == (4, FEATURES)


def test_empty_histories_and_no_candidates():
    empty = torch.zeros(0, 1, dtype=torch.int64)
    got = match_features(empty, torch.tensor([0, 0]), torch.zeros(0, dtype=torch.int64), torch.tensor([5]), torch.tensor([[3]]), torch.tensor([0]))
    torch.testing.assert_close(got, torch.zeros(1, FEATURES))
    assert match_features(empty, torch.tensor([0, 0]), torch.zeros(0, dtype=torch.int64), torch.tensor([5]), torch.zeros(0, 1, dtype=torch.int64),
                          torch.zeros(0, dtype=torch.int64)).shape == (0, FEATURES)


def test_the_features_reach_the_logits_and_train(tiny_store):
    torch.manual_seed(0)
    config = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])
    model = build_model(FeatureSpec.from_store(tiny_store), config)
    batch = batch_function(config)(tiny_store, np.arange(tiny_store.num_examples))
    user = model.encode_user(batch)
    ids = model.candidate_ids(batch.item)
    features = model.exact_match_features(user, ids, batch.history_index)
    assert features.shape == (tiny_store.num_examples, FEATURES * len(model.match_vocabularies))
    assert (features[:, 1] > 0).any(), "the tiny store has candidates seen before in their histories"
    model(batch).sum().backward()


def test_off_without_a_match_vocabulary_and_when_asked(tiny_store):
    spec = FeatureSpec.from_store(tiny_store)
    base = build_model(spec, SequenceModelConfig())
    for config in (SequenceModelConfig(match_attention=False), SequenceModelConfig(match_features=False)):
        model = build_model(spec, config)
        assert not model.uses_match_features and not model.reads_match_ids
    assert base.uses_match_features and base.reads_match_ids
    without = build_model(spec, SequenceModelConfig(match_features=False))
    width = lambda m: sum(p.numel() for p in m.heads.parameters())  # noqa: E731  (the heads read 3·V more inputs)
    assert width(base) > width(without)


def test_recorded_configs_keep_what_they_trained_with():
    """A config recorded before the field (a checkpoint, a comparison's run) trained without the features;
    one recorded while they were experimental keeps its value."""
    from eventrec.model.config import as_recorded
    from eventrec.training.factory import parse_model_config

    assert SequenceModelConfig().match_features
    assert not parse_model_config(as_recorded({"kind": "sequence"})).match_features
    experimental = parse_model_config(as_recorded({"kind": "sequence", "experimental": {"match_features": True, "dot_term": False}}))
    assert experimental.match_features and experimental.experimental is None and not experimental.dot_term  # all else at its default
    assert parse_model_config(as_recorded({"kind": "sequence", "experimental": {"match_features": True}})).experimental is None
    kept = parse_model_config(as_recorded({"kind": "sequence", "experimental": {"match_features": True, "dot_term": True}}))
    assert kept.match_features and kept.dot_term


def test_a_run_trained_while_the_features_were_experimental_resumes_with_today_s_default():
    """Its checkpoint's complete dump (experimental section with match_features) against the default."""
    from eventrec.training.resume_check import check_resume

    recorded = SequenceModelConfig().model_dump(mode="json")
    recorded.pop("match_features")
    recorded["experimental"] = {"identity_match": False, "dot_term": False, "match_count": False, "match_features": True}
    check_resume({"model_config": recorded}, TrainConfig(), SequenceModelConfig(), "ckpt")  # no change: resumes
    with pytest.raises(ValueError, match="match_features: True → False"):
        check_resume({"model_config": recorded}, TrainConfig(), SequenceModelConfig(match_features=False), "ckpt")


WINDOWS = (50_000, 300_000, 2_000_000)  # the random histories' times: 0..1e6, requests 1e6..1.1e6


@pytest.mark.parametrize("seed", range(5))
def test_windowed_counts_in_every_form_follow_the_definition(seed):
    """Batched, one-user and prefix forms against the loop, with windows that cut some histories."""
    ids, offsets, times, request_times, candidates, history_index = _random(seed)
    expected = match_features_reference(ids, offsets, times, request_times, candidates, history_index, WINDOWS)
    assert expected.shape == (len(candidates), features_per_vocabulary(WINDOWS) * ids.shape[1])
    torch.testing.assert_close(match_features(ids, offsets, times, request_times, candidates, history_index, WINDOWS), expected)
    for g in range(len(offsets) - 1):
        mine = history_index == g
        if not mine.any():
            continue
        span = slice(int(offsets[g]), int(offsets[g + 1]))
        index = UserSearchIndex.build(ids[span])
        torch.testing.assert_close(match_features_one_user(index, times[span], request_times[g], candidates[mine], WINDOWS), expected[mine])
        length = int(offsets[g + 1] - offsets[g])
        cuts = torch.full((int(mine.sum()),), length)
        requests = request_times[g].expand(len(cuts))
        torch.testing.assert_close(match_features_before(index, times[span], requests, candidates[mine], cuts, WINDOWS), expected[mine])
        # a prefix: the first `cut` positions at an earlier request time
        cut = max(1, length // 2)
        early = times[span][cut - 1] + 1
        prefix = match_features_reference(ids[span][:cut], torch.tensor([0, cut]), times[span][:cut], early.reshape(1), candidates[mine],
                                          torch.zeros(len(cuts), dtype=torch.int64), WINDOWS)
        got = match_features_before(index, times[span], early.expand(len(cuts)), candidates[mine], torch.full_like(cuts, cut), WINDOWS)
        torch.testing.assert_close(got, prefix)


def test_windowed_counts_by_hand():
    # token, then ids 7, 3, 7, 7 at times 10, 20, 30, 95; request at 100; windows 10 s and 80 s
    ids = torch.tensor([[NO_ID], [7], [3], [7], [7]])
    times = torch.tensor([0, 10, 20, 30, 95])
    got = match_features(ids, torch.tensor([0, 5]), times, torch.tensor([100]), torch.tensor([[7], [3], [NO_MATCH]]),
                         torch.zeros(3, dtype=torch.int64), (10, 80))
    assert got.shape == (3, FEATURES + 2)
    torch.testing.assert_close(got[:, FEATURES:], torch.tensor([[math.log1p(1), math.log1p(2)], [0.0, math.log1p(1)], [0.0, 0.0]]))


def test_windows_are_validated_and_widen_the_heads(tiny_store):
    with pytest.raises(ValueError, match="match_windows"):
        SequenceModelConfig(experimental={"match_windows": [604800, 86400]})
    with pytest.raises(ValueError, match="match_windows"):
        SequenceModelConfig(match_features=False, experimental={"match_windows": [86400]})
    torch.manual_seed(0)
    config = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8],
                                 experimental={"match_windows": [86400, 604800]})
    model = build_model(FeatureSpec.from_store(tiny_store), config)
    batch = batch_function(config)(tiny_store, np.arange(tiny_store.num_examples))
    user = model.encode_user(batch)
    features = model.exact_match_features(user, model.candidate_ids(batch.item), batch.history_index)
    assert features.shape == (tiny_store.num_examples, (FEATURES + 2) * len(model.match_vocabularies))
    model(batch).sum().backward()
