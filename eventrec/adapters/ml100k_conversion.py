"""MovieLens 100K → a small-data *conversion* task with a label from later events (schema ``ml100k_conversion``).

The small-data regime of issue 20 at the density of its held-out e-commerce log (about 800 users,
84k events): MovieLens 100K's 943 users and 100k ratings, and a label derived from later events:
will the user rate (watch) this movie within a day?

Input: the three RecBole files, read and checked exactly as :mod:`eventrec.adapters.ml100k` does
(:func:`~eventrec.adapters.ml100k.read_ratings`).

Output (in ``out_dir``):

- ``events.parquet``: the ``ml100k`` adapter's events (every rating, same columns, same order).
- ``impressions.parquet``: for a drawn share ``request_share`` of the ratings (each rating kept
  with that probability, drawn with ``seed``), one request **one second before** the rating: the
  rated movie and ``negatives`` movies drawn uniformly from the catalogue (never the rated movie,
  never one the user rated at or before the rating's second, never repeated in the request).
  Columns ``request_id`` (numbered in (timestamp, user, file row) order), ``user_id``,
  ``timestamp``, ``movie_id``, ``genres``, ``year``, the user's ``age_bucket``, ``gender``,
  ``occupation``, ``is_negative_sample``; **no label column**.
- ``movies.parquet``, ``users.parquet``: the side tables, as ``ml100k`` writes them.
- ``summary.json``: the counts returned by :func:`prepare`.

The label ``watch`` is declared by the schema as a label from later events: 1 when a ``rating``
event of the same user with the same ``movie_id`` falls in (t, t + 1 d]: the request's rated movie,
and any drawn movie the user happens to rate later that day (counted in the summary as
``negatives_rated_within_a_day``: the label says what happened, not how the row was drawn). The
history (events strictly before t) holds the user's earlier ratings, never the rated one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from eventrec.adapters import ml100k
from eventrec.adapters._common import ROW, AdapterError, check_output_dir, requests_with_negatives, write_outputs

SCHEMA = "ml100k_conversion"
SHOWN_BEFORE = 1  # seconds between a request and its rating
DAY = 86_400


def _check_options(request_share: object, negatives: object, seed: object) -> None:
    if isinstance(request_share, bool) or not isinstance(request_share, (int, float)) or not 0 < request_share <= 1:
        raise AdapterError(f"request_share must be a number in (0, 1], got {request_share!r}")
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise AdapterError(f"negatives must be a non-negative integer, got {negatives!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AdapterError(f"seed must be an integer, got {seed!r}")


def drawn_requests(ratings: pl.DataFrame, request_share: float, seed: int) -> pl.DataFrame:
    """The ratings that get a request (``request_id``, ``user_id``, ``timestamp`` = the rating's second,
    ``item_id`` = its movie), each kept with probability ``request_share`` by one uniform draw per rating
    in (timestamp, user, file row) order, numbered in that order."""
    ordered = ratings.sort("timestamp", "user_id", ROW)
    keep = np.random.default_rng(seed).random(ordered.height) < request_share
    return (
        ordered.filter(pl.Series(keep))
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("request_id"))
        .select("request_id", "user_id", "timestamp", pl.col("movie_id").alias("item_id"))
    )


def prepare(source_dir: Path | str, out_dir: Path | str, request_share: float = 0.2, negatives: int = 4, seed: int = 0) -> dict:
    """Convert MovieLens 100K (RecBole atomic files in ``source_dir``) into the conversion task in ``out_dir``.

    ``request_share``: the share of ratings that get a request; ``negatives``: movies drawn per
    request; ``seed``: the requests' and the negatives' draws. Returns the summary counts (also
    written to ``out_dir/summary.json``). Raises :class:`AdapterError` on bad input (as
    :func:`eventrec.adapters.ml100k.prepare`) or bad options.
    """
    _check_options(request_share, negatives, seed)
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    summary: dict = {"dataset": SCHEMA, "source": [ml100k.INTER, ml100k.ITEM, ml100k.USER]}
    ratings, movies, users = ml100k.read_ratings(source_dir, summary)
    events = ml100k.rating_events(ratings)
    requests = drawn_requests(ratings, request_share, seed)
    # drawn against the rating's own second: neither the rated movie nor one rated at or before it
    owned = ratings.group_by("user_id", pl.col("movie_id").alias("item_id")).agg(pl.col("timestamp").min().alias("first_time"))
    catalogue = np.union1d(movies["movie_id"].to_numpy(), ratings["movie_id"].unique().to_numpy())
    shown, redraws = requests_with_negatives(requests, owned.sort("user_id", "item_id"), catalogue, negatives, seed)
    impressions = (
        shown.rename({"item_id": "movie_id"})
        .join(movies.select("movie_id", "genres", "year"), on="movie_id", how="left", maintain_order="left")
        .join(users.select("user_id", "age_bucket", "gender", "occupation"), on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String))))
        .select(
            "request_id", "user_id", (pl.col("timestamp") - SHOWN_BEFORE).alias("timestamp"), "movie_id", "genres", "year",
            "age_bucket", "gender", "occupation", (pl.col("slot") >= 0).cast(pl.Int8).alias("is_negative_sample"),
        )  # fmt: skip
    )
    later = impressions.filter(pl.col("is_negative_sample") == 1).join(
        ratings.select("user_id", "movie_id", pl.col("timestamp").alias("_rated")), on=["user_id", "movie_id"], how="inner"
    )
    within = later.filter((pl.col("_rated") > pl.col("timestamp")) & (pl.col("_rated") <= pl.col("timestamp") + DAY))
    summary.update({
        "request_share": request_share,
        "negatives_per_request": negatives,
        "seed": seed,
        "users": events["user_id"].n_unique(),
        "events": events.height,
        "events_by_type": {"rating": events.height},
        "requests": requests.height,
        "impressions": impressions.height,
        "negative_redraws": redraws,
        "negatives_rated_within_a_day": within.select("request_id", "movie_id").unique().height,
        "impression_seconds_before_rating": SHOWN_BEFORE,
    })
    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions,
                                               "movies.parquet": movies, "users.parquet": users}, summary)
