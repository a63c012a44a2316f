"""ml100k_conversion on the real files: the drawn requests one second before their rating, the sampled
negatives, and the derived label ``watch`` (rated within a day) in a built store, checked against the
raw rows and the plain ``ml100k`` adapter."""

from __future__ import annotations

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

from eventrec.adapters import ADAPTERS, SOURCE_FOLDERS, AdapterError, ml100k, ml100k_conversion
from eventrec.adapters._common import history_lengths

NAME = "ml100k_conversion"
DAY = 86_400


@pytest.fixture(scope="module")
def ratings() -> pl.DataFrame:
    """The raw ``ml-100k.inter`` rows (user_id, movie_id, rating, rated)."""
    frame = pl.read_csv(source_dir(NAME) / ml100k.INTER, separator="\t", quote_char=None)
    frame = frame.rename({c: c.split(":")[0] for c in frame.columns})
    return frame.select("user_id", pl.col("item_id").alias("movie_id"), "rating", pl.col("timestamp").alias("rated"))


@pytest.fixture(scope="module")
def store(prepared, tmp_path_factory):
    """(examples beside their impressions, row for row; manifest) of a store built from the output."""
    out, _ = prepared(NAME)
    return examples_beside_impressions(out, schema_of(NAME), tmp_path_factory.mktemp("ml100k_conversion_store") / "store", ["split", "cut__rating", "label__watch"])


def test_registered():
    assert ADAPTERS[NAME] == (ml100k_conversion.prepare, ml100k_conversion.SCHEMA)
    assert SOURCE_FOLDERS[NAME] == "ml-100k"
    schema = schema_of(NAME)
    assert schema.impressions.labels == [] and schema.impressions.all_labels == ["watch"]
    (derived,) = schema.impressions.derived_labels
    assert derived.events == ["rating"] and derived.window_seconds == DAY
    assert [(m.impression, m.event) for m in derived.match_columns] == [("movie_id", "movie_id")]
    plain = schema_of("ml100k")
    assert [s.model_dump() | {"max_length": 64} for s in plain.streams] == [s.model_dump() for s in schema.streams]


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_events_are_the_plain_events(prepared):
    out, _ = prepared(NAME)
    plain, _ = prepared("ml100k")
    assert pl.read_parquet(out / "events.parquet").equals(pl.read_parquet(plain / "events.parquet"))


def test_requests_one_second_before_a_rating_with_sampled_negatives(prepared, ratings):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    per_request = impressions.group_by("request_id").agg(pl.len().alias("n"), pl.col("is_negative_sample").sum().alias("neg"),
                                                         pl.col("movie_id").n_unique().alias("distinct"))
    assert (per_request["n"] == 5).all() and (per_request["neg"] == 4).all() and (per_request["distinct"] == 5).all()
    assert per_request.height == summary["requests"] and impressions.height == summary["impressions"]
    assert abs(summary["requests"] / ratings.height - 0.2) < 0.01  # the drawn share
    # the shown movie is a rating of that user one second later
    shown = impressions.filter(pl.col("is_negative_sample") == 0)
    hit = shown.join(ratings, left_on=["user_id", "movie_id", pl.col("timestamp") + 1], right_on=["user_id", "movie_id", "rated"], how="semi")
    assert hit.height == shown.height
    # no negative was rated by the user at or before the request's rating
    negatives = impressions.filter(pl.col("is_negative_sample") == 1).join(ratings, on=["user_id", "movie_id"], how="left")
    assert not ((negatives["rated"] <= negatives["timestamp"] + 1).fill_null(False)).any()
    # request ids in time order
    first = impressions.group_by("request_id", maintain_order=True).agg(pl.col("timestamp").first())
    assert first["request_id"].to_list() == sorted(first["request_id"].to_list()) and first["timestamp"].is_sorted()


def test_label_is_a_rating_within_a_day(store, ratings):
    examples, manifest = store
    label = examples["label__watch"]
    missing = label.is_nan()
    assert int(missing.sum()) == manifest["counts"]["labels.watch.missing"] < 0.05 * examples.height
    labelled = examples.filter(~missing).with_row_index("_i")
    hits = (
        labelled.join(ratings, on=["user_id", "movie_id"], how="left")
        .with_columns(((pl.col("rated") > pl.col("timestamp")) & (pl.col("rated") <= pl.col("timestamp") + DAY)).fill_null(False).alias("hit"))
        .group_by("_i", maintain_order=True)
        .agg(pl.col("hit").any(), pl.col("label__watch").first(), pl.col("is_negative_sample").first())
    )
    assert (hits["label__watch"] == hits["hit"].cast(pl.Float32)).all()
    assert (hits.filter(pl.col("is_negative_sample") == 0)["label__watch"] == 1).all()
    later = hits.filter(pl.col("is_negative_sample") == 1)["label__watch"]
    assert 0 < float(later.mean()) < 0.1  # a few drawn movies are rated later that day: positives too


def test_history_holds_only_earlier_ratings(store, prepared):
    examples, _ = store
    out, _ = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    assert (examples["cut__rating"] == history_lengths(events, examples.select("user_id", "timestamp"), "user_id", "timestamp")).all()
    assert np.any(examples["cut__rating"].to_numpy() == 0) and examples["cut__rating"].max() > 64


def test_deterministic_and_options_checked(prepared, tmp_path):
    out, summary = prepared(NAME)
    again = ml100k_conversion.prepare(source_dir(NAME), tmp_path / "again")
    assert again == summary and files_bytes(out) == files_bytes(tmp_path / "again")
    for options, message in (({"request_share": 0}, "request_share"), ({"request_share": 1.5}, "request_share"),
                             ({"negatives": -1}, "negatives"), ({"seed": "x"}, "seed")):
        with pytest.raises(AdapterError, match=message):
            ml100k_conversion.prepare(source_dir(NAME), tmp_path / "bad", **options)
    assert not (tmp_path / "bad").exists()


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])
