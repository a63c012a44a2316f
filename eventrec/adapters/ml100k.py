"""MovieLens 100K (RecBole atomic files) → eventrec raw logs (schema ``ml100k``).

Input (in ``source_dir``): ``ml-100k.inter`` (``user_id, item_id, rating, timestamp``),
``ml-100k.item`` (``item_id, movie_title, release_year, class``: genres space-separated) and
``ml-100k.user`` (``user_id, age, gender, occupation, zip_code``); tab-separated with typed headers
such as ``user_id:token`` (the ``:type`` suffix is ignored).

Output (in ``out_dir``):

- ``events.parquet``: every rating as an event of type ``rating`` with ``movie_id``, ``rating``
  (1..5), the movie's ``genres`` (list) and release ``year``; sorted by (user, timestamp, file row).
- ``impressions.parquet``: every rating again as a "rating-as-label" example: ``request_id`` (one
  per rating), ``movie_id``, ``genres``, ``year``, label ``like`` = rating >= 4, context = the user's
  ``age_bucket``, ``gender``, ``occupation``; the raw ``rating`` as an extra (non-feature) column.
- ``movies.parquet``, ``users.parquet``: the parsed side tables.
- ``item_text.parquet``: ``movie_id, text``, one line per movie for a text encoder (the content step,
  docs/content.md): the title with a trailing article moved to the front ("Usual Suspects, The" →
  "The Usual Suspects"), the release year, then the genres: ``"Toy Story (1995). Genres: Animation,
  Children's, Comedy."``
- ``summary.json``: the counts returned by :func:`prepare`, drops included.

Many ratings share a (user, timestamp) (a user rating a batch of films in the same second); by the
equal-timestamp rule those never see each other, and an example never sees its own rating.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from eventrec.adapters._common import (
    ROW,
    AdapterError,
    check_output_dir,
    check_not_null,
    check_timestamps,
    parse_column,
    read_tsv_checked,
    write_outputs,
)

SCHEMA = "ml100k"
INTER, ITEM, USER = "ml-100k.inter", "ml-100k.item", "ml-100k.user"
LIKE_THRESHOLD = 4.0
# MovieLens 1M's age groups, applied to 100K's exact ages
AGE_BUCKETS = [(18, "under_18"), (25, "18_24"), (35, "25_34"), (45, "35_44"), (50, "45_49"), (56, "50_55")]
OLDEST_BUCKET = "56_plus"


def _age_bucket(age: pl.Expr) -> pl.Expr:
    expr = pl.when(age.is_null()).then(pl.lit(None, dtype=pl.String))
    for upper, label in AGE_BUCKETS:
        expr = expr.when(age < upper).then(pl.lit(label))
    return expr.otherwise(pl.lit(OLDEST_BUCKET))


def _read_movies(path: Path, summary: dict) -> pl.DataFrame:
    raw = read_tsv_checked(path, ["item_id", "movie_title", "release_year", "class"], strip_types=True)
    check_not_null(raw, path, "item_id", "movie id")
    raw = raw.with_columns(parse_column(raw, path, "item_id", pl.Int64, "an integer movie id"))
    duplicated = raw["item_id"].is_duplicated()
    if duplicated.any():
        row, value = raw.filter(duplicated).select(ROW, "item_id").row(0)
        raise AdapterError(f"{path}: column 'item_id', row {row}: movie id {value!r} appears more than once")
    # release_year is a 4-digit year; anything else (one film has 'V') becomes null, counted
    year = raw["release_year"].str.strip_chars()
    year_ok = year.str.contains(r"^\d{4}$").fill_null(False)
    summary["movies_year_unparsable"] = int((~year_ok & year.is_not_null()).sum())
    summary["movies_year_missing"] = int(year.is_null().sum())
    movies = raw.select(
        pl.col("item_id").alias("movie_id"),
        pl.col("movie_title").alias("title"),
        pl.when(year_ok).then(year).cast(pl.Int64).alias("year"),
        pl.col("class")
        .str.split(" ")
        .list.eval(pl.element().filter(pl.element() != ""))
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
        .alias("genres"),
    ).sort("movie_id")
    summary["movies"] = movies.height
    return movies


# "Usual Suspects, The" → "The Usual Suspects" (and A, An, and the French / Italian / German / Spanish articles)
TRAILING_ARTICLE = r"^(.*), (The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El)$"


def _item_text(movies: pl.DataFrame) -> pl.DataFrame:
    """``movie_id, text``: "Title (year). Genres: A, B." per movie (see the module doc)."""
    title = pl.col("title").str.strip_chars().fill_null("")
    title = pl.when(title.str.contains(TRAILING_ARTICLE)).then(
        title.str.replace(TRAILING_ARTICLE, "$2 $1").str.replace(r"^(L') ", "$1")).otherwise(title)
    year = pl.when(pl.col("year").is_not_null()).then(pl.format(" ({})", pl.col("year"))).otherwise(pl.lit(""))
    genres = pl.when(pl.col("genres").list.len() > 0).then(pl.format(" Genres: {}.", pl.col("genres").list.join(", "))).otherwise(pl.lit(""))
    return movies.select("movie_id", pl.concat_str([title, year, pl.lit("."), genres]).alias("text"))


def _read_users(path: Path, summary: dict) -> pl.DataFrame:
    raw = read_tsv_checked(path, ["user_id", "age", "gender", "occupation", "zip_code"], strip_types=True)
    check_not_null(raw, path, "user_id", "user id")
    raw = raw.with_columns(
        parse_column(raw, path, "user_id", pl.Int64, "an integer user id"),
        parse_column(raw, path, "age", pl.Int64, "an integer age"),
    )
    duplicated = raw["user_id"].is_duplicated()
    if duplicated.any():
        row, value = raw.filter(duplicated).select(ROW, "user_id").row(0)
        raise AdapterError(f"{path}: column 'user_id', row {row}: user id {value!r} appears more than once")
    users = raw.select(
        "user_id", "age", _age_bucket(pl.col("age")).alias("age_bucket"), "gender", "occupation", "zip_code"
    ).sort("user_id")
    summary["users_in_user_file"] = users.height
    return users


def read_ratings(source_dir: Path | str, summary: dict) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Read and check the three files of ``source_dir``: ``(ratings, movies, users)``, the ratings
    (file order, ``_row``, exact repeats dropped) joined with their movie's ``genres`` and ``year``
    and their user's ``age_bucket``, ``gender`` and ``occupation``. The reading's counts go into
    ``summary``. Raises :class:`AdapterError` naming file, column and first bad row."""
    source_dir = Path(source_dir)
    movies = _read_movies(source_dir / ITEM, summary)
    users = _read_users(source_dir / USER, summary)

    path = source_dir / INTER
    raw = read_tsv_checked(path, ["user_id", "item_id", "rating", "timestamp"], strip_types=True)
    for column, what in [("user_id", "user id"), ("item_id", "movie id"), ("rating", "rating")]:
        check_not_null(raw, path, column, what)
    raw = raw.with_columns(
        parse_column(raw, path, "user_id", pl.Int64, "an integer user id"),
        parse_column(raw, path, "item_id", pl.Int64, "an integer movie id"),
        parse_column(raw, path, "rating", pl.Float64, "a number"),
        parse_column(raw, path, "timestamp", pl.Int64, "integer unix seconds", integral=True),
    )
    check_timestamps(raw, path, "timestamp")
    summary["input_ratings"] = raw.height
    # an exact repeat of an earlier row (same user, movie, rating and second) is dropped, counted
    duplicate = raw.select(~pl.struct("user_id", "item_id", "rating", "timestamp").is_first_distinct()).to_series()
    summary["dropped_duplicate_ratings"] = int(duplicate.sum())
    ratings = raw.filter(~duplicate).rename({"item_id": "movie_id"})
    summary["ratings_unknown_movie"] = int((~ratings["movie_id"].is_in(movies["movie_id"].implode())).sum())
    summary["ratings_unknown_user"] = int((~ratings["user_id"].is_in(users["user_id"].implode())).sum())
    ratings = ratings.join(movies.select("movie_id", "genres", "year"), on="movie_id", how="left").join(
        users.select("user_id", "age_bucket", "gender", "occupation"), on="user_id", how="left"
    )
    return ratings.with_columns(pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String)))), movies, users


def rating_events(ratings: pl.DataFrame) -> pl.DataFrame:
    """``events.parquet``: every rating an event of type ``rating``, sorted by (user, timestamp, file row)."""
    return ratings.sort("user_id", "timestamp", ROW).select(
        "user_id", "timestamp", pl.lit("rating").alias("event_type"), "movie_id", "rating", "genres", "year"
    )


def prepare(source_dir: Path | str, out_dir: Path | str) -> dict:
    """Convert MovieLens 100K (RecBole atomic files in ``source_dir``) into ``out_dir``.

    Returns the summary counts (also written to ``out_dir/summary.json``). Raises
    :class:`AdapterError` naming file, column and first bad row on missing columns, null ids,
    unparsable ids / ratings / timestamps, or repeated movie / user ids in the side files.
    """
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    summary: dict = {"dataset": "ml100k", "source": [INTER, ITEM, USER]}
    ratings, movies, users = read_ratings(source_dir, summary)
    events = rating_events(ratings)
    impressions = (
        ratings.sort("timestamp", "user_id", ROW)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("request_id"))
        .select(
            "request_id",
            "user_id",
            "timestamp",
            "movie_id",
            "genres",
            "year",
            (pl.col("rating") >= LIKE_THRESHOLD).cast(pl.Int8).alias("like"),
            "age_bucket",
            "gender",
            "occupation",
            "rating",
        )
    )
    same_second = ratings.group_by("user_id", "timestamp").agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    summary["events"] = events.height
    summary["events_by_type"] = {"rating": events.height}
    summary["impressions"] = impressions.height
    summary["likes"] = int(impressions["like"].sum())
    summary["users"] = events["user_id"].n_unique()
    summary["distinct_movies_rated"] = events["movie_id"].n_unique()
    summary["ratings_sharing_user_and_second"] = int(same_second["n"].sum())

    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions, "movies.parquet": movies, "users.parquet": users,
                                         "item_text.parquet": _item_text(movies)}, summary)
