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
        groups = index.groups_for(torch.from_numpy(mine), recent, per_match, summary)
        assert sorted(groups.simple.tolist() + groups.mixed.tolist()) == list(range(len(mine)))
        lists = {}
        for c, wanted in enumerate(mine):
            expected = _brute_force(history, wanted, recent, per_match, summary)
            if c in groups.simple.tolist():
                g = int(groups.candidate_group[groups.simple.tolist().index(c)])
                own = groups.group_positions[g][groups.group_valid[g]].tolist() if g >= 0 else []
                matched = [v for v in range(ids.shape[1]) if set(own) and wanted[v] >= 0 and set(history[own, v].tolist()) == {wanted[v]}]
                if g >= 0:  # a group is one (vocabulary, id): every candidate with it reads the same list
                    assert lists.setdefault(g, own) == own and matched
            else:
                own = groups.extra[groups.extra_candidate == groups.mixed.tolist().index(c)].tolist()
            assert set(groups.shared.tolist()) | set(own) == expected
            assert len(own) == len(set(own)) and not set(own) & set(groups.shared.tolist()) and own == sorted(own)


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


@pytest.mark.parametrize("recent,per_match", [(1, 1), (0, 2), (3, 100)])
def test_many_candidates_of_one_user_score_as_in_the_batched_path(tiny_store, recent, per_match):
    """Every item of the store as a candidate of one user: the serving path (groups of candidates that
    share their searched events, ops.grouped_pooling, and the others through ops.selected_pooling) gives
    the training path's logits (the search mask over the padded history)."""
    model = _model(tiny_store, recent=recent, per_match=per_match, recency="pooling")
    everything = batch_function(model.config)(tiny_store, np.arange(tiny_store.num_examples))
    plan = OneUserPlan(None, Workspace(), EXP_SAFE_LOGIT, fold_match=False, base2=False)
    with torch.no_grad():
        for i in range(0, tiny_store.num_examples, 7):
            user = model.encode_user(batch_function(model.config)(tiny_store, np.array([i])))
            history_index = torch.zeros(tiny_store.num_examples, dtype=torch.int64)
            expected = model.candidate_side(user, everything.item, everything.context, history_index, item_counts=everything.item_counts)
            got = model.score(user, model.embed_candidates(everything.item), model.embed_context(everything.context), plan=plan,
                              candidate_ids=model.candidate_ids(everything.item), item_counts=everything.item_counts)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_the_searched_pooling_of_one_user_equals_the_masked_pooling(seed):
    """KeyedAttentionPooling.pool_searched (candidates in groups, ops.grouped_pooling, and candidates
    matching in both vocabularies, ops.selected_pooling) against pool with the search mask, on a
    history where many candidates share a category and some also match by item id."""
    from eventrec.model.candidate_search import Search
    from eventrec.model.keyed_pooling import KeyedAttentionPooling

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pooling = KeyedAttentionPooling(8, 5, num_slots=2, num_heads=2, match_vocabularies=2, match_dim=6, recency_buckets=4).double()
    n, c = 40, 80
    event_ids = torch.stack([torch.randint(2, 30, (n,), generator=g), torch.randint(2, 6, (n,), generator=g)], 1)
    event_ids[0] = NO_ID  # the summary token
    candidate_ids = torch.stack([torch.randint(1, 30, (c,), generator=g), torch.randint(1, 7, (c,), generator=g)], 1)
    candidate_ids[candidate_ids == 1] = NO_MATCH
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    keys, values, match_keys, query_input, match_query = rnd(n, 2, 4), rnd(n, 2, 4), rnd(n, 6), rnd(c, 5), rnd(c, 6)
    timestamps = torch.sort(torch.randint(0, 10**6, (n,), generator=g)).values
    request = torch.tensor([10**6])
    search = Search(event_ids, candidate_ids, CandidateSearchConfig(recent=3, per_match=2), True)
    index = UserSearchIndex.build(event_ids)
    groups = index.groups_for(candidate_ids, 3, 2, True)
    assert len(groups.mixed) and int((groups.candidate_group >= 0).sum()) > len(groups.group_valid)  # both paths, groups shared
    with torch.no_grad():
        got = pooling.pool_searched(keys, values, match_keys, timestamps, request, query_input, match_query, search, index)
        offsets = torch.tensor([0, n])
        at_k, at_v = pooling.at_request(keys, values, timestamps, offsets, request, summary_token=True)
        expected = pooling.pool(at_k, at_v, offsets, n, query_input, torch.zeros(c, dtype=torch.int64), match_query, match_keys,
                                match_form="bias", search=search)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


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
