"""Property tests over random logs: no event at or after an impression ever enters its history, and
histories and DLRM aggregates equal an obvious per-impression recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventrec.data.gather import make_batch
from eventrec.data.dlrm_features import DlrmFeatureBuilder
from eventrec.store.point_in_time import SegmentedTimeIndex, count_before_reference
from eventrec.schema import parse_schema
from eventrec.store.reader import EventStore
from eventrec.store.build import build_store

MAX_LEN = {"a": 3, "b": 5}


def _schema() -> dict:
    stream = lambda name: {  # noqa: E731
        "name": name,
        "event_types": [name],
        "max_length": MAX_LEN[name],
        "attributes": [{"name": "eid", "kind": "numeric"}, {"name": "item", "kind": "categorical", "vocabulary": "item"}],
    }
    return {
        "name": "random",
        "events": {"path": "events.parquet"},
        "streams": [stream("a"), stream("b")],
        "impressions": {
            "path": "impressions.parquet",
            "item_column": "item",
            "labels": ["y"],
            "item_attributes": [{"name": "item", "kind": "categorical", "vocabulary": "item"}],
        },
        "splits": {"train_end": 30, "validation_end": 45},
    }


event = st.tuples(st.integers(0, 4), st.sampled_from(["a", "b"]), st.integers(0, 60), st.integers(0, 6))
impression = st.tuples(st.integers(0, 5), st.integers(0, 62), st.integers(0, 6), st.integers(0, 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=40), impressions=st.lists(impression, min_size=1, max_size=15))
def test_histories_are_strictly_before_and_exact(tmp_path_factory, events, impressions):
    data = tmp_path_factory.mktemp("logs")
    rows = [(u, t, ts, float(i), item) for i, (u, t, ts, item) in enumerate(events)]
    pl.DataFrame(rows, schema={"user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "eid": pl.Float64, "item": pl.Int64}, orient="row").write_parquet(data / "events.parquet")
    pl.DataFrame(impressions, schema={"user_id": pl.Int64, "timestamp": pl.Int64, "item": pl.Int64, "y": pl.Int8}, orient="row").write_parquet(data / "impressions.parquet")
    out = data.with_name(f"{data.name}_store")  # beside the logs: a build refuses --out inside --data
    build_store(parse_schema(_schema()), data, out, allow_empty_splits=True)  # random logs: a split may be empty
    store = EventStore.open(out)
    batch = make_batch(store, np.arange(store.num_examples))
    dlrm = DlrmFeatureBuilder({"w10": 10, "all": None})(store, np.arange(store.num_examples))

    for k in range(store.num_examples):
        user = store.user_ids[store.user_rows[k]]
        t = store.timestamps[k]
        for name in ("a", "b"):
            sb = batch.streams[name]
            h = batch.history_index[k].item()
            assert batch.history_timestamps[h].item() == t
            lo, hi = sb.offsets[h].item(), sb.offsets[h + 1].item()
            times = sb.timestamps[lo:hi].numpy()
            assert (times < t).all(), "an event at or after the impression leaked into its history"
            stats = store.statistics[f"streams.{name}.eid"]
            eids = np.rint(sb.attributes["eid"][lo:hi].numpy().astype(np.float64) * stats["std"] + stats["mean"]).astype(int)
            # the reference: this user's events of the stream strictly before t, in (time, file) order, last L
            expected = sorted((ts, i) for i, (u, typ, ts, _) in enumerate(events) if u == user and typ == name and ts < t)
            expected = expected[-MAX_LEN[name]:]
            assert eids.tolist() == [i for _, i in expected]
            # DLRM aggregates use the whole history, also strictly before t
            window = [i for i, (u, typ, ts, _) in enumerate(events) if u == user and typ == name and t - 10 <= ts < t]
            everything = [i for i, (u, typ, ts, _) in enumerate(events) if u == user and typ == name and ts < t]
            column = dlrm.dense_names.index(f"{name}.w10.log_count")
            assert dlrm.dense[k, column].item() == np.float32(np.log1p(len(window)))
            bag = dlrm.sparse[f"{name}.item.all"]
            a, b = bag.offsets[k].item(), bag.offsets[k + 1].item()
            assert bag.weights[a:b].sum().item() == len(everything)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    data=st.data(),
    scale=st.sampled_from([1, 10**17])  # 10**17 forces the rank-compressed keys,
)
def test_segmented_time_index_matches_reference(lengths, data, scale):
    segments = [sorted(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    times = np.array([t * scale for s in segments for t in s], dtype=np.int64)
    queries = data.draw(st.lists(st.tuples(st.integers(0, len(lengths) - 1), st.integers(-3, 23)), min_size=1, max_size=20))
    rows = np.array([r for r, _ in queries])
    q_times = np.array([t * scale for _, t in queries], dtype=np.int64)
    index = SegmentedTimeIndex(offsets, times)
    np.testing.assert_array_equal(index.count_before(rows, q_times), count_before_reference(offsets, times, rows, q_times))


def test_one_users_cut_follows_the_equal_timestamp_rule():
    """``cut_before`` (serving's per-user cut) agrees with the store's reference on every boundary:
    an event at the request's own time is not history."""
    from eventrec.store.point_in_time import count_before_reference, cut_before

    timestamps = np.array([10, 20, 20, 30], dtype=np.int64)
    for time in (5, 10, 11, 20, 21, 30, 31):
        expected = count_before_reference(np.array([0, 4]), timestamps, np.array([0]), np.array([time]))[0]
        assert cut_before(timestamps, time) == expected
    assert cut_before(timestamps, 20) == 1


def test_an_unknown_sampling_policy_is_named():
    from eventrec.data.sampling import select_events

    with pytest.raises(ValueError, match="sampling: unknown policy 'newest_first'"):
        select_events("newest_first", np.array([0]), np.array([3]), 2)
    index, lengths = select_events("most_recent", np.array([0, 4]), np.array([3, 9]), 2)
    assert index.tolist() == [1, 2, 7, 8] and lengths.tolist() == [2, 2]
