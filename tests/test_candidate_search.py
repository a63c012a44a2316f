"""Candidate search (``candidate_search``): the training mask, the serving index and the model's two
pooling paths give the same selection and the same scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eventrec.model.candidate_search import NO_ID, NO_MATCH, UserSearchIndex, search_mask
from eventrec.model.config import CandidateSearchConfig, SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.ops.keyed_pooling_one_user import EXP_SAFE_LOGIT, OneUserPlan, Workspace
from eventrec.training.factory import batch_function, build_model


def _brute_force(ids: np.ndarray, wanted: np.ndarray, recent: int, per_match: int, summary: bool) -> set[int]:
    """The positions one candidate reads, by the definition."""
    n = len(ids)
    first = 1 if summary else 0
    chosen = {0} if summary and n else set()
    chosen |= {p for p in range(first, n) if n - 1 - p < recent}
    for v in range(ids.shape[1]):
        if wanted[v] < 0:
            continue
        matches = [p for p in range(n) if ids[p, v] == wanted[v]]
        chosen |= set(matches[-per_match:])
    return chosen


def _random_histories(seed: int, histories: int = 6, vocab: int = 4, v: int = 2, summary: bool = True):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 12, histories) + (1 if summary else 0)
    ids = rng.integers(2, 2 + vocab, (int(lengths.sum()), v))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if summary:
        ids[offsets[:-1]] = NO_ID
    ids[rng.random(ids.shape) < 0.1] = NO_ID  # a stream without the vocabulary
    per_history = rng.integers(0, 4, histories)
    candidates = rng.integers(1, 2 + vocab, (int(per_history.sum()), v))
    candidates[candidates == 1] = NO_MATCH
    return ids, offsets, candidates, np.concatenate([[0], np.cumsum(per_history)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("recent,per_match,summary", [(0, 1, True), (2, 1, True), (3, 2, False), (100, 100, True)])
def test_mask_and_index_follow_the_definition(seed, recent, per_match, summary):
    ids, offsets, candidates, candidate_offsets = _random_histories(seed, summary=summary)
    mask = search_mask(torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(candidates), torch.from_numpy(candidate_offsets),
                       recent, per_match, summary)
    for g in range(len(offsets) - 1):
        history = ids[offsets[g] : offsets[g + 1]]
        mine = candidates[candidate_offsets[g] : candidate_offsets[g + 1]]
        if not len(mine):
            continue
        index = UserSearchIndex.build(torch.from_numpy(history))
        shared, extra, extra_candidate = index.positions_for(torch.from_numpy(mine), recent, per_match, summary)
        for c, wanted in enumerate(mine):
            expected = _brute_force(history, wanted, recent, per_match, summary)
            row = mask[candidate_offsets[g] + c]
            assert set(np.flatnonzero(row.numpy())) == expected
            extras = extra[extra_candidate == c].tolist()
            assert set(shared.tolist()) | set(extras) == expected
            assert len(extras) == len(set(extras)) and not set(extras) & set(shared.tolist())
            assert extras == sorted(extras)


def _model(store, **search):
    torch.manual_seed(0)
    windows = search.pop("match_windows", None)
    config = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], recency=search.pop("recency", "encoder"),
                                 candidate_search=CandidateSearchConfig(**search) if search else None,
                                 experimental={"match_windows": windows} if windows else None)
    return build_model(FeatureSpec.from_store(store), config).eval()


@pytest.mark.parametrize("recency", ["encoder", "pooling"])
@pytest.mark.parametrize("search", [{"recent": 1, "per_match": 1}, {}, {"recent": 1, "per_match": 1, "match_windows": [3600, 86400 * 7]}],
                         ids=["search", "no_search", "search_windows"])
def test_one_user_serving_path_equals_the_batched_training_path(tiny_store, recency, search):
    """The searched positions (ops.selected_pooling) against the training mask; and, with or without
    the search (and with windowed counts), the match features from the user's index against their batched form."""
    model = _model(tiny_store, recency=recency, **dict(search))
    everything = np.arange(tiny_store.num_examples)
    plan = OneUserPlan(None, Workspace(), EXP_SAFE_LOGIT, fold_match=False, base2=False)
    with torch.no_grad():
        expected = model(batch_function(model.config)(tiny_store, everything))
        for i in everything:
            batch = batch_function(model.config)(tiny_store, np.array([i]))
            user = model.encode_user(batch)
            got = model.score(user, model.embed_candidates(batch.item), model.embed_context(batch.context), plan=plan,
                              candidate_ids=model.candidate_ids(batch.item), item_counts=batch.item_counts)
            torch.testing.assert_close(got[0], expected[i], rtol=1e-5, atol=1e-6)


def test_a_search_that_selects_everything_is_full_pooling_and_a_narrow_one_differs(tiny_store):
    full = _model(tiny_store)
    wide = _model(tiny_store, recent=10_000, per_match=1)
    wide.load_state_dict(full.state_dict())
    narrow = _model(tiny_store, recent=0, per_match=1)
    narrow.load_state_dict(full.state_dict())
    batch = batch_function(full.config)(tiny_store, np.arange(tiny_store.num_examples))
    with torch.no_grad():
        torch.testing.assert_close(wide(batch), full(batch), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(narrow(batch), full(batch), atol=1e-4)


def test_search_needs_a_match_vocabulary(tiny_store):
    with pytest.raises(ValueError, match="candidate_search"):
        build_model(FeatureSpec.from_store(tiny_store), SequenceModelConfig(match_attention=False, candidate_search=CandidateSearchConfig()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_a_scorer_on_another_device_moves_the_user_s_index_and_does_not_rebuild_it(tiny_store, monkeypatch):
    from eventrec.model import candidate_search
    from eventrec.serving.scoring import CandidateScorer

    model = _model(tiny_store, recent=1, per_match=1, recency="pooling")
    batch = batch_function(model.config)(tiny_store, np.array([0]))
    plan = OneUserPlan(None, Workspace(), EXP_SAFE_LOGIT, fold_match=False, base2=False)
    with torch.no_grad():
        user = model.encode_user(batch)
        user.search_index = UserSearchIndex.build(user.match_ids)
        rows, context, ids = model.embed_candidates(batch.item), model.embed_context(batch.context), model.candidate_ids(batch.item)
        expected = model.score(user, rows, context, plan=plan, candidate_ids=ids, item_counts=batch.item_counts)
        builds = []
        monkeypatch.setattr(candidate_search.UserSearchIndex, "build", classmethod(lambda cls, ids: builds.append(1)))
        scorer = CandidateScorer(model, device="cuda")
        got = scorer.score(user, rows, context, plan=plan, candidate_ids=ids, item_counts=batch.item_counts)
    assert builds == []
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_an_index_moved_to_a_device_selects_the_same_positions():
    ids, offsets, candidates, candidate_offsets = _random_histories(0, summary=True)
    index = UserSearchIndex.build(torch.from_numpy(ids[offsets[0] : offsets[1]]))
    moved = index.to("cpu")
    wanted = torch.from_numpy(candidates[candidate_offsets[0] : candidate_offsets[0] + 3])
    for a, b in zip(index.positions_for(wanted, 2, 1, True), moved.positions_for(wanted, 2, 1, True)):
        assert torch.equal(a, b)
    assert moved.length == index.length
