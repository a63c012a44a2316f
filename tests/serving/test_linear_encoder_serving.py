"""Serving a model with the linear encoder (``encoder: linear``): events appended to a cached user grow its
fixed-size per-layer state, and the scores equal a full recompute within 1e-5; the state survives the
shared store's codec and stays float32 under a lower state precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eventrec.serving import RankingService
from eventrec.serving.codec import CorruptEntry, decode_state, encode_state
from eventrec.serving.user_states import request_window, window_batch
from tiny_world import write_tiny_world

MODEL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8], encoder="linear", recency="pooling")
CONTEXT = {"placement": "feed"}


@pytest.fixture(scope="module")
def linear_service_parts(tmp_path_factory) -> tuple:
    """(store, checkpoint) of a tiny model with the linear encoder, its recency in the pooling (extendable)."""
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import load_schema
    from eventrec.store.build import build_store
    from eventrec.store.reader import EventStore
    from eventrec.training.trainer import TrainConfig, train

    tmp: Path = tmp_path_factory.mktemp("serving_linear")
    schema_path = write_tiny_world(tmp / "tiny")
    build_store(load_schema(schema_path), tmp / "tiny", tmp / "store")
    store = EventStore.open(tmp / "store")
    train(store, SequenceModelConfig(**MODEL), TrainConfig(epochs=1, batch_size=2, warmup_steps=1), tmp / "run", show_progress=False)
    return store, tmp / "run" / "best"


def candidates(n: int = 30) -> list[dict]:
    ads, categories = [5, 6, 7, 8, 9, 123457], ["shoes", "hats", "bags", "new"]
    return [{"ad_id": ads[i % len(ads)], "category": categories[(i // len(ads)) % len(categories)]} for i in range(n)]


def click(t: int, ad: int = 6, category: str = "hats") -> dict:
    return {"event_type": "click", "timestamp": t, "ad_id": ad, "category": category, "price": 12.0}


def view(t: int, category: str = "shoes") -> dict:
    return {"event_type": "view", "timestamp": t, "category": category, "topics": ["a"]}


def fresh(service: RankingService) -> RankingService:
    """A service with the same events and no cached user states (every user side recomputed)."""
    again = RankingService(service.model, service.store, service.version)
    again.events.entries.update(service.events.entries)
    return again


def test_appends_to_a_cached_user_equal_a_full_recompute(linear_service_parts):
    store, checkpoint = linear_service_parts
    service = RankingService.load(checkpoint, store)
    assert service.model.extendable and service.model.encoder.cache_kind == "recurrent"
    assert service.rank(2, candidates(), CONTEXT, 1000).user_state == "miss"
    key = ("2", service.state_version)
    sizes = [tuple(s.shape) for (s,) in service.users.get(key).layer_kv]
    assert sizes == [(1, 2, 8, 8)] * 2  # [G=1, H, d, d] per layer

    service.append_events(2, [click(500)])  # one event
    one = service.rank(2, candidates(), CONTEXT, 1000)
    assert one.user_state == "incremental"
    np.testing.assert_allclose(one.scores, fresh(service).rank(2, candidates(), CONTEXT, 1000).scores, atol=1e-5, rtol=0)

    service.append_events(2, [view(501, "hats"), view(502, "bags"), click(600, 5, "shoes")])  # several at once
    appended = service.rank(2, candidates(), CONTEXT, 1000)
    assert appended.user_state == "incremental"
    full = fresh(service).rank(2, candidates(), CONTEXT, 1000)
    assert full.user_state == "miss"
    np.testing.assert_allclose(appended.scores, full.scores, atol=1e-5, rtol=0)

    # the grown per-layer states equal those of one encode of everything, and did not grow
    state = service.users.get(key)
    assert [tuple(s.shape) for (s,) in state.layer_kv] == sizes
    events = service.user_events(2)
    batch = window_batch(events, request_window(events, 1000), 1000, len(service.task_names), service.task_names)
    with torch.no_grad():
        expected = service.model.encode_user(batch, capture_kv=True).layer_kv
    for (got,), (want,) in zip(state.layer_kv, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    # a request before the appended events reads a prefix of the positions
    earlier = service.rank(2, candidates(), CONTEXT, 550)
    assert earlier.user_state == "prefix"
    np.testing.assert_allclose(earlier.scores, fresh(service).rank(2, candidates(), CONTEXT, 550).scores, atol=1e-5, rtol=0)


def _grown_state(service: RankingService):
    """User 2's state after a miss and one incremental append."""
    service.rank(2, candidates(), CONTEXT, 1000)
    service.append_events(2, [click(500), view(501, "hats")])
    assert service.rank(2, candidates(), CONTEXT, 1000).user_state == "incremental"
    return service.users.get(("2", service.state_version))


def test_the_recurrent_state_round_trips_through_the_codec(linear_service_parts):
    store, checkpoint = linear_service_parts
    service = RankingService.load(checkpoint, store)
    state = _grown_state(service)
    blob = encode_state(state, "2", service.state_version)
    back = decode_state(blob, "2", service.state_version)
    assert back.nbytes == state.nbytes and back.window == state.window
    for (a,), (b,) in zip(state.layer_kv, back.layer_kv):
        assert torch.equal(a, b)
    # a state of the wrong shape is unreadable (the caller recomputes)
    from safetensors.torch import load, save
    import json

    tensors = load(blob)
    tensors["layer0.state"] = tensors["layer0.state"][0]
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    with pytest.raises(CorruptEntry):
        decode_state(save(tensors, metadata=header), "2", service.state_version)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_state_precision_keeps_the_recurrent_state_exact(linear_service_parts, precision):
    """The positions are kept at the lower precision; the recurrent states stay float32 (each append carries
    them on), so they still equal one encode of everything."""
    store, checkpoint = linear_service_parts
    service = RankingService.load(checkpoint, store, state_precision=precision)
    state = _grown_state(service)
    events = service.user_events(2)
    batch = window_batch(events, request_window(events, 1000), 1000, len(service.task_names), service.task_names)
    with torch.no_grad():
        expected = service.model.encode_user(batch, capture_kv=True).layer_kv
    for (got,), (want,) in zip(state.layer_kv, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    back = decode_state(encode_state(state, "2", service.state_version), "2", service.state_version)
    assert back.precision == precision and all(torch.equal(a, b) for (a,), (b,) in zip(state.layer_kv, back.layer_kv))
