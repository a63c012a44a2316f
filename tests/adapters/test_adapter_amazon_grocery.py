"""Amazon grocery adapter on the real files: sampled negatives, counts, determinism, errors, store."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from adapter_checks import check_output_against_schema, check_store_and_batch, files_bytes, schema_of, source_dir

from eventrec.adapters import AdapterError, amazon_grocery

NAME = "amazon_grocery"


@pytest.fixture(scope="module")
def purchases() -> pl.DataFrame:
    return pl.read_csv(source_dir(NAME) / amazon_grocery.INTERACTIONS, separator="\t")


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_one_positive_and_n_distinct_unowned_negatives_per_purchase(prepared, purchases):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    events = pl.read_parquet(out / "events.parquet")
    n = summary["negatives_per_purchase"]
    assert n == 4
    assert events.height == purchases.height == summary["requests"]
    assert impressions.height == purchases.height * (1 + n) == summary["impressions"]
    per_request = impressions.group_by("request_id").agg(
        pl.col("purchase").sum().alias("pos"), pl.col("item_id").n_unique().alias("items"), pl.len().alias("rows")
    )
    assert (per_request["pos"] == 1).all() and (per_request["items"] == 1 + n).all() and (per_request["rows"] == 1 + n).all()
    assert (impressions["is_negative_sample"] == 1 - impressions["purchase"]).all()
    # no negative is an item the user bought on or before the request's day
    negatives = impressions.filter(pl.col("purchase") == 0)
    owned = purchases.rename({"time": "bought"})
    clash = negatives.join(owned, on=["user_id", "item_id"], how="inner").filter(pl.col("bought") <= pl.col("timestamp"))
    assert clash.height == 0
    catalogue = pl.read_csv(source_dir(NAME) / amazon_grocery.ITEM_META, separator="\t")["item_id"]
    assert negatives["item_id"].is_in(catalogue.implode()).all()
    # the positives are exactly the purchases
    positives = impressions.filter(pl.col("purchase") == 1).select("user_id", "item_id", "timestamp").sort(pl.all())
    assert positives.equals(purchases.select("user_id", "item_id", pl.col("time").alias("timestamp")).sort(pl.all()))


def test_categories_and_same_day_counts(prepared, purchases):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    assert impressions["category"].null_count() == 0
    assert summary["purchases_not_at_midnight_utc"] == 0
    assert summary["purchases_sharing_user_and_day"] == int(
        purchases.group_by("user_id", "time").len().filter(pl.col("len") > 1)["len"].sum()
    )


def test_deterministic_and_seeded(prepared, tmp_path):
    out, summary = prepared(NAME)
    assert amazon_grocery.prepare(source_dir(NAME), tmp_path / "again") == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")
    amazon_grocery.prepare(source_dir(NAME), tmp_path / "seed1", negatives=2, seed=1)
    other = pl.read_parquet(tmp_path / "seed1" / "impressions.parquet")
    assert other.height == 3 * summary["requests"]
    first = pl.read_parquet(out / "impressions.parquet").filter(pl.col("purchase") == 0)["item_id"].head(200)
    assert not first.equals(other.filter(pl.col("purchase") == 0)["item_id"].head(200))


def test_missing_column_names_file_and_column(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source_dir(NAME), src)
    meta = (src / amazon_grocery.ITEM_META).read_text().splitlines()[:20]
    (src / amazon_grocery.ITEM_META).write_text("\n".join(line.split("\t")[0] for line in meta) + "\n")
    with pytest.raises(AdapterError, match=r"item_meta\.csv: missing column.*i_category"):
        amazon_grocery.prepare(src, tmp_path / "out")


def test_unparsable_time_names_row(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(source_dir(NAME), src)
    lines = (src / amazon_grocery.INTERACTIONS).read_text().splitlines()[:100]
    lines[3] = "\t".join(lines[3].split("\t")[:2] + ["yesterday"])
    (src / amazon_grocery.INTERACTIONS).write_text("\n".join(lines) + "\n")
    with pytest.raises(AdapterError, match=r"train\.csv: column 'time', row 2: cannot parse 'yesterday'"):
        amazon_grocery.prepare(src, tmp_path / "out")


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])
