"""amazon_grocery_conversion on the real files: the user sample, impressions one second before the
purchase day, and the derived label ``purchase`` (bought that day) in a built store, checked against
the raw rows and the plain ``amazon_grocery`` adapter."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
from adapter_checks import (
    check_output_against_schema,
    check_store_and_batch,
    examples_beside_impressions,
    files_bytes,
    schema_of,
    source_dir,
)

from eventrec.adapters import ADAPTERS, SOURCE_FOLDERS, AdapterError, amazon_grocery, amazon_grocery_conversion
from eventrec.adapters._common import history_lengths, sample_key

NAME = "amazon_grocery_conversion"
DAY = 86_400


@pytest.fixture(scope="module")
def purchases() -> pl.DataFrame:
    """The raw ``train.csv`` rows (user_id, item_id, time)."""
    return pl.read_csv(source_dir(NAME) / amazon_grocery.INTERACTIONS, separator="\t")


@pytest.fixture(scope="module")
def store(prepared, tmp_path_factory):
    """(examples beside their impressions, row for row; manifest) of a store built from the output."""
    out, _ = prepared(NAME)
    return examples_beside_impressions(out, schema_of(NAME), tmp_path_factory.mktemp("conversion_store") / "store", ["split", "cut__purchase", "label__purchase"])


def test_registered():
    assert ADAPTERS[NAME] == (amazon_grocery_conversion.prepare, amazon_grocery_conversion.SCHEMA)
    assert SOURCE_FOLDERS[NAME] == "amazon-grocery"
    schema = schema_of(NAME)
    assert schema.impressions.labels == [] and schema.impressions.all_labels == ["purchase"]
    (derived,) = schema.impressions.derived_labels
    assert derived.events == ["purchase"] and derived.window_seconds == DAY
    assert [(m.impression, m.event) for m in derived.match_columns] == [("item_id", "item_id")]
    plain = schema_of("amazon_grocery")
    assert [s.model_dump() for s in schema.streams] == [s.model_dump() for s in plain.streams]
    assert [a.model_dump() for a in schema.impressions.item_attributes] == [a.model_dump() for a in plain.impressions.item_attributes]


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_user_sample(prepared, purchases, tmp_path):
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    users = sorted(events["user_id"].unique().to_list())
    everyone = purchases["user_id"].unique().to_list()
    assert len(users) == summary["users"] == 1000 < summary["users_in_source"] == len(everyone)
    keys = sorted((sample_key(u, 0), u) for u in everyone)
    assert users == sorted(u for _, u in keys[:1000]), "the 1000 smallest blake2b keys"
    assert sample_key(7, 0) == sample_key("7", 0), "an integer id is keyed by its decimal text"
    small = amazon_grocery_conversion.prepare(source_dir(NAME), tmp_path / "small", max_users=50)
    small_users = set(pl.read_parquet(tmp_path / "small" / "events.parquet")["user_id"].unique().to_list())
    assert small["users"] == len(small_users) == 50 and small_users <= set(users)
    assert pl.read_parquet(tmp_path / "small" / "impressions.parquet")["user_id"].n_unique() == 50
    other = amazon_grocery_conversion.prepare(source_dir(NAME), tmp_path / "other", max_users=50, seed=1)
    other_users = set(pl.read_parquet(tmp_path / "other" / "events.parquet")["user_id"].unique().to_list())
    assert other["users"] == 50 and other_users != small_users
    with pytest.raises(AdapterError, match="max_users"):
        amazon_grocery_conversion.prepare(source_dir(NAME), tmp_path / "bad", max_users=0)
    with pytest.raises(AdapterError, match="negatives"):
        amazon_grocery_conversion.prepare(source_dir(NAME), tmp_path / "bad", negatives=-1)


def test_events_are_the_plain_events_of_the_sample(prepared):
    out, summary = prepared(NAME)
    base, _ = prepared("amazon_grocery")
    events = pl.read_parquet(out / "events.parquet")
    expected = pl.read_parquet(base / "events.parquet").filter(pl.col("user_id").is_in(events["user_id"].unique().implode()))
    assert events.equals(expected)
    assert events.height == summary["events"] == summary["requests"]


def test_impressions_one_second_before_the_purchase_day(prepared, purchases):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    n = summary["negatives_per_purchase"]
    assert n == 4 and "purchase" not in impressions.columns
    assert impressions.height == summary["impressions"] == summary["requests"] * (1 + n)
    assert ((impressions["timestamp"] + 1) % DAY == 0).all()
    per_request = impressions.group_by("request_id").agg(
        pl.col("is_negative_sample").sum().alias("neg"), pl.col("item_id").n_unique().alias("items"), pl.len().alias("rows"),
        pl.col("user_id").n_unique().alias("users"), pl.col("timestamp").n_unique().alias("times"),
    )  # fmt: skip
    assert (per_request["neg"] == n).all() and (per_request["items"] == 1 + n).all() and (per_request["rows"] == 1 + n).all()
    assert (per_request["users"] == 1).all() and (per_request["times"] == 1).all()
    # the shown items are exactly the sampled users' purchases, at their midnight - 1
    sampled = purchases.filter(pl.col("user_id").is_in(impressions["user_id"].unique().implode()))
    shown = impressions.filter(pl.col("is_negative_sample") == 0).select("user_id", "item_id", "timestamp").sort(pl.all())
    assert shown.equals(sampled.select("user_id", "item_id", (pl.col("time") - 1).alias("timestamp")).sort(pl.all()))
    # no negative is an item the user bought on or before the purchase day (same day included)
    negatives = impressions.filter(pl.col("is_negative_sample") == 1)
    clash = negatives.join(sampled, on=["user_id", "item_id"], how="inner").filter(pl.col("time") <= pl.col("timestamp") + 1)
    assert clash.height == 0
    same_day_baskets = sampled.group_by("user_id", "time").len().filter(pl.col("len") > 1)
    assert summary["purchases_sharing_user_and_day"] == int(same_day_baskets["len"].sum()) > 0, "days with several purchases exist"


def test_deterministic(prepared, tmp_path):
    out, summary = prepared(NAME)
    again = amazon_grocery_conversion.prepare(source_dir(NAME), tmp_path / "again")
    assert again == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")


def test_label_is_the_purchased_item(store, prepared, purchases):
    examples, manifest = store
    counts = manifest["counts"]
    label = examples["label__purchase"]
    missing = label.is_nan()
    assert int(missing.sum()) == counts["labels.purchase.missing"]
    # censored: the last day (its window passes the data's end) and the day before each split boundary
    data_end = int(purchases.filter(pl.col("user_id").is_in(examples["user_id"].unique().implode()))["time"].max())
    train_end, validation_end = manifest["splits"]["train_end"], manifest["splits"]["validation_end"]
    last = examples.select(
        pl.when(pl.col("split") == 0).then(train_end - 1).when(pl.col("split") == 1).then(validation_end - 1).otherwise(data_end)
    ).to_series()
    ends = examples["timestamp"] + DAY
    assert (missing == ((ends > last) | (ends > data_end))).all()
    assert counts["labels.purchase.censored.end_of_data"] == int((examples["timestamp"] + 1 == data_end).sum()) > 0
    assert int(missing.sum()) < 0.01 * examples.height
    # every labelled row: 1 exactly on the request's purchased item
    labelled = examples.filter(~missing)
    assert (labelled["label__purchase"] == (1 - labelled["is_negative_sample"]).cast(pl.Float32)).all()
    assert float(labelled["label__purchase"].mean()) == pytest.approx(0.2)
    # and from the raw rows: a purchase of the same user and item in (t, t + 1 d], i.e. at t + 1
    raw = purchases.select("user_id", "item_id", pl.col("time").alias("bought"))
    hits = (
        labelled.with_row_index("_i")
        .join(raw, on=["user_id", "item_id"], how="left")
        .with_columns(((pl.col("bought") > pl.col("timestamp")) & (pl.col("bought") <= pl.col("timestamp") + DAY)).fill_null(False).alias("hit"))
        .group_by("_i", maintain_order=True)
        .agg(pl.col("hit").any(), pl.col("label__purchase").first())
    )
    assert (hits["label__purchase"] == hits["hit"].cast(pl.Float32)).all()


def test_history_holds_only_earlier_days(store, prepared):
    """No impression sees its own day's purchases; its history is the plain adapter's (at the midnight)."""
    examples, _ = store
    out, _ = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    requests = examples.select("user_id", "timestamp")
    at_midnight = history_lengths(events, requests.with_columns(pl.col("timestamp") + 1), "user_id", "timestamp")
    assert (examples["cut__purchase"] == at_midnight).all()
    # with the cut: the last history event of each request is on an earlier day
    first_of_user = events.with_row_index("_e").group_by("user_id").agg(pl.col("_e").min().alias("first"))
    positions = examples.join(first_of_user, on="user_id", how="left", maintain_order="left")
    with_history = positions.filter(pl.col("cut__purchase") > 0)
    last_seen = events["timestamp"].to_numpy()[(with_history["first"] + with_history["cut__purchase"] - 1).to_numpy()]
    assert (last_seen <= with_history["timestamp"].to_numpy() + 1 - DAY).all()
    following = positions.filter(pl.col("first") + pl.col("cut__purchase") < events.height)
    next_event = events.with_row_index("_e").select("_e", "user_id", "timestamp")
    nxt = following.select((pl.col("first") + pl.col("cut__purchase")).alias("_e"), pl.col("user_id").alias("u"), pl.col("timestamp").alias("t"))
    nxt = nxt.join(next_event, on="_e", how="left", maintain_order="left").filter(pl.col("user_id") == pl.col("u"))
    assert (nxt["timestamp"] > nxt["t"]).all(), "the first event after the cut is on or after the purchase day"
    assert np.any(examples["cut__purchase"].to_numpy() == 0) and examples["cut__purchase"].max() > 0


def test_splits_have_a_few_hundred_requests(store):
    examples, _ = store
    requests = examples.group_by("split").agg(pl.col("request_id").n_unique().alias("n")).sort("split")
    assert requests["split"].to_list() == [0, 1, 2]
    assert (requests["n"] >= 300).all(), requests


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])


def test_refuses_times_that_are_not_midnights(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source_dir(NAME), src)
    lines = (src / amazon_grocery.INTERACTIONS).read_text().splitlines()
    user, item, time = lines[1].split("\t")
    lines[1] = "\t".join([user, item, str(int(time) + 3600)])
    (src / amazon_grocery.INTERACTIONS).write_text("\n".join(lines) + "\n")
    with pytest.raises(AdapterError, match=r"train\.csv: column 'time', row 0: .* not a UTC midnight"):
        amazon_grocery_conversion.prepare(src, tmp_path / "out", max_users=10**6)
