"""Fuzzing the raw-log readers of a build (issue 21): random bytes, columns and types in the impressions
and events files give a clear ``DataError`` or a counted drop, never another exception."""

from __future__ import annotations

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventrec.schema import load_schema
from eventrec.store.build import build_store
from eventrec.store.raw_logs import DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COLUMNS = ["request_id", "user_id", "ad_id", "timestamp", "category", "placement", "click", "conversion", "junk"]
cell = st.one_of(st.none(), st.integers(-(2**64), 2**64), st.floats(allow_nan=True), st.text(max_size=6), st.booleans())


def _build(schema_path, data, out) -> None:
    try:
        manifest = build_store(load_schema(schema_path), data, out)
    except DataError as error:
        assert str(data) in str(error) or "schema splits" in str(error), f"an error naming no file: {error}"
        return
    assert all(isinstance(n, int) and n > 0 for n in manifest["drops"].values())


def _csv(tiny_world, name: str, payload: bytes) -> tuple:
    schema_path, data = tiny_world
    spec = yaml.safe_load(schema_path.read_text())
    spec["impressions"]["path"] = f"{name}.csv"
    schema_path.write_text(yaml.safe_dump(spec))
    (data / f"{name}.csv").write_bytes(payload)
    return schema_path, data


@FUZZ
@given(payload=st.binary(max_size=300), keep_header=st.booleans())
def test_random_bytes_in_a_csv(tiny_world, tmp_path_factory, payload, keep_header):
    header = b"request_id,user_id,ad_id,timestamp,category,placement,click,conversion\n" if keep_header else b""
    schema_path, data = _csv(tiny_world, "impressions", header + payload)
    _build(schema_path, data, tmp_path_factory.mktemp("out") / "s")


@FUZZ
@given(rows=st.lists(st.lists(cell, min_size=len(COLUMNS), max_size=len(COLUMNS)), min_size=0, max_size=8),
       drop=st.sets(st.sampled_from(COLUMNS), max_size=2), as_csv=st.booleans())
def test_random_columns_and_types(tiny_world, tmp_path_factory, rows, drop, as_csv):
    schema_path, data = tiny_world
    columns = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS) if c not in drop}
    try:  # a column of mixed Python types: stored as text, as a careless export would
        frame = pl.DataFrame(columns, strict=False)
    except Exception:
        frame = pl.DataFrame({c: [None if v is None else str(v) for v in values] for c, values in columns.items()})
    if as_csv:
        schema_path, data = _csv(tiny_world, "impressions", frame.write_csv().encode())
    else:
        frame.write_parquet(data / "impressions.parquet")
    _build(schema_path, data, tmp_path_factory.mktemp("out") / "s")


@FUZZ
@given(timestamps=st.lists(st.one_of(st.integers(0, 2**64 - 1), st.none()), min_size=1, max_size=10),
       dtype=st.sampled_from([pl.UInt64, pl.Int64, pl.Float64, pl.String]))
def test_random_event_timestamps(tiny_world, tmp_path_factory, timestamps, dtype):
    schema_path, data = tiny_world
    events = pl.read_parquet(data / "events.parquet").head(len(timestamps))
    values = pl.Series("timestamp", timestamps[: events.height], dtype=pl.UInt64)
    events.with_columns(values.cast(dtype, strict=False)).write_parquet(data / "events.parquet")
    _build(schema_path, data, tmp_path_factory.mktemp("out") / "s")


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00", b"a,b\n1", b"\n\n\n", b'"unterminated\n1,2\n'])
def test_known_bad_csvs(tiny_world, tmp_path, payload):
    schema_path, data = _csv(tiny_world, "impressions", payload)
    _build(schema_path, data, tmp_path / "s")
