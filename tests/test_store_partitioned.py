"""The partitioned build (issue 24 item 3) against the in-memory reference: the same bytes on the tiny
world, a synthetic world in time order over several files (CSV impressions), mixed user id types and
the trivago samples (labels from later events), for partitions of one user up to one partition;
bad input named as the in-memory build names it; a killed build; and the pieces (partition plan,
row-group writer, merge)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventrec.schema import load_schema
from eventrec.store.assemble import RowGroupWriter, merge_sorted, write_ipc
from eventrec.store.build import build_store
from eventrec.store.layout import USER, write_parquet
from eventrec.store.raw_logs import DataError
from eventrec.store.reader import EventStore
from eventrec.store.user_partitions import ROWS, plan_partitions
from store_worlds import digest, synthetic_world, trivago_sample


def _same_as_in_memory(schema_path: Path, data: Path, out: Path, rows_per_partition: list[int]) -> dict:
    schema = load_schema(schema_path)
    reference = build_store(schema, data, out / "memory", engine="memory")
    expected = digest(out / "memory")
    for rows in rows_per_partition:
        messages: list[str] = []
        build_store(schema, data, out / f"polars-{rows}", rows_per_partition=rows, progress=messages.append)
        assert digest(out / f"polars-{rows}") == expected, f"rows_per_partition={rows}"
        assert not any("refused" in m for m in messages), messages  # built by the partitioned engine itself
    return reference


def test_tiny_world_any_partition_size(tiny_world, tmp_path):
    schema_path, data = tiny_world
    _same_as_in_memory(schema_path, data, tmp_path, [1, 2, 5, 1_000_000])


def test_any_number_of_workers(tiny_world, tmp_path):
    """One partition in flight, or more than there are cores: the same bytes as the in-memory build."""
    schema_path, data = tiny_world
    schema = load_schema(schema_path)
    build_store(schema, data, tmp_path / "memory", engine="memory")
    for workers in (1, 3):
        build_store(schema, data, tmp_path / f"workers-{workers}", rows_per_partition=2, workers=workers)
        assert digest(tmp_path / f"workers-{workers}") == digest(tmp_path / "memory"), f"workers={workers}"


def test_vectors_at_int8_and_value_sampling(tiny_world, tmp_path):
    """Per-event vectors stored at int8 (clicks and impressions) and a value-sampling stream, whose
    build carries each event's raw type and price into ``click___sampling_value``."""
    import yaml

    schema_path, data = tiny_world
    events = pl.read_parquet(data / "events.parquet")
    vectors = [[i * 0.37, -0.5 * i, 0.25] for i in range(events.height)]
    events.with_columns(pl.Series("vec", vectors, dtype=pl.List(pl.Float32))).write_parquet(data / "events.parquet")
    impressions = pl.read_parquet(data / "impressions.parquet")
    vectors = [[1.0, 2.0, i / 3] for i in range(impressions.height)]
    impressions.with_columns(pl.Series("vec", vectors, dtype=pl.List(pl.Float32))).write_parquet(data / "impressions.parquet")
    spec = yaml.safe_load(schema_path.read_text())
    vec = {"name": "vec", "kind": "embedding", "dim": 3, "precision": "int8"}
    spec["streams"][0]["attributes"].append(vec)
    spec["streams"][0]["sampling"] = {"policy": "value", "event_type_values": {"click": 2.0}, "attribute": "price", "recency_half_life": 100}
    spec["impressions"]["item_attributes"].append(vec)
    schema_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    _same_as_in_memory(schema_path, data, tmp_path, [1, 4])
    assert "click___sampling_value" in pq.read_schema(tmp_path / "polars-1" / "users.parquet").names


def test_labels_from_a_separate_events_file_with_string_user_ids(tiny_world, tmp_path):
    """A derived label read from its own file whose user ids are strings (the logs' are integers),
    some of which name no user: matched as strings, and every event counted, in both builds."""
    import yaml

    schema_path, data = tiny_world
    clicks = pl.DataFrame({"user": ["1", "2", "x", "3", "1"], "kind": ["buy"] * 5, "at": [60, 130, 20, 220, 400], "ad_id": [6, 7, 5, 9, 8]})
    clicks.write_parquet(data / "conversions.parquet")
    spec = yaml.safe_load(schema_path.read_text())
    source = {"path": "conversions.parquet", "user_column": "user", "timestamp_column": "at", "type_column": "kind"}
    spec["impressions"]["derived_labels"] = [{"name": "bought", "events": ["buy"], "match": ["ad_id"], "window": 500, "source": source}]
    schema_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    manifest = _same_as_in_memory(schema_path, data, tmp_path, [1, 4])
    assert manifest["counts"]["labels.bought.events"] == 5


def test_synthetic_world_in_time_order_over_files_and_csv(tmp_path):
    schema_path = synthetic_world(tmp_path)
    manifest = _same_as_in_memory(schema_path, schema_path.parent, tmp_path / "stores", [2_000, 50_000])
    assert manifest["counts"]["users"] > 200 and manifest["counts"]["impressions"] > 1_000


def test_mixed_user_id_types(tiny_world, tmp_path):
    """Impression user ids as strings, event user ids as integers: compared as strings by both."""
    schema_path, data = tiny_world
    impressions = pl.read_parquet(data / "impressions.parquet")
    impressions.with_columns(pl.col("user_id").cast(pl.String)).write_parquet(data / "impressions.parquet")
    _same_as_in_memory(schema_path, data, tmp_path, [1, 3])


def test_partitions_of_users_no_stream_reads(tiny_world, tmp_path):
    """The count pass counts every table row, whichever reader keeps it: users whose events are all of
    a type no stream reads plan partitions that hold no user of the store, which build to nothing."""
    schema_path, data = tiny_world
    events = pl.read_parquet(data / "events.parquet")
    unread = events.head(1).select([pl.lit(None, dtype=dtype).alias(name) if name not in ("user_id", "timestamp", "event_type") else pl.col(name)
                                    for name, dtype in events.schema.items()])
    others = pl.concat([unread.with_columns(pl.lit(10_000 + k).cast(events.schema["user_id"]).alias("user_id"),
                                            pl.lit("unread_type").cast(events.schema["event_type"]).alias("event_type")) for k in range(6)])
    pl.concat([events, others]).write_parquet(data / "events.parquet")
    _same_as_in_memory(schema_path, data, tmp_path, [1, 2])


@pytest.mark.parametrize("adapter", ["trivago_lists_small", "trivago_views"])
def test_trivago_samples_with_labels_from_later_events(tmp_path, adapter):
    schema_path, data = trivago_sample(tmp_path / "data", adapter)
    manifest = _same_as_in_memory(schema_path, data, tmp_path / "stores", [3_000])
    assert any(k.startswith("labels.") and k.endswith(".positives") for k in manifest["counts"])


RANDOM_SCHEMA = {
    "name": "random",
    "events": {"path": "events.parquet"},
    "streams": [{"name": name, "event_types": [name], "max_length": 4,
                 "attributes": [{"name": "x", "kind": "numeric"}, {"name": "item", "kind": "categorical", "vocabulary": "item"}]}
                for name in ("a", "b")],
    "impressions": {"path": "impressions.parquet", "item_column": "item", "labels": ["y"], "request_column": "request",
                    "item_attributes": [{"name": "item", "kind": "categorical", "vocabulary": "item"}]},
    "splits": {"train_fraction": 0.6, "validation_fraction": 0.2},
}
event = st.tuples(st.integers(0, 6), st.sampled_from(["a", "b", "c"]), st.integers(0, 40), st.sampled_from([0.5, 1.5, None]), st.integers(0, 5))
impression = st.tuples(st.integers(0, 7), st.integers(0, 42), st.integers(0, 5), st.integers(0, 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event, min_size=1, max_size=50), impressions=st.lists(impression, min_size=1, max_size=20),
       rows=st.integers(1, 30), data=st.data())
def test_random_logs_any_partition_size(tmp_path_factory, events, impressions, rows, data):
    """Random logs with tied times, exact duplicate events (repeated rows), repeated impressions,
    users with events only or impressions only, rows of no stream, fraction splits: same bytes."""
    from eventrec.schema import parse_schema

    events = events + data.draw(st.lists(st.sampled_from(events), max_size=5))  # exact duplicates
    folder = tmp_path_factory.mktemp("logs")
    pl.DataFrame(events, schema={"user_id": pl.Int64, "event_type": pl.String, "timestamp": pl.Int64, "x": pl.Float64, "item": pl.Int64},
                 orient="row").write_parquet(folder / "events.parquet", row_group_size=7)
    frame = pl.DataFrame(impressions, schema={"user_id": pl.Int64, "timestamp": pl.Int64, "item": pl.Int64, "y": pl.Int8}, orient="row")
    frame.with_columns(pl.struct("user_id", "timestamp").rank("dense").alias("request")).write_parquet(folder / "impressions.parquet")
    schema = parse_schema(RANDOM_SCHEMA)
    out = folder.with_name(f"{folder.name}_stores")
    build_store(schema, folder, out / "memory", engine="memory")
    build_store(schema, folder, out / "polars", rows_per_partition=rows)
    assert digest(out / "polars") == digest(out / "memory")


def _break(data: Path, file: str, change) -> None:
    change(pl.read_parquet(data / file)).write_parquet(data / file)


BAD_INPUTS = {
    "null user id": ("impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 3).then(None).otherwise(pl.col("user_id")).alias("user_id"))),
    "unparsable timestamp": ("events.parquet", lambda f: f.with_columns(pl.col("timestamp").cast(pl.String).str.replace("^150$", "yesterday"))),
    "bad label": ("impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 6).then(3).otherwise(pl.col("click")).cast(pl.Int8).alias("click"))),
    "request spanning users": ("impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 4).then(1).otherwise(pl.col("request_id")).alias("request_id"))),
    "missing column": ("events.parquet", lambda f: f.drop("price")),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named_as_the_in_memory_build_names_it(tiny_world, tmp_path, case):
    schema_path, data = tiny_world
    _break(data, *BAD_INPUTS[case])
    messages = {}
    for engine in ("memory", "polars"):
        with pytest.raises(DataError) as info:
            build_store(load_schema(schema_path), data, tmp_path / engine, engine=engine, rows_per_partition=1)
        messages[engine] = str(info.value)
        assert not (tmp_path / engine).exists() and not any(tmp_path.glob(f".{engine}.tmp-*"))
    assert messages["polars"] == messages["memory"]


def _checks(schema, data: Path, view: str):
    """Every task's :func:`check_rows` parts, on the consumers' full rows or on their check views."""
    from eventrec.store.scan import ScanPart, check_rows
    from eventrec.store.sources import plan_sources, read_batches, read_tasks

    sources = plan_sources(schema, data)
    total = ScanPart()
    for pattern, table in sources.tables.items():
        columns = sources.raw_columns(pattern) if view == "rows" else sources.check_columns(pattern)
        for task in read_tasks(pattern, table):
            for batch in read_batches(table, task, columns):
                for consumer in sources.of_table(pattern):
                    rows = consumer.rows(batch) if view == "rows" else consumer.check_view(batch)
                    total.add(check_rows(schema, consumer, rows, batch, None))
    return total


@pytest.mark.parametrize("case", [None, *sorted(BAD_INPUTS)])
def test_checks_read_only_their_columns(tiny_world, tmp_path, case):
    """The checks on a consumer's check view (what Spark's count job reads: user ids and checked
    columns) find what they find on its full rows (what the embedded split reads)."""
    schema_path, data = tiny_world
    if case is not None:
        _break(data, *BAD_INPUTS[case])
    schema = load_schema(schema_path)
    try:
        full = _checks(schema, data, "rows")
    except DataError:  # a missing column or an unreadable file: refused when planned, before either pass
        return
    view = _checks(schema, data, "view")
    assert (view.consumer_rows, view.refused, view.data_end) == (full.consumer_rows, full.refused, full.data_end)
    times = lambda part: np.sort(np.concatenate(part.impression_times)) if part.impression_times else np.zeros(0)  # noqa: E731
    assert np.array_equal(times(view), times(full))
    assert [f.sort(f.columns).rows() for f in view.requests] == [f.sort(f.columns).rows() for f in full.requests]


def test_of_two_errors_the_in_memory_build_s_first_is_named(tiny_world, tmp_path):
    """A null user id in the impressions (read first) and a missing column in the events (planned
    first by the partitioned build): the impressions' error, as the in-memory build reports it."""
    schema_path, data = tiny_world
    for case in ("null user id", "missing column"):
        _break(data, *BAD_INPUTS[case])
    with pytest.raises(DataError, match="impressions.parquet: column 'user_id', row 2: null user id"):
        build_store(load_schema(schema_path), data, tmp_path / "s", rows_per_partition=1)


def test_options_are_checked(tiny_world, tmp_path):
    schema_path, data = tiny_world
    for kwargs, field in (({"engine": "duckdb"}, "engine"), ({"rows_per_partition": 0}, "rows_per_partition"),
                          ({"spark_master": "local[1]"}, "spark_master"), ({"workers": 0}, "workers"),
                          ({"workers": 2, "engine": "memory"}, "workers")):
        with pytest.raises(ValueError, match=field):
            build_store(load_schema(schema_path), data, tmp_path / "s", **kwargs)


def test_killed_while_spilling_then_rerun(tiny_world, tmp_path):
    """SIGKILL once the work folder exists (the spill): the previous store stays, the rerun
    completes and leaves no temporary folder."""
    schema_path, data = tiny_world
    out = tmp_path / "store"
    command = [sys.executable, "-m", "eventrec.cli", "build", "--schema", str(schema_path), "--data", str(data), "--out", str(out),
               "--rows-per-partition", "20000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, env=env)
    previous = digest(out)
    events = pl.read_parquet(data / "events.parquet")
    pl.concat([events.with_columns(pl.col("user_id") + 10 * k) for k in range(3_000)]).write_parquet(data / "events.parquet", row_group_size=2_000)
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob(".store.tmp-*/_work/spill/*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert child.poll() is None, "the build ended before it spilled: make the world bigger"
    child.send_signal(signal.SIGKILL)
    child.wait()
    EventStore.open(out)
    assert digest(out) == previous
    subprocess.run(command, check=True, capture_output=True, env=env)
    assert EventStore.open(out).manifest["counts"]["streams.click.events"] == 6 * 3_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] == []


# -- the pieces ------------------------------------------------------------------------------------

def test_partition_plan_keeps_users_whole_and_near_the_target():
    users = pl.DataFrame({USER: [1, 2, 3, 5, 8, 13], ROWS: [4, 4, 30, 1, 1, 2]})
    plan = plan_partitions(users, rows_per_partition=8)
    # a user starts a partition when the rows before it cross a multiple of 8: user 3 alone (heavier
    # than a partition), user 13 starts at row 40
    assert plan.user_counts == (2, 1, 2, 1) and plan.row_counts == (8, 30, 2, 2)
    assert plan.offsets == [0, 2, 3, 5]
    assert plan.assign(pl.Series([1, 2, 3, 4, 13, 100, None])).tolist() == [0, 0, 1, 1, 3, 3, -1]
    assert plan.assign(pl.Series(["3", "x", None])).tolist() == [1, 0, -1]  # other id types cast (not castable: partition 0)
    single = plan_partitions(users, rows_per_partition=1_000)
    assert single.count == 1 and single.assign(pl.Series([0, 99])).tolist() == [0, 0]


def test_row_group_writer_writes_the_bytes_of_write_parquet(tmp_path):
    rng = np.random.default_rng(0)
    n = 150_000
    offsets = np.concatenate([[0], np.cumsum(rng.integers(0, 4, n))])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 9, int(offsets[-1])).astype(np.int32)))
    table = pa.table({"a": rng.integers(0, 1000, n), "s": pa.array([f"u{i % 977}" for i in range(n)], type=pa.large_string()), "l": lists})
    write_parquet(table, tmp_path / "whole.parquet")
    writer = RowGroupWriter(tmp_path / "pieces.parquet")
    start = 0
    for size in (1, 70_000, 3, 65_533, 14_463):
        writer.write(table.slice(start, size))
        start += size
    writer.close()
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "pieces.parquet").read_bytes()


def test_merge_sorted_equals_a_sort(tmp_path):
    rng = np.random.default_rng(1)
    rows = pl.DataFrame({"t": rng.integers(0, 50, 30_000), "r": rng.permutation(30_000), "v": rng.normal(size=30_000)})
    parts = []
    for k, part in enumerate(rows.with_columns((pl.col("r") % 7).alias("p")).partition_by("p")):
        path = tmp_path / f"{k}.arrow"
        write_ipc(part.drop("p").sort(["t", "r"]).to_arrow(), path)
        parts.append(path)
    merged = pl.from_arrow(pa.concat_tables(list(merge_sorted(parts, "t", "r"))))
    assert merged.equals(rows.sort(["t", "r"]))


def test_arrow_memory_is_restored_after_nested_builds():
    from eventrec.store.arrow_memory import returning_arrow_memory

    before = pa.default_memory_pool().backend_name
    with returning_arrow_memory():
        inside = pa.default_memory_pool().backend_name
        with returning_arrow_memory():
            pass
        assert pa.default_memory_pool().backend_name == inside  # the inner block does not restore early
    assert pa.default_memory_pool().backend_name == before


def test_the_command_line_s_partition_size_is_the_library_s():
    import inspect

    from eventrec import cli
    from eventrec.store.partitioned import DEFAULT_ROWS_PER_PARTITION

    assert inspect.signature(cli.build).parameters["rows_per_partition"].default.default == DEFAULT_ROWS_PER_PARTITION
