"""The Spark engine (issue 24 item 2): ``eventrec build --engine spark`` writes the store of the embedded
builds, byte for byte (so the same users, lists, cuts, vocabularies and statistics), on the tiny world,
a time-ordered synthetic world over several files with CSV impressions, and a trivago sample with
labels from later events; bad input is named as the in-memory build names it.

One local Spark session (2 cores) for the module. Without pyspark or Java the tests are skipped,
and fail when ``CI=true`` (``make test`` installs both)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from eventrec.schema import load_schema
from eventrec.store.build import build_store
from eventrec.store.raw_logs import DataError
from store_worlds import digest, synthetic_world, trivago_sample


def _missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark not installed (pip install '.[spark]'; `make test` installs it)"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (Debian: apt-get install -y openjdk-17-jre-headless; `make test` installs it as root)"
    return None


@pytest.fixture(scope="module")
def spark():
    reason = _missing()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    from pyspark.sql import SparkSession

    from eventrec.store.spark_engine import spark_session

    session = spark_session("local[2]")
    session.sparkContext.setLogLevel("ERROR")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()
    assert SparkSession.getActiveSession() is None


def _same_as_embedded(schema_path: Path, data: Path, out: Path, rows_per_partition: int) -> dict:
    schema = load_schema(schema_path)
    build_store(schema, data, out / "memory", engine="memory")
    messages: list[str] = []
    manifest = build_store(schema, data, out / "spark", engine="spark", rows_per_partition=rows_per_partition, progress=messages.append)
    assert digest(out / "spark") == digest(out / "memory")
    assert not any("refused" in m for m in messages), messages
    assert any("user partitions" in m and not m.startswith("splitting the raw rows into 1 ") for m in messages), messages
    return manifest


def test_tiny_world(spark, tiny_world, tmp_path):
    schema_path, data = tiny_world
    _same_as_embedded(schema_path, data, tmp_path, rows_per_partition=3)


def test_synthetic_world_in_time_order_over_files_and_csv(spark, tmp_path):
    schema_path = synthetic_world(tmp_path, users=300)
    manifest = _same_as_embedded(schema_path, schema_path.parent, tmp_path / "stores", rows_per_partition=1_000)
    assert manifest["counts"]["impressions"] > 500


def test_trivago_sample_with_labels_from_later_events(spark, tmp_path):
    schema_path, data = trivago_sample(tmp_path / "data", "trivago_lists_small")
    manifest = _same_as_embedded(schema_path, data, tmp_path / "stores", rows_per_partition=5_000)
    assert manifest["counts"]["users"] > 100


def test_bad_input_is_named_as_the_in_memory_build_names_it(spark, tiny_world, tmp_path):
    schema_path, data = tiny_world
    frame = pl.read_parquet(data / "events.parquet")
    frame.with_columns(pl.col("timestamp").cast(pl.String).str.replace("^150$", "yesterday")).write_parquet(data / "events.parquet")
    messages = []
    for engine in ("memory", "spark"):
        with pytest.raises(DataError) as info:
            build_store(load_schema(schema_path), data, tmp_path / engine, engine=engine, rows_per_partition=2)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "unparsable timestamp 'yesterday'" in messages[0]
