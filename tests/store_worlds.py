"""Raw-log worlds for comparing build engines byte for byte (tests/test_store_partitioned.py,
tests/test_store_spark.py): a small synthetic world in time order over several files and row groups,
and the trivago samples of the adapters (with labels from later events)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from eventrec.schema import builtin_schema_path

SHARED_DATA = Path(os.environ.get("EVENTREC_DATA_DIR") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")


def digest(directory: Path) -> dict[str, str]:
    """File name → sha256 of every file of a store."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def synthetic_world(directory: Path, users: int = 600) -> Path:
    """A small synthetic world whose events are in time order (not by user) in two Parquet files of
    small row groups, and whose impressions are a CSV file: every read path of the partitioned build.
    Returns the schema path."""
    from eventrec.synthetic import generate_world

    raw = directory / "raw"
    generate_world(raw, num_users=users, days=10, seed=3)
    data = directory / "data"
    data.mkdir(parents=True)
    events = pl.read_parquet(raw / "events.parquet").sort("timestamp", maintain_order=True)
    half = events.height // 2
    pq.write_table(events.head(half).to_arrow(), data / "events-0.parquet", row_group_size=1_500)
    pq.write_table(events.tail(events.height - half).to_arrow(), data / "events-1.parquet", row_group_size=1_500)
    pl.read_parquet(raw / "impressions.parquet").write_csv(data / "impressions.csv")
    (data / "ad_content.parquet").write_bytes((raw / "ad_content.parquet").read_bytes())
    spec = yaml.safe_load(builtin_schema_path("synthetic").read_text())
    spec["events"]["path"] = "events-*.parquet"
    spec["impressions"]["path"] = "impressions.csv"
    path = data / "schema.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trivago_sample(directory: Path, adapter: str) -> tuple[Path, Path]:
    """(schema path, data folder) of an adapter's trivago sample (``trivago_lists_small`` or
    ``trivago_views``: 1,000 users, string ids, labels from later events); skipped without the data."""
    from eventrec.adapters import ADAPTERS

    source = SHARED_DATA / "trivago"
    if not source.is_dir():
        pytest.skip(f"trivago not found at {source} (set EVENTREC_DATA_DIR)")
    prepare, schema_name = ADAPTERS[adapter]
    prepare(source, directory)
    return builtin_schema_path(schema_name), directory
