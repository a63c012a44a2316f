"""The serving core: parity with `predict`, the user-state cache and its reuse rule, exact incremental
appends, cold start, OOV, bad input that leaves the cache intact."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from eventrec.data.requests import store_for_requests
from eventrec.serving import InvalidInput, OutOfOrderEvents, RankingService, TooManyCandidates
from eventrec.serving.user_states import request_window, window_batch
from eventrec.evaluation.predict import predict
from eventrec.training.factory import batch_function

CATEGORIES = ["shoes", "hats", "bags", "new", "never_seen_category"]
ADS = [5, 6, 7, 8, 9, 123457]  # 123457: never seen anywhere (hashed: keeps its identity)


def candidates(n: int = 30) -> list[dict]:
    return [{"ad_id": ADS[i % len(ADS)], "category": CATEGORIES[(i // len(ADS)) % len(CATEGORIES)]} for i in range(n)]


def reference(service: RankingService, user, cands, context, timestamp) -> np.ndarray:
    """`eventrec evaluate`'s path: store_for_requests + make_batch + predict."""
    frame = pl.DataFrame([{"user_id": user, "timestamp": timestamp, **c, **context} for c in cands])
    view = store_for_requests(service.store, frame)
    return predict(service.model, view, np.arange(len(cands)), batch_function(service.model.config))


def rank_after_a_failure(service: RankingService, monkeypatch, target, name: str, user=1, t: int = 1000):
    """A request that fails in ``target.name`` (patched to raise), then the same request again: its result."""

    def boom(*args, **kwargs):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(target, name, boom)
    with pytest.raises(RuntimeError):
        service.rank(user, candidates(), {"placement": "feed"}, t)
    monkeypatch.undo()
    again = service.rank(user, candidates(), {"placement": "feed"}, t)
    assert again.user_state == "hit"
    return again


def click(t: int, ad: int = 6, category: str = "hats") -> dict:
    return {"event_type": "click", "timestamp": t, "ad_id": ad, "category": category, "price": 12.0}


def view(t: int, category: str = "shoes") -> dict:
    return {"event_type": "view", "timestamp": t, "category": category, "topics": ["a"]}


VARIANTS = ["served", "served_recency_pooling", "served_search", "served_invariant", "served_invariant_token", "served_dot", "served_identity", "served_match_count", "served_no_match_features", "served_low_rank_cross",
            "served_bidirectional", "served_no_summary", "served_no_match", "served_item_counters"]


@pytest.mark.parametrize("fixture", VARIANTS)
def test_parity_with_predict(fixture, request):
    store, checkpoint, data = request.getfixturevalue(fixture)
    service = RankingService.load(checkpoint, store)
    impressions = pl.read_parquet(data / "impressions.parquet")
    expected = predict(service.model, store, np.arange(store.num_examples), batch_function(service.model.config))
    for i, row in enumerate(impressions.iter_rows(named=True)):
        result = service.rank(row["user_id"], [{"ad_id": row["ad_id"], "category": row["category"]}], {"placement": row["placement"]}, row["timestamp"])
        np.testing.assert_allclose(result.scores[0], expected[i], atol=1e-5, rtol=0)
    # many candidates at once, with unseen ids (hashed: identity kept) and an OOV category. float32: the
    # cached user side (appended event by event) and the reference's full recomputation sum in other
    # orders; the fixtures' logits reach about ±40, so a probability near 0.5 moves by up to ~1e-5
    for user, t in [(1, 250), (1, 40), (2, 400), (3, 160)]:
        got = service.rank(user, candidates(), {"placement": "feed"}, t).scores
        np.testing.assert_allclose(got, reference(service, user, candidates(), {"placement": "feed"}, t), atol=3e-5, rtol=0)


def test_user_side_computed_once_for_many_candidates(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store, candidate_chunk=256)
    calls = []
    service.model.event_model.register_forward_hook(lambda *a: calls.append(1))
    service.model.encoder.norm.register_forward_hook(lambda *a: calls.append(2))
    many = candidates(3000)
    first = service.rank(1, many, {"placement": "feed"}, 250)
    assert first.user_state == "miss" and calls == [1, 2]  # one pass for 3000 candidates (12 chunks)
    second = service.rank(1, many, {"placement": "feed"}, 250, top_k=5)
    assert second.user_state == "hit" and calls == [1, 2]
    np.testing.assert_array_equal(first.scores, second.scores)
    assert second.candidate_misses == 0 and second.candidate_hits == 3000
    assert list(second.order) == list(np.argsort(-first.scores[:, 0], kind="stable")[:5])
    stats = service.stats()
    assert stats["user_hit"] == 1 and stats["user_miss"] == 1


def test_reuse_rule_follows_the_recency_buckets(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    # user 1's last event before 1000 is at 210: gap 790 s (bucket 9 = 511..1022 s)
    assert service.rank(1, candidates(), {"placement": "feed"}, 1000).user_state == "miss"
    same_buckets = service.rank(1, candidates(), {"placement": "feed"}, 1010)
    assert same_buckets.user_state == "hit"
    np.testing.assert_allclose(same_buckets.scores, reference(service, 1, candidates(), {"placement": "feed"}, 1010), atol=1e-5, rtol=0)
    moved = service.rank(1, candidates(), {"placement": "feed"}, 5000)  # buckets change: recompute
    assert moved.user_state == "miss"
    np.testing.assert_allclose(moved.scores, reference(service, 1, candidates(), {"placement": "feed"}, 5000), atol=1e-5, rtol=0)


def _fresh(service: RankingService) -> RankingService:
    fresh = RankingService(service.model, service.store, service.version)
    fresh.events.entries.update(service.events.entries)
    return fresh


@pytest.mark.parametrize("fixture", ["served_recency_pooling", "served_search", "served_no_match_features", "served_invariant", "served_invariant_token"])
def test_incremental_append_equals_full_recompute(fixture, request):
    store, checkpoint, _ = request.getfixturevalue(fixture)
    service = RankingService.load(checkpoint, store)
    context = {"placement": "feed"}
    assert service.rank(2, candidates(), context, 1000).user_state == "miss"
    service.append_events(2, [click(500), view(501, "hats")])
    service.append_events(2, [click(600, 5, "shoes")])
    appended = service.rank(2, candidates(), context, 1000)
    assert appended.user_state == "incremental"
    full = _fresh(service).rank(2, candidates(), context, 1000)
    assert full.user_state == "miss"
    np.testing.assert_allclose(appended.scores, full.scores, atol=1e-5, rtol=0)
    # per-layer keys/values too
    key = ("2", service.version)
    events = service.user_events(2)
    batch = window_batch(events, request_window(events, 1000), 1000, len(service.task_names), service.task_names)
    for (k1, v1), (k2, v2) in zip(service.users.get(key).layer_kv, service.model.encode_user(batch, capture_kv=True).layer_kv):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=0)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)
    # a request before the appended events reads a prefix of the state
    earlier = service.rank(2, candidates(), context, 550)
    assert earlier.user_state == "prefix"
    np.testing.assert_allclose(earlier.scores, _fresh(service).rank(2, candidates(), context, 550).scores, atol=1e-5, rtol=0)
    # an event at the last event's time in an earlier stream sorts before it: state dropped, recomputed
    service.append_events(2, [view(650, "bags")])
    assert service.rank(2, candidates(), context, 1000).user_state == "incremental"
    service.append_events(2, [click(650)])  # streams: click (0) before view (1)
    tie = service.rank(2, candidates(), context, 1000)
    assert tie.user_state == "miss"
    np.testing.assert_allclose(tie.scores, _fresh(service).rank(2, candidates(), context, 1000).scores, atol=1e-5, rtol=0)


def test_append_on_the_time_reading_model_recomputes_exactly(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    service.rank(1, candidates(), {"placement": "feed"}, 1000)
    service.append_events(1, [click(700, 9, "bags")])
    result = service.rank(1, candidates(), {"placement": "feed"}, 1000)
    assert result.user_state == "miss"
    assert sum(service.user_events(1).counts().values()) == 8
    np.testing.assert_allclose(result.scores, _fresh(service).rank(1, candidates(), {"placement": "feed"}, 1000).scores, atol=1e-6, rtol=0)


def test_item_counters_come_from_the_store_not_from_appended_events(served_recency_pooling):
    """The default model's item counters: the store's events of all users before the request time
    (``ItemCounters``, as in training); events appended to the service are one user's and are not
    counted until the store is rebuilt (docs/serving.md)."""
    from eventrec.data.item_counters import item_counters_of

    store, checkpoint, _ = served_recency_pooling
    service = RankingService.load(checkpoint, store)
    frame = service.candidate_frame(candidates(6))
    before = service.item_counts(frame, 1000)
    encoded = service.records.group(service.schema.impressions.item_attributes, frame)
    ids = {name: encoded[name].numpy() for name in ("ad_id", "category")}
    expected = item_counters_of(store).counts(ids, np.full(6, 1000), service.model.config.item_counter_windows)
    np.testing.assert_array_equal(before.numpy(), expected)
    assert before[:, 0].sum() > 0  # some candidates were clicked before
    service.append_events(1, [click(700, 6, "hats"), click(701, 6, "hats")])
    np.testing.assert_array_equal(service.item_counts(frame, 1000).numpy(), before.numpy())


def test_out_of_order_and_bad_events_change_nothing(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    before = service.rank(1, candidates(), {"placement": "feed"}, 1000).scores
    with pytest.raises(OutOfOrderEvents, match="older than the user's last event"):
        service.append_events(1, [click(800), click(100)])  # 100 < the last stored event (210)
    with pytest.raises(InvalidInput) as error:
        service.append_events(1, [click(800), {"event_type": "click", "timestamp": 801, "ad_id": 5}])
    assert error.value.field == "events[1].category"
    with pytest.raises(InvalidInput) as error:
        service.append_events(1, [{"event_type": "purchase", "timestamp": 900}])
    assert error.value.field == "events[0].event_type"
    assert "1" not in service.events
    after = service.rank(1, candidates(), {"placement": "feed"}, 1000)
    assert after.user_state == "hit"
    np.testing.assert_array_equal(before, after.scores)
    service.append_events(1, [click(210), click(210)])  # equal times: accepted, after the existing ones
    assert sum(service.user_events(1).counts().values()) == 9


def test_a_failing_request_leaves_the_cache_intact(served, monkeypatch):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    good = service.rank(1, candidates(), {"placement": "feed"}, 1000).scores
    with pytest.raises(InvalidInput) as error:
        service.rank(1, candidates(), {}, 1000)
    assert error.value.field == "context.placement"
    with pytest.raises(InvalidInput) as error:
        service.rank(1, [{"ad_id": 5}], {"placement": "feed"}, 1000)
    assert error.value.field == "candidates[0].category"
    np.testing.assert_array_equal(good, rank_after_a_failure(service, monkeypatch, service, "_score").scores)


def test_cold_start_and_new_users(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    cold = service.rank("someone-new", candidates(), {"placement": "story"}, 500)
    np.testing.assert_allclose(cold.scores, reference(service, 999, candidates(), {"placement": "story"}, 500), atol=1e-5, rtol=0)
    assert service.stats()["cold_start"] == 1
    service.append_events("someone-new", [click(100, 5, "shoes")])
    warm = service.rank("someone-new", candidates(), {"placement": "story"}, 500)
    assert not np.allclose(warm.scores, cold.scores)


def test_limits_and_memory_bound(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store, max_candidates=10, user_cache_bytes=3000)
    with pytest.raises(TooManyCandidates):
        service.rank(1, candidates(11), {"placement": "feed"}, 1000)
    for user in [1, 2, 3] + [f"new{i}" for i in range(30)]:
        service.rank(user, candidates(5), {"placement": "feed"}, 1000)
        assert service.users.nbytes <= 3000
    assert service.users.evictions > 0 and 0 < len(service.users) < 33
    assert service.rank("new29", candidates(5), {"placement": "feed"}, 1000).user_state == "hit"  # most recent kept


def test_concurrent_requests_score_as_if_alone(served):
    """Two scoring slots, 4 threads, many users, times and candidate counts at once (user states
    computed and reused meanwhile): every result equals the same request ranked alone, and a bad slot
    count is refused with its field named."""
    from concurrent.futures import ThreadPoolExecutor

    store, checkpoint, _ = served
    with pytest.raises(ValueError, match="scoring_slots"):
        RankingService.load(checkpoint, store, scoring_slots=0)
    alone = RankingService.load(checkpoint, store)
    shared = RankingService.load(checkpoint, store, scoring_slots=2)
    requests = [(user, t, n) for user in (1, 2, 3, "new") for t in (40, 250, 1000) for n in (7, 300)]
    expected = {r: alone.rank(r[0], candidates(r[2]), {"placement": "feed"}, r[1]).scores for r in requests}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: (r, shared.rank(r[0], candidates(r[2]), {"placement": "feed"}, r[1]).scores), requests * 3))
    for request, scores in got:
        np.testing.assert_allclose(scores, expected[request], atol=1e-6, rtol=0)
    assert shared.workspaces.qsize() == 2  # every slot handed back


def test_encoded_contexts_are_cached_and_keep_parity(served):
    """The encoded context vector is kept per distinct context (an LRU): a repeated context, a new one
    and an unseen value (the out-of-vocabulary bucket) each score as `evaluate` does; a missing
    attribute is still refused with the field named."""
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    contexts = [{"placement": "feed"}, {"placement": "search"}, {"placement": "never_seen_placement"}, {"placement": "feed"}]
    for context in contexts:
        got = service.rank(1, candidates(), context, 1000).scores
        np.testing.assert_allclose(got, reference(service, 1, candidates(), context, 1000), atol=1e-5)
    assert len(service.context_vectors) == 3
    with pytest.raises(InvalidInput) as error:
        service.rank(1, candidates(), {}, 1000)
    assert error.value.field == "context.placement"


def test_scoring_device_is_checked_at_load(served):
    """A scoring device this process cannot use is refused with the field named."""
    store, checkpoint, _ = served
    bad = ["tpu", "not a device"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(ValueError, match="scoring_device"):
            RankingService.load(checkpoint, store, scoring_device=device)
    assert RankingService.load(checkpoint, store, scoring_device="cpu").scoring_device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/device/serving_gpu.sh runs it on the GPU machine)")
@pytest.mark.parametrize("fixture", ["served", "served_dot", "served_identity", "served_low_rank_cross"])
def test_cuda_scoring_equals_cpu(fixture, request):
    """Candidates scored on the GPU (user side on the CPU) equal the CPU service's scores: fp32 within
    1e-5 (TF32 off), bf16 within bf16's own tolerance; the cache and model stay on the CPU."""
    store, checkpoint, _ = request.getfixturevalue(fixture)
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = RankingService.load(checkpoint, store)
    for precision, atol in (("fp32", 1e-5), ("bf16", 2e-2)):
        gpu = RankingService.load(checkpoint, store, scoring_device="cuda", precision=precision)
        for user, t in ((1, 1000), ("new", 1000), (2, 40)):
            expected = cpu.rank(user, candidates(300), {"placement": "feed"}, t).scores
            np.testing.assert_allclose(gpu.rank(user, candidates(300), {"placement": "feed"}, t).scores, expected, atol=atol, rtol=0)
        assert next(gpu.model.parameters()).device.type == "cpu"
