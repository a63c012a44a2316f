"""Value-based sampling (``sampling: {policy: value, ...}``): the policy against an exact brute-force
reference (hypothesis), its schema validation, the store's per-event values against the raw logs,
and the same events picked by training batches and by serving (windows, appended events, scores)."""

from __future__ import annotations

import copy
import math
import random
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from eventrec.data.gather import make_batch
from eventrec.data.sampling import most_recent, select_events, value_based
from eventrec.schema import SchemaError, ValueSampling, load_schema, parse_schema
from eventrec.store.build import build_store
from eventrec.store.reader import EventStore

DAY = 86_400


def value_policy(half_life: int | str, **fields) -> ValueSampling:
    return ValueSampling(policy="value", recency_half_life=half_life, **fields)


def events_of(timestamps, values) -> SimpleNamespace:
    """A stream's events as a policy reads them (StreamData's two arrays)."""
    return SimpleNamespace(timestamps=np.asarray(timestamps, dtype=np.int64), sampling_values=np.asarray(values, dtype=np.float32))


def exact_reference(timestamps, log2_values, ranges, max_length: int, half_life: int) -> list[list[int]]:
    """Per range, the kept indices (time order), ranked exactly: ``log2(v) + t / h`` as a Fraction
    (equal to ``log2(v · 2^(-(T - t) / h)) + T / h``: the same order for any reference time T),
    ties to the later index."""
    kept = []
    for start, end in ranges:
        ranked = sorted(range(start, end), key=lambda i: (log2_values[i] + Fraction(int(timestamps[i]), half_life), i), reverse=True)
        kept.append(sorted(ranked[:max_length]))
    return kept


def per_row(index: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [index[bounds[i]:bounds[i + 1]].tolist() for i in range(len(lengths))]


# -- the policy ---------------------------------------------------------------------------------------

@st.composite
def histories(draw):
    """Time-sorted events with many equal timestamps, power-of-two values (exact logs), and ranges."""
    n = draw(st.integers(0, 40))
    timestamps = sorted(draw(st.lists(st.integers(0, 60), min_size=n, max_size=n)))
    exponents = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    ranges = draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)).map(sorted).map(tuple), min_size=1, max_size=6))
    return timestamps, exponents, ranges, draw(st.integers(1, 8)), draw(st.integers(1, 90))


@settings(max_examples=300, deadline=None)
@given(histories())
def test_value_policy_equals_an_exact_brute_force(history):
    timestamps, exponents, ranges, max_length, half_life = history
    events = events_of(timestamps, [2.0**e for e in exponents])
    starts, ends = np.array([r[0] for r in ranges], dtype=np.int64), np.array([r[1] for r in ranges], dtype=np.int64)
    index, lengths = select_events(value_policy(half_life), starts, ends, max_length, events)
    rows = per_row(index, lengths)
    assert rows == exact_reference(timestamps, exponents, ranges, max_length, half_life)
    # exactly min(max_length, available), each from its own range, in time order
    assert lengths.tolist() == [min(max_length, e - s) for s, e in ranges]
    assert all(s <= i < e for row, (s, e) in zip(rows, ranges) for i in row)
    assert all(row == sorted(row) for row in rows)
    # deterministic, and a history's selection does not depend on the rest of the batch
    again, _ = select_events(value_policy(half_life), starts, ends, max_length, events)
    np.testing.assert_array_equal(index, again)
    for r, (s, e) in enumerate(ranges):
        alone, _ = select_events(value_policy(half_life), starts[r:r + 1], ends[r:r + 1], max_length, events)
        assert alone.tolist() == rows[r]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=50), st.floats(1e-3, 1e6), st.integers(1, 10**7), st.integers(1, 10), st.data())
def test_with_equal_values_it_is_most_recent(times, value, half_life, max_length, data):
    timestamps = sorted(times)
    n = len(timestamps)
    ranges = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)).map(sorted), min_size=1, max_size=5))
    starts, ends = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
    got = select_events(value_policy(half_life), starts, ends, max_length, events_of(timestamps, [value] * n))
    expected = most_recent(starts, ends, max_length)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_an_old_valuable_event_beats_recent_cheap_ones_within_its_half_lives():
    # a purchase (8) at t=0, views (1) at 10, 20, 30; keep 2
    events = events_of([0, 10, 20, 30], [8.0, 1.0, 1.0, 1.0])
    keep = lambda half_life: select_events(value_policy(half_life), np.array([0]), np.array([4]), 2, events)[0].tolist()  # noqa: E731
    assert keep(100) == [0, 3]  # 30 s is 0.3 half-lives: 8 · 2^-0.3 ≈ 6.5 > 1
    assert keep(1) == [2, 3]  # 30 half-lives: 8 · 2^-30 < 2^-10
    assert keep(10) == [0, 3]  # 3 half-lives: 8 · 2^-3 = 1 ties the view at 30 (kept: the more recent), beats the one at 20 (2^-1)
    # the same with most_recent keeps the two views
    assert most_recent(np.array([0]), np.array([4]), 2)[0].tolist() == [2, 3]


def test_scores_never_underflow_into_ties():
    # ages of millions of half-lives: 2^(-age/h) is 0.0 in float64, the log is not. Event 0 (value 8)
    # and event 1 (value 1) share a time; event 2 is latest. Exact: 0 beats 1.
    events = events_of([1_000_000, 1_000_000, 3_000_000], [8.0, 1.0, 1.0])
    index, _ = select_events(value_policy(1), np.array([0]), np.array([3]), 2, events)
    assert index.tolist() == [0, 2]


def test_a_store_without_values_is_refused_by_name():
    with pytest.raises(ValueError, match="per-event values"):
        value_based(np.array([0]), np.array([3]), 2, SimpleNamespace(timestamps=np.arange(3), sampling_values=None), value_policy(10))


# -- the schema ---------------------------------------------------------------------------------------

BASE_SCHEMA = {
    "name": "value_world",
    "events": {"path": "events.parquet", "user_column": "user_id", "timestamp_column": "timestamp", "type_column": "event_type"},
    "streams": [
        {
            "name": "activity",
            "event_types": ["purchase", "cart", "view"],
            "max_length": 3,
            "sampling": {"policy": "value", "event_type_values": {"purchase": 4.0, "cart": 2.0},
                         "attribute": "dwell_seconds", "recency_half_life": "1d"},
            "attributes": [
                {"name": "item_id", "kind": "categorical", "vocabulary": "item_id"},
                {"name": "dwell_seconds", "kind": "numeric", "transform": "log1p"},
            ],
        },
        {"name": "search", "event_types": ["search"], "max_length": 2, "attributes": [{"name": "query", "kind": "categorical"}]},
    ],
    "impressions": {
        "path": "impressions.parquet", "user_column": "user_id", "item_column": "item_id", "timestamp_column": "timestamp",
        "labels": ["click"], "item_attributes": [{"name": "item_id", "kind": "categorical", "vocabulary": "item_id"}],
    },
    "splits": {"train_fraction": 0.5, "validation_fraction": 0.2},
}


def schema_error(mutate) -> str:
    data = copy.deepcopy(BASE_SCHEMA)
    mutate(data["streams"][0])
    with pytest.raises(SchemaError) as info:
        parse_schema(data, "schema.yaml")
    return str(info.value)


def test_the_schema_reads_the_policy_and_keeps_most_recent_a_plain_string():
    schema = parse_schema(copy.deepcopy(BASE_SCHEMA))
    sampling = schema.stream("activity").sampling
    assert isinstance(sampling, ValueSampling) and sampling.half_life_seconds == DAY
    assert sampling.type_value("purchase") == 4.0 and sampling.type_value("view") == 1.0  # not listed: 1.0
    assert schema.stream("search").sampling == "most_recent"
    dumped = schema.model_dump(mode="json")
    assert dumped["streams"][1]["sampling"] == "most_recent"
    assert parse_schema(dumped) == schema  # the manifest's copy reads back


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s["sampling"]["event_type_values"].update(purchse=3.0), ["sampling.event_type_values", "'purchse'", "purchase"]),
    (lambda s: s["sampling"].update(attribute="item_id"), ["sampling.attribute", "'item_id'", "numeric", "dwell_seconds"]),
    (lambda s: s["sampling"].update(attribute="dwell"), ["sampling.attribute", "'dwell'"]),
    (lambda s: s["sampling"].update(recency_half_life=0), ["streams.0.sampling.recency_half_life", "positive"]),
    (lambda s: s["sampling"].update(recency_half_life="-2d"), ["streams.0.sampling.recency_half_life"]),
    (lambda s: s["sampling"].pop("recency_half_life"), ["streams.0.sampling.recency_half_life", "Field required"]),
    (lambda s: s["sampling"]["event_type_values"].update(cart=0.0), ["streams.0.sampling.event_type_values", "'cart'", "positive"]),
    (lambda s: s["sampling"]["event_type_values"].update(cart=float("nan")), ["streams.0.sampling.event_type_values", "'cart'"]),
    (lambda s: s["sampling"].update(halflife="1d"), ["streams.0.sampling.halflife", "Extra inputs"]),
    (lambda s: s.update(sampling="value"), ["streams.0.sampling", "takes parameters"]),
    (lambda s: s.update(sampling="valuable"), ["streams.0.sampling", "most_recent", "value"]),
])
def test_schema_errors_name_the_field(mutate, expected):
    message = schema_error(mutate)
    for part in expected:
        assert part in message, (part, message)


def test_the_docs_example_loads():
    text = (Path(__file__).resolve().parents[1] / "docs" / "schema.md").read_text()
    section = text[text.index("## Value-based sampling"):text.index("## Labels from later events")]
    stream = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])[0]
    data = copy.deepcopy(BASE_SCHEMA)
    data["streams"][0] = stream
    data["impressions"]["item_attributes"] = [stream["attributes"][0]]
    sampling = parse_schema(data, "docs/schema.md").stream("activity").sampling
    assert sampling.event_type_values == {"purchase": 3.0, "cart": 2.0} and sampling.half_life_seconds == 7 * DAY


def test_event_type_values_need_a_type_column():
    data = copy.deepcopy(BASE_SCHEMA)
    data["events"]["type_column"] = None
    with pytest.raises(SchemaError, match=r"streams.activity.sampling.event_type_values: the stream's events have no type column"):
        parse_schema(data, "schema.yaml")
    data["streams"][0]["sampling"]["event_type_values"] = {}  # an attribute and recency alone need no type
    parse_schema(data, "schema.yaml")


# -- a small world built into a store -----------------------------------------------------------------

TYPE_VALUES = {"purchase": 4.0, "cart": 2.0, "view": 1.0}


def world_events(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for user in range(1, 8):
        for _ in range(rng.randint(0, 30)):
            kind = rng.choice(["purchase", "cart", "view", "view", "view", "search"])
            t = rng.randint(0, 10 * DAY) if rng.random() > 0.2 else rng.choice([DAY, 2 * DAY, 5 * DAY])  # many ties
            row = {"user_id": user, "event_type": kind, "timestamp": t, "item_id": None, "dwell_seconds": None, "query": None}
            if kind == "search":
                row["query"] = rng.choice(["hotel", "shoes", "hats"])
            else:
                row["item_id"] = rng.randint(1, 12)
                row["dwell_seconds"] = None if rng.random() < 0.25 else rng.choice([0.0, -3.0, round(rng.uniform(0, 300), 3)])
            key = tuple(row.values())
            if key not in seen:  # exact duplicates are dropped by the build; keep the world free of them
                seen.add(key)
                rows.append(row)
    return rows


def world_impressions(events: list[dict], seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for user in range(1, 9):  # user 8 has no events
        times = [rng.randint(0, 11 * DAY) for _ in range(5)] + [e["timestamp"] for e in events if e["user_id"] == user][:2]  # equal to events
        rows += [{"user_id": user, "timestamp": t, "item_id": rng.randint(1, 12), "click": rng.randint(0, 1)} for t in times]
    return rows


def write_world(directory: Path, events: list[dict], impressions: list[dict], schema: dict = BASE_SCHEMA) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(events, schema={"user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "item_id": pl.Int64,
                                 "dwell_seconds": pl.Float64, "query": pl.String}).write_parquet(directory / "events.parquet")
    pl.DataFrame(impressions, schema={"user_id": pl.Int64, "timestamp": pl.Int64, "item_id": pl.Int64, "click": pl.Int8}
                 ).write_parquet(directory / "impressions.parquet")
    path = directory / "schema.yaml"
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


def build_world(directory: Path, seed: int = 0, schema: dict = BASE_SCHEMA) -> tuple[EventStore, list[dict], list[dict]]:
    """(store, raw events, raw impressions) of the value world of ``seed``."""
    events = world_events(seed)
    impressions = world_impressions(events, seed + 1)
    schema_path = write_world(directory / "data", events, impressions, schema)
    build_store(load_schema(schema_path), directory / "data", directory / "store")
    return EventStore.open(directory / "store"), events, impressions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("value_world"))


def expected_value(event: dict) -> float:
    """The documented formula: type value × (1 + max(0, log1p(dwell))) (null: ×1)."""
    dwell = event["dwell_seconds"]
    bonus = 0.0 if dwell is None or dwell <= 0 else math.log1p(dwell)
    return TYPE_VALUES[event["event_type"]] * (1.0 + bonus)


def user_history(events: list[dict], user: int) -> list[dict]:
    """The user's activity events in the store's order: time, then file row."""
    mine = [e for e in events if e["user_id"] == user and e["event_type"] != "search"]
    return sorted(mine, key=lambda e: e["timestamp"])  # stable: file order within a second


def test_the_store_keeps_each_event_s_value_from_its_raw_row(world):
    store, events, _ = world
    data = store.streams["activity"]
    assert data.sampling_values is not None and data.sampling_values.dtype == np.float32
    assert store.streams["search"].sampling_values is None
    for row, user in enumerate(store.user_ids.tolist()):
        segment = slice(data.user_offsets[row], data.user_offsets[row + 1])
        expected = [expected_value(e) for e in user_history(events, user)]
        np.testing.assert_allclose(data.sampling_values[segment], np.array(expected, dtype=np.float32), rtol=1e-6)
    columns = pq.read_schema(store.path / "users.parquet").names
    assert "activity___sampling_value" in columns and "search___sampling_value" not in columns
    assert store.manifest["streams"]["search"]["sampling"] == "most_recent"
    assert store.manifest["streams"]["activity"]["sampling"]["policy"] == "value"


def test_batches_hold_the_brute_force_selection_strictly_before_each_impression(world):
    check_batches(*world)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 10**6))
def test_batches_of_random_worlds_hold_the_brute_force_selection(seed):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        check_batches(*build_world(Path(directory), seed))


def test_recency_alone_builds_the_most_recent_histories(tmp_path):
    """A value policy with every value 1.0 (no types, no attribute) keeps what most_recent keeps."""
    schema = copy.deepcopy(BASE_SCHEMA)
    schema["streams"][0]["sampling"] = {"policy": "value", "recency_half_life": 3600}
    valued, _, _ = build_world(tmp_path / "valued", 3, schema)
    schema["streams"][0]["sampling"] = "most_recent"
    plain, _, _ = build_world(tmp_path / "plain", 3, schema)
    assert (valued.streams["activity"].sampling_values == 1.0).all()
    a, b = make_batch(valued, np.arange(valued.num_examples)), make_batch(plain, np.arange(plain.num_examples))
    for name in a.streams:
        assert a.streams[name].offsets.tolist() == b.streams[name].offsets.tolist()
        assert a.streams[name].timestamps.tolist() == b.streams[name].timestamps.tolist()
        assert a.streams[name].attributes["item_id" if name == "activity" else "query"].tolist() == \
            b.streams[name].attributes["item_id" if name == "activity" else "query"].tolist()
    assert np.diff(valued.streams["activity"].user_offsets).max() > 3  # histories longer than max_length: a real choice


def check_batches(store: EventStore, events: list[dict], impressions: list[dict]) -> None:
    """Every example's histories: the value stream's equal a brute force over the raw events strictly
    before the impression (age from the impression time), the other stream's are the most recent."""
    data = store.streams["activity"]
    half_life = store.schema.stream("activity").sampling.half_life_seconds
    index = np.arange(store.num_examples)
    batch = make_batch(store, index)
    stream = batch.streams["activity"]
    offsets = stream.offsets.numpy()
    for i in index:
        user, t = store.user_ids[store.user_rows[i]], int(store.timestamps[i])
        history = [e for e in user_history(events, int(user)) if e["timestamp"] < t]  # equal time excluded
        row = store.user_rows[i]
        values = data.sampling_values[data.user_offsets[row]:data.user_offsets[row] + len(history)]
        # age from the impression (the policy measures it from the last event: the same order), in
        # seconds: half_life · log2(value) - age, exact for the world's power-of-two type values
        score = [half_life * math.log2(float(v)) - (t - e["timestamp"]) for v, e in zip(values, history)]
        keep = sorted(sorted(range(len(history)), key=lambda j: (score[j], j), reverse=True)[:3])
        h = int(batch.history_index[i])
        got = stream.timestamps[offsets[h]:offsets[h + 1]].numpy()
        assert got.tolist() == [history[j]["timestamp"] for j in keep]
        assert (got < t).all()
        starts, ends = store.history_bounds("activity", np.array([i]))
        selected, _ = select_events(data.sampling, starts, ends, data.max_length, data)
        assert (selected - data.user_offsets[row]).tolist() == keep
        np.testing.assert_array_equal(stream.attributes["item_id"][offsets[h]:offsets[h + 1]].numpy(), data.attributes["item_id"][selected])
    # the other stream keeps its most recent events
    searches = batch.streams["search"]
    starts, ends = store.history_bounds("search", batch_representatives(batch))
    expected, _ = most_recent(starts, ends, 2)
    np.testing.assert_array_equal(searches.timestamps.numpy(), store.streams["search"].timestamps[expected])


def batch_representatives(batch) -> np.ndarray:
    """One example index per history row of the batch."""
    first = {}
    for i, h in enumerate(batch.history_index.tolist()):
        first.setdefault(h, int(batch.example_indices[i]))
    return np.array([first[h] for h in range(len(first))], dtype=np.int64)


def test_a_most_recent_store_has_no_value_column(tiny_store):
    columns = pq.read_schema(tiny_store.path / "users.parquet").names
    assert not [c for c in columns if c.endswith("___sampling_value")]
    assert all(d.sampling_values is None for d in tiny_store.streams.values())
    assert {s["sampling"] for s in tiny_store.manifest["streams"].values()} == {"most_recent"}


# -- serving picks the same events --------------------------------------------------------------------

def test_serving_windows_pick_the_training_events(world):
    from eventrec.serving.state import UserEvents
    from eventrec.serving.user_states import request_window, window_batch

    store, _, _ = world
    batch = make_batch(store, np.arange(store.num_examples))
    non_contiguous = 0
    for i in range(store.num_examples):
        t = int(store.timestamps[i])
        events = UserEvents.from_store(store, int(store.user_rows[i]))
        window = request_window(events, t)
        served = window_batch(events, window, t, 1, ["click"])
        h = int(batch.history_index[i])
        for name, stream in batch.streams.items():
            lo, hi = stream.offsets[h].item(), stream.offsets[h + 1].item()
            assert served.streams[name].timestamps.tolist() == stream.timestamps[lo:hi].tolist()
            for attribute, column in stream.attributes.items():
                assert served.streams[name].attributes[attribute].tolist() == column[lo:hi].tolist()
        start, end = window[0]
        non_contiguous += (end - start) > served.streams["activity"].timestamps.numel()
    assert non_contiguous > 0  # the world does make value sampling skip events


def test_appended_events_get_the_build_s_values_and_selection(world, tmp_path):
    """A store built without a user's last events, then those events appended through serving's
    records: the same values and windows as the store built with every event."""
    from eventrec.serving.codec import decode_events, encode_events
    from eventrec.serving.records import Records
    from eventrec.serving.state import UserEvents
    from eventrec.serving.user_states import request_window, window_events

    full, events, impressions = world
    cutoff = max(full.manifest["splits"]["validation_end"], 7 * DAY)  # later events change no vocabulary or statistic
    user = max(range(1, 8), key=lambda u: sum(e["user_id"] == u and e["timestamp"] >= cutoff for e in events))
    late = [e for e in events if e["user_id"] == user and e["timestamp"] >= cutoff]
    assert len(late) >= 3
    write_world(tmp_path / "data", [e for e in events if e not in late], impressions)
    build_store(load_schema(tmp_path / "data" / "schema.yaml"), tmp_path / "data", tmp_path / "store")
    partial = EventStore.open(tmp_path / "store")
    assert partial.vocabularies["item_id"].to_json() == full.vocabularies["item_id"].to_json()

    records = Records(partial)
    row = int(np.flatnonzero(partial.user_ids == user)[0])
    appended = records.appended(UserEvents.from_store(partial, row), records.event_streams(late), late, partial.schema.events)
    expected = UserEvents.from_store(full, int(np.flatnonzero(full.user_ids == user)[0]))
    for name in expected.streams:
        np.testing.assert_array_equal(appended.streams[name].timestamps, expected.streams[name].timestamps)
        a, b = appended.streams[name].sampling_values, expected.streams[name].sampling_values
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    for t in [cutoff, cutoff + DAY, 11 * DAY]:
        assert request_window(appended, t) == request_window(expected, t)
        for name, window in zip(expected.streams, request_window(expected, t)):
            np.testing.assert_array_equal(window_events(appended.streams[name], window), window_events(expected.streams[name], window))
    # the shared event log's codec keeps the values
    decoded = decode_events(encode_events(appended, str(user), "s"), str(user), "s", partial)
    np.testing.assert_array_equal(decoded.streams["activity"].sampling_values, appended.streams["activity"].sampling_values)
    # an event without its type cannot be valued: refused by name
    from eventrec.serving.errors import InvalidInput

    untyped = [{"stream": "activity", "timestamp": 11 * DAY, "item_id": 3, "dwell_seconds": 5.0}]
    with pytest.raises(InvalidInput, match="missing event type 'event_type'"):
        records.appended(appended, records.event_streams(untyped), untyped, partial.schema.events)


def test_ranking_service_scores_equal_predict(world, tmp_path_factory):
    """The served scores (non-contiguous windows) equal `predict` over the store's examples."""
    from eventrec.evaluation.predict import predict
    from eventrec.model.config import SequenceModelConfig
    from eventrec.serving import RankingService
    from eventrec.training.factory import batch_function
    from eventrec.training.trainer import TrainConfig, train

    store, _, impressions = world
    out = tmp_path_factory.mktemp("value_model")
    config = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])
    train(store, config, TrainConfig(epochs=1, batch_size=8, warmup_steps=1), out, show_progress=False)
    service = RankingService.load(out / "best", store)
    expected = predict(service.model, store, np.arange(store.num_examples), batch_function(service.model.config))
    order = np.argsort([r["timestamp"] for r in impressions], kind="stable")  # the store's examples are time-ordered
    for i, j in enumerate(order):
        row = impressions[j]
        assert int(store.timestamps[i]) == row["timestamp"]
        result = service.rank(row["user_id"], [{"item_id": row["item_id"]}], None, row["timestamp"])
        np.testing.assert_allclose(result.scores[0], expected[i], atol=1e-5, rtol=0)
