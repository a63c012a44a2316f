"""The opt-in bf16 serving precision: validated, close to fp32, deterministic, leaves the fp32 model and
the caches untouched; fp32 parity itself is tested in ``test_core.py``.

Bounds, measured here on random default-size models (2000-3000 candidates, histories of 1 to 1025
positions): max |dp| <= 8.9e-4, mean |dp| <= 1.8e-4, top-100 overlap >= 94 of 100; asserted at about
3x: max |dp| < 2.5e-3, mean < 5e-4, overlap >= 85. (The trained demo models: max |dp| 3e-3, mean
6e-5, top-100 overlap 99.2 on average: ``docs/serving.md``.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eventrec.cli import app
from eventrec.data.jagged import JaggedTensor
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.sequence_ranker import SequenceRanker, UserSide
from eventrec.serving import RankingService, scoring
from eventrec.serving.scoring import CandidateScorer

from test_core import candidates, rank_after_a_failure, reference

RNG_ADS = np.random.default_rng(0).integers(0, 1_000_000, 2000)


def many_candidates(n: int = 2000) -> list[dict]:
    """Unseen hashed ad ids (identity kept) over the known and unknown categories."""
    categories = ["shoes", "hats", "bags", "new", "never_seen_category"]
    return [{"ad_id": int(RNG_ADS[i]), "category": categories[i % len(categories)]} for i in range(n)]


def top(scores: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-scores[:, 0], kind="stable")[:k].tolist())


def random_model(store, seed: int, **config) -> SequenceRanker:
    """The default config (D=64, 4 heads, 4 slots, match attention; ``config`` overrides) with random weights."""
    torch.manual_seed(seed)
    return SequenceRanker(FeatureSpec.from_store(store), SequenceModelConfig(**config)).eval()


def test_precision_is_validated(served):
    store, checkpoint, _ = served
    with pytest.raises(ValueError, match="precision"):
        RankingService.load(checkpoint, store, precision="fp16")
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), "--precision", "fp16"])
    assert result.exit_code == 2 and "--precision" in result.output


def test_serve_command_passes_the_precision(served, monkeypatch):
    store, checkpoint, _ = served
    started = []
    monkeypatch.setattr("eventrec.serving.http.serve", lambda service, host, port, **options: started.append(service))
    result = CliRunner().invoke(app, ["serve", "--model", str(checkpoint), "--store", str(store.path), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert started[0].precision == "bf16" and "(bf16)" in result.output


def logit(p: np.ndarray) -> np.ndarray:
    """Logits of float32 scores, clipped at 1e-6 from 0 and 1: near 1 a float32 step is 6e-8, so
    the logit of a score above 1 - 1e-6 is not defined by the score to better than about 0.7."""
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_scores_close_to_fp32_on_random_models(served, seed):
    """Service level, random default-size models, 2000 candidates per request."""
    store, _, _ = served
    fp32 = RankingService(random_model(store, seed), store, "random")
    bf16 = RankingService(fp32.model, store, fp32.version, precision="bf16")
    for user, t in [(1, 250), (2, 400), (3, 160), ("someone-new", 400)]:
        a = fp32.rank(user, many_candidates(), {"placement": "feed"}, t).scores
        b = bf16.rank(user, many_candidates(), {"placement": "feed"}, t).scores
        assert b.dtype == a.dtype and np.isfinite(b).all()
        assert np.abs(a - b).max() < 2.5e-3
        assert np.abs(a - b).mean() < 5e-4
        assert len(top(a, 100) & top(b, 100)) >= 85


def test_bf16_on_a_model_with_large_logits(served):
    """The tiny trained model's logits reach |z| ~ 50 (large activations in its attention), and bf16's
    error scales with them (8 significant bits; measured max |dz| <= 0.0075 max |z|): bounded relative
    to the logits' scale, and the top candidates still agree (measured 99-100 of 100)."""
    store, checkpoint, _ = served
    fp32 = RankingService.load(checkpoint, store)
    bf16 = RankingService.load(checkpoint, store, precision="bf16")
    frame = fp32.candidate_frame(many_candidates())
    rows, ids, _, _ = fp32.cached_items(frame)
    context = fp32.context_tensor({"placement": "feed"})
    for user, t in [(1, 250), (2, 400), (3, 160)]:
        side, _ = fp32.user_side(user, t)
        counts = fp32.item_counts(frame, t)
        za, zb = fp32._score(side, rows, context, ids, counts), bf16._score(side, rows, context, ids, counts)
        assert zb.dtype == torch.float32
        assert (za - zb).abs().max() < 0.03 * za.abs().max()
        assert len(top(za.numpy(), 100) & top(zb.numpy(), 100)) >= 85


@pytest.mark.parametrize("positions", [1, 1025])
def test_bf16_scorer_close_to_fp32_on_long_histories(served, positions):
    """Scorer level, random default-size model and a random user of ``positions`` positions."""
    store, _, _ = served
    model = random_model(store, positions, match_features=False, item_counters=None)  # the pooling's precision (random users have no ids)
    pooling = model.pooling
    torch.manual_seed(1)
    match_dim = pooling.match_dim
    encoded = JaggedTensor(torch.randn(positions, 64), torch.tensor([0, positions]), positions)
    match_keys = torch.nn.functional.normalize(torch.randn(positions, match_dim), dim=-1)
    keys, values = pooling.keys_values(encoded)
    item_dim = model.item_embedder.out_dim
    rows = torch.cat([torch.randn(3000, item_dim), torch.nn.functional.normalize(torch.randn(3000, match_dim), dim=-1)], dim=-1)
    context = torch.randn(1, model.candidate_norm.normalized_shape[0] - item_dim)
    with torch.no_grad():
        p = {}
        for dtype in (torch.float32, torch.bfloat16):
            user = UserSide(torch.tensor([0, positions]), positions, encoded.values, keys, values, timestamps=torch.arange(positions) * 60,
                            request_times=torch.tensor([positions * 60]), match_keys=match_keys)
            p[dtype] = torch.sigmoid(CandidateScorer(model, dtype).score(user, rows, context)).numpy()
    difference = np.abs(p[torch.float32] - p[torch.bfloat16])
    assert p[torch.bfloat16].dtype == np.float32
    assert difference.max() < 2.5e-3 and difference.mean() < 5e-4
    assert len(top(p[torch.float32], 100) & top(p[torch.bfloat16], 100)) >= 85


def test_bf16_cold_users_empty_histories_and_repeats(served):
    store, _, _ = served
    fp32 = RankingService(random_model(store, 2), store, "random")
    bf16 = RankingService(fp32.model, store, "random", precision="bf16")
    for user, t in [("someone-new", 500), (1, 5)]:  # unknown user; a known user before any event
        got = bf16.rank(user, candidates(), {"placement": "story"}, t)
        np.testing.assert_allclose(got.scores, fp32.rank(user, candidates(), {"placement": "story"}, t).scores, atol=2.5e-3, rtol=0)
        again = bf16.rank(user, candidates(), {"placement": "story"}, t)
        assert again.user_state == "hit"
        np.testing.assert_array_equal(got.scores, again.scores)
        np.testing.assert_array_equal(got.order, again.order)


def test_bf16_leaves_the_model_and_the_caches_in_fp32(served, monkeypatch):
    store, checkpoint, _ = served
    bf16 = RankingService.load(checkpoint, store, precision="bf16")
    before = {k: v.clone() for k, v in bf16.model.state_dict().items()}
    good = bf16.rank(1, candidates(), {"placement": "feed"}, 1000).scores
    again = rank_after_a_failure(bf16, monkeypatch, bf16.scorer.model, "output_logits")  # fails after the attention blocks ran
    np.testing.assert_array_equal(good, again.scores)
    state = bf16.users.get(("1", bf16.version))
    assert state.keys.dtype == state.values.dtype == torch.float32 and state.encoded is None  # the model does not read it
    assert bf16.candidates.rows.dtype == torch.float32
    after = bf16.model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    # the same model object still serves fp32 scores equal to `eventrec evaluate`'s
    fp32 = RankingService(bf16.model, store, bf16.version)
    for user, t in [(1, 250), (3, 160)]:
        np.testing.assert_allclose(fp32.rank(user, candidates(), {"placement": "feed"}, t).scores,
                                   reference(fp32, user, candidates(), {"placement": "feed"}, t), atol=1e-5, rtol=0)


def test_bf16_without_native_support_warns_once(served, monkeypatch, caplog):
    store, checkpoint, _ = served
    monkeypatch.setattr(scoring, "native_bf16", lambda device: False)
    monkeypatch.setattr(scoring, "_warned_slow_bf16", False)
    with caplog.at_level(logging.WARNING, logger="eventrec.serving.scoring"):
        first = RankingService.load(checkpoint, store, precision="bf16")
        RankingService.load(checkpoint, store, precision="bf16")
        RankingService.load(checkpoint, store)
    assert len([r for r in caplog.records if "no native bfloat16" in r.message]) == 1
    scores = first.rank(2, candidates(), {"placement": "feed"}, 400).scores
    assert scores.shape == (30, 2) and np.isfinite(scores).all()


def test_native_bf16_detection_runs():
    assert isinstance(scoring.native_bf16(torch.device("cpu")), bool)
    assert scoring.native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("fixture", ["served_dot", "served_identity"])
def test_bf16_on_a_model_with_a_dot_term_or_identity_codes(fixture, request):
    """The dot term is added in float32 from the bf16 candidate; the identity codes (±1/√E) are exact
    in bf16 and folded into the logits like the learned match part: close to fp32, same top candidates."""
    store, checkpoint, _ = request.getfixturevalue(fixture)
    fp32 = RankingService.load(checkpoint, store)
    bf16 = RankingService.load(checkpoint, store, precision="bf16")
    for user, t in [(1, 250), (2, 400), ("someone-new", 400)]:
        a = fp32.rank(user, many_candidates(), {"placement": "feed"}, t).scores
        b = bf16.rank(user, many_candidates(), {"placement": "feed"}, t).scores
        assert np.isfinite(b).all() and np.abs(logit(a) - logit(b)).max() < 0.03 * np.abs(logit(a)).max() + 1e-3
        assert len(top(a, 100) & top(b, 100)) >= 85
