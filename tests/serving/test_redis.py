"""The Redis user-state store and event log against a real ``redis-server``: two replicas share user
states and appended events, scores equal the in-process service, unreadable entries are recomputed,
Redis down gives a clear 503 (events) or a local compute (state cache)."""

from __future__ import annotations

import asyncio
import uuid

import httpx

import numpy as np
import pytest

from redis_server import start_redis, stop_redis
from eventrec.serving import InvalidInput, OutOfOrderEvents, RankingService, StoreUnavailable
from eventrec.serving.codec import encode_state
from eventrec.serving.http import create_app
from eventrec.serving.redis_store import connect, redis_stores
from test_core import candidates, click, reference

CONTEXT = {"placement": "feed"}


def replica(store, checkpoint, url: str, namespace: str, **options) -> RankingService:
    states, events = redis_stores(url, store, namespace=namespace, **options)
    return RankingService.load(checkpoint, store, state_store=states, event_log=events)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_two_replicas_share_state_and_appends(served, redis_url, namespace):
    store, checkpoint, _ = served
    a, b = replica(store, checkpoint, redis_url, namespace), replica(store, checkpoint, redis_url, namespace)
    local = RankingService.load(checkpoint, store)
    first = a.rank(1, candidates(), CONTEXT, 1000)
    calls = []
    for name in ("get", "mget"):  # b holds no copy: the write id and the state in one round trip
        original = getattr(b.users.client, name)
        setattr(b.users.client, name, lambda *keys, _name=name, _original=original: calls.append(_name) or _original(*keys))
    second = b.rank(1, candidates(), CONTEXT, 1000)
    del b.users.client.get, b.users.client.mget
    assert calls == ["mget"]
    assert (first.user_state, second.user_state) == ("miss", "hit")  # b reads the state a computed
    assert b.rank(1, candidates(), CONTEXT, 1000).user_state == "hit" and b.users.local_hits == 1  # then its own copy (the write id alone read)
    assert b.stats()["user_store_local_hits"] == 1 and b.stats()["user_store_local_bytes"] > 0
    expected = local.rank(1, candidates(), CONTEXT, 1000).scores
    np.testing.assert_allclose(first.scores, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(second.scores, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(second.scores, reference(local, 1, candidates(), CONTEXT, 1000), atol=1e-5, rtol=0)
    # an append on a is seen by b: b recomputes over 8 events, then a hits b's state
    a.append_events(1, [click(700, 9, "bags")])
    local.append_events(1, [click(700, 9, "bags")])
    assert sum(b.user_events(1).counts().values()) == 8 and b.is_known(1)
    after_b = b.rank(1, candidates(), CONTEXT, 1000)
    after_a = a.rank(1, candidates(), CONTEXT, 1000)
    assert (after_b.user_state, after_a.user_state) == ("miss", "hit")
    assert a.users.local_hits == 0  # a's copy has an older write id than b's state: read again
    expected = local.rank(1, candidates(), CONTEXT, 1000).scores
    np.testing.assert_allclose(after_b.scores, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(after_a.scores, expected, atol=1e-5, rtol=0)
    # b validates against a's append: an older event is refused, nothing is written
    with pytest.raises(OutOfOrderEvents):
        b.append_events(1, [click(650)])
    assert sum(a.user_events(1).counts().values()) == 8
    # a cold-start user appended on one replica is known on the other
    a.append_events("new-user", [click(100)])
    assert b.is_known("new-user") and b.rank("new-user", candidates(), CONTEXT, 1000).user_state == "miss"


def test_incremental_state_across_replicas(served_invariant, redis_url, namespace):
    store, checkpoint, _ = served_invariant
    a, b = replica(store, checkpoint, redis_url, namespace), replica(store, checkpoint, redis_url, namespace)
    assert a.rank(2, candidates(), CONTEXT, 1000).user_state == "miss"
    b.append_events(2, [click(500), click(600, 5, "shoes")])
    extended = a.rank(2, candidates(), CONTEXT, 1000)  # a extends the shared state by b's events
    assert extended.user_state == "incremental"
    assert b.rank(2, candidates(), CONTEXT, 1000).user_state == "hit"
    local = RankingService.load(checkpoint, store)
    local.append_events(2, [click(500), click(600, 5, "shoes")])
    np.testing.assert_allclose(extended.scores, local.rank(2, candidates(), CONTEXT, 1000).scores, atol=1e-5, rtol=0)


def test_corrupt_and_foreign_entries_are_recomputed(served, redis_url, namespace):
    store, checkpoint, _ = served
    a = replica(store, checkpoint, redis_url, namespace)
    expected = a.rank(3, candidates(), CONTEXT, 1000).scores
    key = f"{namespace}:state:{a.version}:3"
    good = a.users.client.get(key)
    foreign = a.users.get(("3", a.version))
    corrupt = 0
    for blob in (b"not a safetensors blob", good[:50], encode_state(foreign, "3", "another-model"), encode_state(foreign, "4", a.version)):
        reader = replica(store, checkpoint, redis_url, namespace)  # no copy of its own: it reads the entry
        a.users.client.set(key, blob)
        result = reader.rank(3, candidates(), CONTEXT, 1000)
        assert result.user_state == "miss"
        np.testing.assert_allclose(result.scores, expected, atol=1e-5, rtol=0)
        assert reader.rank(3, candidates(), CONTEXT, 1000).user_state == "hit"  # overwritten by the recompute
        corrupt += reader.stats()["user_store_corrupt"]
    assert corrupt == 4


def test_entry_bound_ttl_and_compare_and_set(served, redis_url, namespace, monkeypatch):
    store, checkpoint, _ = served
    small = replica(store, checkpoint, redis_url, namespace, max_entry_bytes=100)
    encoded = []
    monkeypatch.setattr("eventrec.serving.redis_store.encode_state", lambda *a, **k: encoded.append(a) or b"")
    assert small.rank(1, candidates(), CONTEXT, 1000).user_state == "miss"
    assert encoded == []  # its tensors alone are over the bound: never encoded
    monkeypatch.undo()
    assert small.rank(1, candidates(), CONTEXT, 1000).user_state == "hit"  # too large for Redis: kept by this replica only
    assert small.users.too_large == 1 and small.users.client.get(f"{namespace}:state:{small.version}:1") is None
    other = replica(store, checkpoint, redis_url, namespace, max_entry_bytes=100)
    assert other.rank(1, candidates(), CONTEXT, 1000).user_state == "miss"  # nothing to read in Redis: computed again
    assert small.rank(1, candidates(), CONTEXT, 1000).user_state == "miss"  # the other's write replaced the id: computed again
    timed = replica(store, checkpoint, redis_url, namespace + "t", ttl_s=30)
    timed.rank(1, candidates(), CONTEXT, 1000)
    assert 0 < timed.users.client.ttl(f"{namespace}t:state:{timed.version}:1") <= 30
    events = timed.user_events(1)
    log = timed.events
    assert log.replace("1", 0, type(events)(events.streams, 1))
    assert not log.replace("1", 0, type(events)(events.streams, 1))  # stale version: refused


async def _post(app, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post(path, json=body)


def test_redis_down(served, tmp_path, namespace):
    store, checkpoint, _ = served
    process, url = start_redis(tmp_path / "redis")
    try:
        service = replica(store, checkpoint, url, namespace)
        before = service.rank(1, candidates(), CONTEXT, 1000).scores
    finally:
        stop_redis(process)
    # events live only in Redis: ranking and appending refuse with a clear error (HTTP 503)
    with pytest.raises(StoreUnavailable, match="Redis at 127.0.0.1") as error:
        service.rank(1, candidates(), CONTEXT, 1000)
    assert error.value.status == 503
    with pytest.raises(StoreUnavailable):
        service.append_events(1, [click(700)])
    answer = asyncio.run(_post(create_app(service), "/rank", {"user_id": 1, "candidates": candidates(3), "context": CONTEXT, "timestamp": 1000}))
    assert answer.status_code == 503 and "Redis" in answer.json()["detail"][0]["msg"]
    # the state cache alone failing falls back to a local compute
    assert service.users.get(("1", service.version)) is None and service.users.errors >= 1
    with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
        redis_stores(url, store)
    assert connect(url).connection_pool is not None
    np.testing.assert_allclose(before, RankingService.load(checkpoint, store).rank(1, candidates(), CONTEXT, 1000).scores, atol=1e-5, rtol=0)


def test_bad_append_repair_with_redis(served, redis_url, namespace):
    """With Redis a wrong (in range, no clock check) append used to lock the user out for good: the
    operator's drop_appended_events repairs it for every replica; a millisecond time is refused."""
    store, checkpoint, _ = served
    a = replica(store, checkpoint, redis_url, namespace)
    states, events = redis_stores(redis_url, store, namespace=namespace)
    b = RankingService.load(checkpoint, store, state_store=states, event_log=events, future_tolerance_s=None)
    with pytest.raises(InvalidInput, match="out of range"):
        a.append_events(1, [click(1_700_000_000_000)])
    b.append_events(1, [click(700, 9, "bags"), click(7_000_000_000)])
    with pytest.raises(OutOfOrderEvents):
        a.append_events(1, [click(800)])
    a.rank(1, candidates(), CONTEXT, 1000)
    assert a.drop_appended_events(1, 700) == {"dropped": 1, "events": 8}
    b.append_events(1, [click(800)])
    assert sum(a.user_events(1).counts().values()) == 9
    local = RankingService.load(checkpoint, store)
    local.append_events(1, [click(700, 9, "bags"), click(800)])
    np.testing.assert_allclose(a.rank(1, candidates(), CONTEXT, 1000).scores, local.rank(1, candidates(), CONTEXT, 1000).scores, atol=1e-5, rtol=0)
