"""MovieLens 100K adapter on the real files: mapping, counts, determinism, errors, store + batch."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from adapter_checks import check_output_against_schema, check_store_and_batch, files_bytes, schema_of, source_dir

from eventrec.adapters import AdapterError, ml100k

NAME = "ml100k"


@pytest.fixture(scope="module")
def ratings() -> pl.DataFrame:
    frame = pl.read_csv(source_dir(NAME) / ml100k.INTER, separator="\t", quote_char=None)
    return frame.rename({c: c.split(":")[0] for c in frame.columns})


def test_output_matches_schema(prepared):
    out, _ = prepared(NAME)
    check_output_against_schema(out, schema_of(NAME))


def test_every_rating_is_an_event_and_an_example(prepared, ratings):
    out, summary = prepared(NAME)
    events = pl.read_parquet(out / "events.parquet")
    impressions = pl.read_parquet(out / "impressions.parquet")
    assert events.height == impressions.height == ratings.height == summary["impressions"]
    assert summary["dropped_duplicate_ratings"] == 0
    assert impressions["request_id"].n_unique() == impressions.height
    assert int(impressions["like"].sum()) == int((ratings["rating"] >= 4).sum()) == summary["likes"]
    assert (impressions["like"] == (impressions["rating"] >= 4).cast(pl.Int8)).all()
    assert impressions["user_id"].n_unique() == 943 and events["movie_id"].n_unique() == 1682
    # the same (user, movie, second) keeps its rating in both tables
    key = ["user_id", "movie_id", "timestamp"]
    joined = events.select(*key, "rating").join(impressions.select(*key, pl.col("rating").alias("r2")), on=key)
    assert joined.height == ratings.height and (joined["rating"] == joined["r2"]).all()
    assert summary["ratings_sharing_user_and_second"] == int(
        ratings.group_by("user_id", "timestamp").len().filter(pl.col("len") > 1)["len"].sum()
    )


def test_movie_and_user_attributes(prepared):
    out, summary = prepared(NAME)
    impressions = pl.read_parquet(out / "impressions.parquet")
    toy_story = impressions.filter(pl.col("movie_id") == 1).row(0, named=True)
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"] and toy_story["year"] == 1995
    user_1 = impressions.filter(pl.col("user_id") == 1).row(0, named=True)  # age 24, M, technician
    assert (user_1["age_bucket"], user_1["gender"], user_1["occupation"]) == ("18_24", "M", "technician")
    # two movies have no parsable year ('V', 'unkonwn'): counted, null, not dropped
    assert summary["movies_year_unparsable"] == 2
    assert impressions["genres"].list.len().min() >= 1
    assert set(impressions["age_bucket"].unique().to_list()) <= {"under_18", "18_24", "25_34", "35_44", "45_49", "50_55", "56_plus"}


def test_item_text_is_one_line_per_movie(prepared):
    out, _ = prepared(NAME)
    text = pl.read_parquet(out / "item_text.parquet")
    movies = pl.read_parquet(out / "movies.parquet")
    assert text["movie_id"].to_list() == movies["movie_id"].to_list() and text["text"].null_count() == 0
    lines = dict(zip(text["movie_id"].to_list(), text["text"].to_list()))
    assert lines[1] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert lines[12] == "The Usual Suspects (1995). Genres: Crime, Thriller."  # "Usual Suspects, The"
    assert lines[14] == "Il Postino (1994). Genres: Drama, Romance."
    assert lines[267] == "unkonwn. Genres: unknown."  # no parsable year: none written


def test_deterministic(prepared, tmp_path):
    out, summary = prepared(NAME)
    assert ml100k.prepare(source_dir(NAME), tmp_path / "again") == summary
    assert files_bytes(out) == files_bytes(tmp_path / "again")


def _copy_sources(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(source_dir(NAME), copy)
    return copy


def test_missing_column_names_file_and_column(tmp_path):
    src = _copy_sources(tmp_path)
    lines = (src / ml100k.INTER).read_text().splitlines()[:50]
    (src / ml100k.INTER).write_text("\n".join("\t".join(line.split("\t")[:3]) for line in lines) + "\n")
    with pytest.raises(AdapterError, match=r"ml-100k\.inter: missing column.*timestamp"):
        ml100k.prepare(src, tmp_path / "out")


def test_unparsable_rating_names_row(tmp_path):
    src = _copy_sources(tmp_path)
    lines = (src / ml100k.INTER).read_text().splitlines()[:50]
    fields = lines[8].split("\t")
    fields[2] = "five"
    lines[8] = "\t".join(fields)
    (src / ml100k.INTER).write_text("\n".join(lines) + "\n")
    with pytest.raises(AdapterError, match=r"ml-100k\.inter: column 'rating', row 7: cannot parse 'five'"):
        ml100k.prepare(src, tmp_path / "out")


def test_store_and_batch(prepared, tmp_path):
    out, summary = prepared(NAME)
    check_store_and_batch(out, schema_of(NAME), tmp_path / "store", summary["impressions"])
