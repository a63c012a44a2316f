"""The adapter registry, the schemas' validity, atomic output and the statistics helper."""

from __future__ import annotations

import polars as pl
import pytest
from adapter_checks import schema_of

from eventrec.adapters import ADAPTERS, AdapterError, describe
from eventrec.adapters._common import SUMMARY_FILE, atomic_output, history_lengths


def _write_output(tmp, text: str) -> None:
    """What an adapter writes (its marker files included), so that the next run may replace it."""
    (tmp / "a.txt").write_text(text)
    (tmp / "events.parquet").write_text("")
    (tmp / SUMMARY_FILE).write_text("{}")


def test_registry_and_schemas():
    assert set(ADAPTERS) == {"trivago", "trivago_views", "trivago_lists_small", "ml100k", "ml100k_conversion", "amazon_grocery", "amazon_grocery_conversion"}
    for name, (prepare, schema_name) in ADAPTERS.items():
        assert callable(prepare)
        schema = schema_of(name)
        assert schema.name == schema_name
        assert schema.impressions.request_column == "request_id"


def test_atomic_output_keeps_previous_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output(out) as tmp:
        _write_output(tmp, "first")
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            _write_output(tmp, "second")
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


def test_prepare_replaces_only_its_own_output(prepared, tmp_path):
    from eventrec.adapters import ml100k
    from adapter_checks import source_dir

    others = tmp_path / "mine"
    others.mkdir()
    (others / "thesis.tex").write_text("precious")
    with pytest.raises(AdapterError, match="not a prepared-logs folder"):
        ml100k.prepare(tmp_path / "source", others)
    assert (others / "thesis.tex").read_text() == "precious"
    fake_source = tmp_path / "source"  # checked before anything is read: no real dataset at risk
    fake_source.mkdir()
    (tmp_path / "link").symlink_to(fake_source)
    for inside in (fake_source, fake_source / "sub", tmp_path / "link", tmp_path):
        with pytest.raises(AdapterError, match="--source"):
            ml100k.prepare(fake_source, inside)
    assert fake_source.is_dir() and (others / "thesis.tex").exists()
    out, _ = prepared("ml100k")
    ml100k.prepare(source_dir("ml100k"), out)  # a previous output is replaced
    assert (out / SUMMARY_FILE).is_file()
