from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_world import write_tiny_world  # noqa: E402

MODEL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])


def _train(tmp: Path, **overrides):
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.training.trainer import TrainConfig, train

    data = tmp / "tiny"
    schema_path = write_tiny_world(data)
    if not (tmp / "store" / "manifest.json").exists():
        build_store(load_schema(schema_path), data, tmp / "store")
    store = EventStore.open(tmp / "store")
    name = "run_" + "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    train(store, SequenceModelConfig(**(MODEL | overrides)), TrainConfig(epochs=1, batch_size=2, warmup_steps=1), tmp / name, show_progress=False)
    return store, tmp / name / "best", data


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(store, checkpoint dir, raw data dir) of a tiny model whose encoder reads the request time (``recency: encoder``)."""
    return _train(tmp_path_factory.mktemp("serving"), recency="encoder")


@pytest.fixture(scope="session")
def served_invariant(tmp_path_factory):
    """The same, with an encoder that does not read the request time (exact incremental appends)."""
    return _train(tmp_path_factory.mktemp("serving_inv"), timestamp_encoding=False, time_bias=True, summary_token=False)


@pytest.fixture(scope="session")
def served_recency_pooling(tmp_path_factory):
    """The default model (``recency: pooling``: the recency in the keyed pooling): exact incremental appends."""
    return _train(tmp_path_factory.mktemp("serving_recency_pooling"))


@pytest.fixture(scope="session")
def served_search(tmp_path_factory):
    """``recency: pooling`` with a narrow candidate search (each candidate reads the summary token, the
    most recent event and its most recent match per vocabulary): served through ops.selected_pooling."""
    return _train(tmp_path_factory.mktemp("serving_search"), recency="pooling", candidate_search={"recent": 1, "per_match": 1})


@pytest.fixture(scope="session")
def served_dot(tmp_path_factory):
    """The default encoder with the factorised dot term (``dot_term``) added to the logits."""
    return _train(tmp_path_factory.mktemp("serving_dot"), dot_term=True)


@pytest.fixture(scope="session")
def served_identity(tmp_path_factory):
    """The default encoder with the identity codes in the match attention (``identity_match``)."""
    return _train(tmp_path_factory.mktemp("serving_identity"), identity_match=True)


@pytest.fixture(scope="session")
def served_match_count(tmp_path_factory):
    """The default encoder with the count-preserving path (``match_count``) into the heads."""
    return _train(tmp_path_factory.mktemp("serving_match_count"), match_count=True)


@pytest.fixture(scope="session")
def served_item_counters(tmp_path_factory):
    """The default model with item counters over the whole history only (``item_counters: []``; the
    default model has them with its 1 d / 7 d / 30 d windows)."""
    return _train(tmp_path_factory.mktemp("serving_item_counters"), item_counters=[])


@pytest.fixture(scope="session")
def served_no_match_features(tmp_path_factory):
    """``recency: pooling`` without the exact candidate-match features (``match_features: false``, the
    models trained before they were the default)."""
    return _train(tmp_path_factory.mktemp("serving_no_match_features"), recency="pooling", match_features=False)


@pytest.fixture(scope="session")
def served_low_rank_cross(tmp_path_factory):
    """The default encoder with low-rank cross layers in the head (``cross_rank``)."""
    return _train(tmp_path_factory.mktemp("serving_low_rank_cross"), cross_rank=4)


@pytest.fixture(scope="session")
def served_invariant_token(tmp_path_factory):
    """Time-invariant with the summary token (no time bias): also exactly incremental."""
    return _train(tmp_path_factory.mktemp("serving_inv_tok"), timestamp_encoding=False, time_bias=False, summary_token=True)


@pytest.fixture(scope="session")
def served_bidirectional(tmp_path_factory):
    """A bidirectional encoder without time bias (recomputed on every change of its window)."""
    return _train(tmp_path_factory.mktemp("serving_bidirectional"), causal=False, time_bias=False)


@pytest.fixture(scope="session")
def served_no_summary(tmp_path_factory):
    """The default encoder without the summary token (reads the request time through the recency embedding only)."""
    return _train(tmp_path_factory.mktemp("serving_no_summary"), summary_token=False, recency="encoder")


@pytest.fixture(scope="session")
def served_no_match(tmp_path_factory):
    """Keyed pooling without the target (match) attention."""
    return _train(tmp_path_factory.mktemp("serving_no_match"), match_attention=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of a real Redis server for the session (started here, stopped at the end)."""
    from redis_server import start_redis, stop_redis

    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_redis(process)

