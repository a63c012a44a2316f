"""trivago adapter on the real 100k-row sample: mapping, counts, determinism, errors, store + batch."""

from __future__ import annotations

import polars as pl
import pytest
from adapter_checks import check_output_against_schema, check_store_and_batch, files_bytes, schema_of, source_dir

from eventrec.adapters import AdapterError, trivago

NAME = "trivago"


@pytest.fixture(scope="module")
def raw() -> pl.DataFrame:
    return pl.read_parquet(source_dir(NAME) / trivago.FILE)


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_impression_rows_are_the_impression_lists(prepared, raw):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    clickouts = raw.filter(pl.col("action_type") == "clickout item")
    # identical clickouts within one second (same user, hotel, list, prices) count once
    distinct = clickouts.unique(subset=["user_id", "timestamp", "reference", "impressions", "prices"])
    assert summary["dropped_repeated_clickouts"] == clickouts.height - distinct.height
    assert impressions.height == int(distinct["impressions"].str.split("|").list.len().sum()) == summary["impressions"]
    assert impressions["request_id"].n_unique() == distinct.height == summary["requests"]
    per_request = impressions.group_by("request_id").agg(
        pl.col("click").sum().alias("clicks"),
        pl.col("position").min().alias("first"),
        pl.col("position").max().alias("last"),
        pl.len().alias("n"),
        pl.col("price_rank").max().alias("max_rank"),
    )
    assert (per_request["first"] == 0).all() and (per_request["last"] == per_request["n"] - 1).all()
    assert (per_request["max_rank"] < per_request["n"]).all()
    # exactly one click where the clicked hotel is in the list, none where it is not
    in_list = distinct.select(pl.col("impressions").str.split("|").list.contains(pl.col("reference")).sum()).item()
    assert (per_request["clicks"] == 1).sum() == in_list == summary["clicks"]
    assert (per_request["clicks"] == 0).sum() == distinct.height - in_list == summary["clickouts_reference_not_in_list"]


def test_click_position_price_and_rank_match_the_raw_row(prepared, raw):
    out, _ = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    request = impressions.filter(pl.col("request_id") == 1234).sort("position")
    row = raw.filter(
        (pl.col("action_type") == "clickout item")
        & (pl.col("user_id") == request["user_id"][0])
        & (pl.col("timestamp") == request["timestamp"][0])
    ).row(0, named=True)
    items = [int(x) for x in row["impressions"].split("|")]
    prices = [float(x) for x in row["prices"].split("|")]
    assert request["item_id"].to_list() == items
    assert request["price"].to_list() == prices
    assert request["click"].to_list() == [int(i == int(row["reference"])) for i in items]
    assert request["price_rank"].to_list() == [sum(q < p for q in prices) for p in prices]
    assert request["platform"][0] == row["platform"] and request["city"][0] == row["city"]


def test_events_streams_and_counted_drops(prepared, raw):
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    assert events.height == raw.height - summary["merged_repeated_rows"] - summary["dropped_item_events_unknown_reference"]
    assert int(events["repeats"].sum()) == raw.height - summary["dropped_item_events_unknown_reference"]
    schema = schema_of(NAME)
    declared = {t for s in schema.streams for t in s.event_types}
    assert set(events["event_type"].unique().to_list()) == declared, "every action type feeds a stream"
    clickouts = events.filter(pl.col("event_type") == "clickout_item")
    assert clickouts["item_id"].null_count() == 0
    assert clickouts["price"].null_count() == summary["clickouts_reference_not_in_list"]
    text = events.filter(pl.col("event_type").is_in(trivago.TEXT_ACTIONS))
    assert text["query"].null_count() == 0 and text["item_id"].null_count() == text.height
    # sorted by user, then time
    assert events.equals(events.sort("user_id", "timestamp", "session_id", "step", maintain_order=True))


def test_deterministic(prepared, tmp_path):
    out, summary = prepared(NAME)
    again = trivago.prepare(source_dir(NAME), tmp_path / "again")
    assert again == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")


def test_missing_column_names_file_and_column(raw, tmp_path):
    bad = tmp_path / "bad.parquet"
    raw.head(500).drop("prices").write_parquet(bad)
    with pytest.raises(AdapterError, match=r"bad\.parquet.*missing column.*prices"):
        trivago.prepare(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unparsable_item_id_names_row(raw, tmp_path):
    bad = tmp_path / "bad.parquet"
    sample = raw.head(500).with_row_index("i")
    first_click = sample.filter(pl.col("action_type") == "clickout item")["i"][0]
    sample.with_columns(
        pl.when(pl.col("i") == first_click).then(pl.lit("12|abc|14")).otherwise(pl.col("impressions")).alias("impressions"),
        pl.when(pl.col("i") == first_click).then(pl.lit("1|2|3")).otherwise(pl.col("prices")).alias("prices"),
    ).drop("i").write_parquet(bad)
    with pytest.raises(AdapterError, match=rf"bad\.parquet: column 'impressions', row {first_click}: .*'abc'"):
        trivago.prepare(bad, tmp_path / "out")


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])
