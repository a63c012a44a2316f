"""The store builder on the tiny world: point-in-time cuts, encodings, determinism, atomicity, bad input."""

from __future__ import annotations

import hashlib
import os
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from eventrec.store.raw_logs import DataError
from eventrec.schema import load_schema
from eventrec.store.reader import EventStore, StoreError
from eventrec.store.build import build_store
from eventrec.store.vocab import MISSING_ID, OOV_ID, Vocabulary


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_cuts_follow_the_equal_timestamp_rule(tiny_store):
    # impression 0: user 1 at t=50; clicks at 10, 50, 50 -> only t=10 is strictly before
    assert tiny_store.cuts["click"].tolist() == [1, 3, 0, 3, 0, 5, 1]
    assert tiny_store.cuts["view"].tolist() == [1, 1, 1, 2, 0, 2, 1]


def test_splits_by_time(tiny_store):
    assert tiny_store.splits.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert tiny_store.manifest["splits"] == {"train_end": 100, "validation_end": 200}


def test_vocabulary_is_built_from_training_period_only(tiny_store):
    category = tiny_store.vocabularies["category"]
    assert category.values == ["hats", "shoes", "bags"]  # by training count; "new" appears after train_end
    assert "new" not in category.values
    # the impression of category "new" is out of vocabulary
    assert tiny_store.item["category"][5] == OOV_ID


def test_hashed_ids_keep_identity_of_unseen_items(tiny_store):
    # ad 99 first appears after training; it keeps its own hashed id, equal in history and candidate
    ad_ids = tiny_store.item["ad_id"]
    assert ad_ids[5] not in (MISSING_ID, OOV_ID)
    click = tiny_store.streams["click"]
    assert click.attributes["ad_id"][4] == ad_ids[5]
    assert Vocabulary("ad_id", buckets=97).encode(pl.Series([99])).item() == ad_ids[5]


def test_nulls_and_numeric_normalisation(tiny_store):
    price = tiny_store.streams["click"].attributes["price"]
    assert price[3] == 0.0  # the null price
    assert tiny_store.manifest["nulls_encoded_as_missing"]["streams.click.price"] == 1
    stats = tiny_store.statistics["streams.click.price"]
    assert stats["transform"] == "log1p"
    train_prices = np.log1p([10.0, 20.0, 30.0])
    assert stats["mean"] == pytest.approx(train_prices.mean())


def test_labels_keep_missing_as_nan(tiny_store):
    conversion = tiny_store.labels[:, tiny_store.label_names.index("conversion")]
    assert np.isnan(conversion[1]) and np.isnan(conversion[4])
    assert tiny_store.manifest["counts"]["labels.conversion.missing"] == 2


def test_unused_event_rows_are_counted(tiny_store):
    assert tiny_store.manifest["drops"]["events.rows_of_no_stream"] == 1


def test_content_table_aligned_with_key_ids(tiny_store):
    click = tiny_store.streams["click"]
    key, matrix = click.looked_up["content"]
    assert key == "ad_id"
    ad5 = Vocabulary("ad_id", buckets=97).encode(pl.Series([5])).item()
    np.testing.assert_allclose(matrix[ad5], [1.0, 0.0])


def test_build_is_deterministic_and_order_independent(tiny_world, tmp_path):
    schema_path, data = tiny_world
    schema = load_schema(schema_path)
    build_store(schema, data, tmp_path / "a")
    build_store(schema, data, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    # the same events in another file order give the same histories (ties keep file order, so
    # shuffle only rows whose timestamps differ within a user)
    events = pl.read_parquet(data / "events.parquet")
    events.reverse().write_parquet(data / "events.parquet")
    build_store(schema, data, tmp_path / "c")
    a, c = EventStore.open(tmp_path / "a"), EventStore.open(tmp_path / "c")
    assert a.cuts["click"].tolist() == c.cuts["click"].tolist()
    np.testing.assert_array_equal(a.streams["view"].timestamps, c.streams["view"].timestamps)


def test_failed_build_leaves_previous_store_intact(tiny_world, tmp_path, monkeypatch):
    schema_path, data = tiny_world
    schema = load_schema(schema_path)
    out = tmp_path / "store"
    build_store(schema, data, out)
    before = _digest(out)

    import eventrec.store.build as builder

    def explode(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-build")

    monkeypatch.setattr(builder, "write_json", explode)
    with pytest.raises(KeyboardInterrupt):
        build_store(schema, data, out)
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] == []


def test_interrupted_swap_is_recovered(tiny_world, tmp_path):
    schema_path, data = tiny_world
    out = tmp_path / "store"
    build_store(load_schema(schema_path), data, out)
    out.rename(tmp_path / ".store.old")  # as if killed between the two renames
    store = EventStore.open(out)
    assert store.num_examples == 7


def test_duplicate_events_are_dropped_and_counted(tiny_world, tmp_path):
    schema_path, data = tiny_world
    events = pl.read_parquet(data / "events.parquet")
    pl.concat([events, events.head(2)]).write_parquet(data / "events.parquet")
    manifest = build_store(load_schema(schema_path), data, tmp_path / "s")
    assert manifest["drops"]["streams.click.duplicate_events"] == 1
    assert manifest["drops"]["streams.view.duplicate_events"] == 1  # list-valued topics compared too
    assert manifest["counts"]["streams.click.events"] == 6
    assert manifest["counts"]["streams.view.events"] == 3


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not an event store"):
        EventStore.open(tmp_path)


# -- bad input: each error names the file, the column and the first offending row -------------------

def _break(data: Path, file: str, change) -> None:
    frame = pl.read_parquet(data / file)
    change(frame).write_parquet(data / file)


def _build_error(tiny_world, tmp_path) -> str:
    schema_path, data = tiny_world
    with pytest.raises(DataError) as info:
        build_store(load_schema(schema_path), data, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    return str(info.value)


def test_missing_column(tiny_world, tmp_path):
    _break(tiny_world[1], "events.parquet", lambda f: f.drop("price"))
    message = _build_error(tiny_world, tmp_path)
    assert "events.parquet" in message and "missing column 'price'" in message


def test_mistyped_column(tiny_world, tmp_path):
    _break(tiny_world[1], "events.parquet", lambda f: f.with_columns(pl.col("price").cast(pl.String)))
    message = _build_error(tiny_world, tmp_path)
    assert "column 'price' has type String, expected number" in message


def test_null_user_id(tiny_world, tmp_path):
    _break(tiny_world[1], "impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 3).then(None).otherwise(pl.col("user_id")).alias("user_id")))
    message = _build_error(tiny_world, tmp_path)
    assert "impressions.parquet" in message and "'user_id', row 2: null user id" in message


def test_unparsable_timestamp(tiny_world, tmp_path):
    _break(tiny_world[1], "events.parquet", lambda f: f.with_columns(pl.col("timestamp").cast(pl.String).str.replace("^50$", "yesterday")))
    message = _build_error(tiny_world, tmp_path)
    assert "'timestamp', row 2: unparsable timestamp 'yesterday'" in message


def test_out_of_range_timestamp(tiny_world, tmp_path):
    _break(tiny_world[1], "impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 4).then(-5).otherwise(pl.col("timestamp")).alias("timestamp")))
    message = _build_error(tiny_world, tmp_path)
    assert "row 3: timestamp -5 out of range" in message


def test_bad_label(tiny_world, tmp_path):
    _break(tiny_world[1], "impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 2).then(3).otherwise(pl.col("click")).cast(pl.Int8).alias("click")))
    message = _build_error(tiny_world, tmp_path)
    assert "column 'click', row 1: label must be 0, 1 or null, got 3" in message


def test_empty_and_absent_files(tiny_world, tmp_path):
    (tiny_world[1] / "impressions.parquet").write_bytes(b"")
    assert "empty file" in _build_error(tiny_world, tmp_path)
    (tiny_world[1] / "impressions.parquet").unlink()
    assert "no such file" in _build_error(tiny_world, tmp_path)


def test_csv_logs_build_like_parquet(tiny_world, tmp_path):
    schema_path, data = tiny_world
    import yaml

    spec = yaml.safe_load(schema_path.read_text())
    pl.read_parquet(data / "impressions.parquet").write_csv(data / "impressions.csv")
    spec["impressions"]["path"] = "impressions.csv"
    schema_path.write_text(yaml.safe_dump(spec))
    build_store(load_schema(schema_path), data, tmp_path / "csv")
    store = EventStore.open(tmp_path / "csv")
    assert store.cuts["click"].tolist() == [1, 3, 0, 3, 0, 5, 1]
    assert json.loads((tmp_path / "csv" / "manifest.json").read_text())["counts"]["impressions"] == 7


def test_store_of_another_schema_version_asks_for_a_rebuild(tiny_store):
    manifest = json.loads((tiny_store.path / "manifest.json").read_text())
    manifest["schema"]["streams"][0]["dlrm_id"] = "ad_id"  # a field an older eventrec wrote
    (tiny_store.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="rebuild it"):
        EventStore.open(tiny_store.path)


def test_duplicate_events_with_vectors_are_detected(tmp_path):
    from eventrec.store.load import ROW, TIME, USER, _drop_exact_duplicates

    frame = pl.DataFrame(
        {ROW: [0, 1, 2], USER: [1, 1, 1], TIME: [5, 5, 5], "v": [[1.0, 2.0], [1.0, 2.0], [1.5, 2.0]]},
        schema={ROW: pl.UInt32, USER: pl.Int64, TIME: pl.Int64, "v": pl.Array(pl.Float32, 2)},
    )
    assert _drop_exact_duplicates(frame)[ROW].to_list() == [0, 2]


# -- the output folder: only a previous store is replaced (issue 21, items 1 and 10) ----------------

def test_build_replaces_only_a_previous_store(tiny_world, tmp_path):
    schema_path, data = tiny_world
    schema = load_schema(schema_path)
    others = tmp_path / "mine"
    others.mkdir()
    (others / "notes.txt").write_text("precious")
    with pytest.raises(DataError, match="not an eventrec store"):
        build_store(schema, data, others)
    assert (others / "notes.txt").read_text() == "precious"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        build_store(schema, data, tmp_path / "a_file")
    (tmp_path / "link").symlink_to(data)
    for out in (data, data / "store", tmp_path / "link", tmp_path / "link" / "store", tmp_path):
        with pytest.raises(DataError, match="--data"):
            build_store(schema, data, out)
    assert sorted(p.name for p in data.iterdir()) == ["ad_content.parquet", "events.parquet", "impressions.parquet", "schema.yaml"]
    (tmp_path / "empty").mkdir()
    build_store(schema, data, tmp_path / "empty")  # an empty folder is fine
    build_store(schema, data, tmp_path / "empty")  # and so is a previous store
    assert EventStore.open(tmp_path / "empty").num_examples == 7


def test_stale_temporary_folders_of_killed_builds_are_removed(tiny_world, tmp_path):
    import subprocess
    import sys

    schema_path, data = tiny_world
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = tmp_path / f".store.tmp-{dead.stdout.strip()}"
    stale.mkdir()
    (stale / "users.parquet").write_bytes(b"half written")
    alive = tmp_path / f".store.tmp-{os.getppid()}"  # a running build (here: the test runner's parent)
    alive.mkdir()
    build_store(load_schema(schema_path), data, tmp_path / "store")
    assert not stale.exists() and alive.exists()


# -- CSV read errors name the file, the column and the row (issue 21, item 6) ------------------------

def _csv_impressions(tiny_world, text: bytes) -> None:
    import yaml

    schema_path, data = tiny_world
    spec = yaml.safe_load(schema_path.read_text())
    spec["impressions"]["path"] = "impressions.csv"
    schema_path.write_text(yaml.safe_dump(spec))
    (data / "impressions.csv").write_bytes(text)


def _impressions_csv(tiny_world, copies: int = 1) -> pl.DataFrame:
    frame = pl.concat([pl.read_parquet(tiny_world[1] / "impressions.parquet")] * copies)
    return frame.with_columns(pl.int_range(pl.len()).alias("request_id"))


def test_csv_bytes_that_are_not_utf8(tiny_world, tmp_path):
    _csv_impressions(tiny_world, _impressions_csv(tiny_world).write_csv().encode().replace(b"story", b"st\xffory", 1))
    assert "impressions.csv: column 'placement', row 2 (line 4): bytes that are not UTF-8" in _build_error(tiny_world, tmp_path)


def test_csv_row_with_an_extra_field(tiny_world, tmp_path):
    _csv_impressions(tiny_world, _impressions_csv(tiny_world).write_csv().encode().replace(b"story,0,0\n", b"story,0,0,9\n", 1))
    assert "impressions.csv: row 2 (line 4): 9 fields, the header has 8" in _build_error(tiny_world, tmp_path)


def test_csv_type_error_after_the_inferred_rows(tiny_world, tmp_path):
    lines = _impressions_csv(tiny_world, copies=2000).with_columns(pl.col("click").cast(pl.Float64)).write_csv().split("\n")
    fields = lines[12_001].split(",")
    fields[6] = "abc"  # the click label of row 12,000: its type was inferred from the first 10,000 rows
    lines[12_001] = ",".join(fields)
    _csv_impressions(tiny_world, "\n".join(lines).encode())
    assert "impressions.csv: column 'click', row 12000: cannot parse 'abc' as Float64" in _build_error(tiny_world, tmp_path)


@pytest.mark.parametrize("csv", [False, True])
def test_uint64_timestamps_beyond_int64(tiny_world, tmp_path, csv):
    frame = _impressions_csv(tiny_world).with_columns(
        pl.when(pl.col("request_id") == 2).then(2**63 + 5).otherwise(pl.col("timestamp")).cast(pl.UInt64).alias("timestamp"))
    if csv:
        _csv_impressions(tiny_world, frame.write_csv().encode())
    else:
        frame.write_parquet(tiny_world[1] / "impressions.parquet")
    assert "column 'timestamp', row 2: out of range timestamp 9223372036854775813" in _build_error(tiny_world, tmp_path)


# -- split boundaries beyond the data (issue 21, item 7) ---------------------------------------------

def test_split_boundaries_beyond_the_data_are_refused(tiny_world, tmp_path):
    import yaml

    schema_path, data = tiny_world
    spec = yaml.safe_load(schema_path.read_text())
    spec["splits"] = {"train_end": 100, "validation_end": 10_000}  # every later impression falls in validation
    schema_path.write_text(yaml.safe_dump(spec))
    message = _build_error(tiny_world, tmp_path)
    assert "schema splits" in message and "validation_end" in message and "no impression in the test split" in message
    manifest = build_store(load_schema(schema_path), data, tmp_path / "s", allow_empty_splits=True)  # the documented way out
    assert manifest["counts"]["examples.test"] == 0


# -- input no longer accepted silently (issue 21, item 8) --------------------------------------------

def test_duplicate_impression_rows_are_kept_and_counted(tiny_world, tmp_path):
    """A repeated impression row is counted in the manifest (a logging duplicate shows), and kept:
    negatives sampled with replacement repeat rows on purpose."""
    schema_path, data = tiny_world
    _break(data, "impressions.parquet", lambda f: pl.concat([f, f.filter(pl.col("request_id") == 4)]))
    manifest = build_store(load_schema(schema_path), data, tmp_path / "s")
    assert manifest["counts"]["impressions.duplicate_rows_kept"] == 1
    assert manifest["counts"]["impressions"] == 8


def test_a_request_spanning_several_users_or_times_is_refused(tiny_world, tmp_path):
    _break(tiny_world[1], "impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 4).then(1).otherwise(pl.col("request_id")).alias("request_id")))
    message = _build_error(tiny_world, tmp_path)
    assert "column 'request_id', row 3: request 1 spans several users or times" in message
    _break(tiny_world[1], "impressions.parquet", lambda f: f.with_columns(pl.when(pl.col("request_id") == 1).then(3).otherwise(pl.col("request_id")).alias("request_id")))
    assert "request 3 spans several users or times" in _build_error(tiny_world, tmp_path)


def test_a_zero_row_events_file_is_refused(tiny_world, tmp_path):
    _break(tiny_world[1], "events.parquet", lambda f: f.head(0))
    assert "events.parquet: no data rows" in _build_error(tiny_world, tmp_path)
