"""The adapter registry, the schemas' validity, atomic output and the statistics helper."""

from __future__ import annotations

import polars as pl
import pytest
from adapter_checks import schema_of

from eventrec.adapters import ADAPTERS, AdapterError, describe
from eventrec.adapters._common import atomic_output, history_lengths


def test_registry_and_schemas():
    assert set(ADAPTERS) == {"trivago", "ml100k", "amazon_grocery"}
    for name, (prepare, schema_name) in ADAPTERS.items():
        assert callable(prepare)
        schema = schema_of(name)
        assert schema.name == schema_name
        assert schema.impressions.request_column == "request_id"


def test_atomic_output_keeps_previous_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("killed half-way")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary directory left behind"
    with atomic_output(out) as tmp:
        (tmp / "b.txt").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]


def test_failed_prepare_leaves_previous_output(prepared, tmp_path):
    from eventrec.adapters import ml100k

    out, _ = prepared("ml100k")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(AdapterError, match="no such file"):
        ml100k.prepare(tmp_path / "nowhere", out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_history_lengths_exclude_equal_timestamps():
    events = pl.DataFrame({"u": [1, 1, 1, 2], "t": [10, 10, 20, 5]})
    requests = pl.DataFrame({"u": [1, 1, 1, 2, 3], "t": [10, 11, 20, 6, 1]})
    assert history_lengths(events, requests, "u", "t").to_list() == [0, 2, 2, 1, 0]


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_describe(prepared, name):
    out, summary = prepared(name)
    stats = describe(out, schema_of(name))
    assert stats["impressions"] == summary["impressions"]
    assert sum(s["events"] for s in stats["streams"].values()) == stats["events"] == summary["events"]
    for stream in stats["streams"].values():
        h = stream["history_length"]
        assert 0 <= h["p50"] <= h["p90"] <= h["p99"] <= h["max"]
