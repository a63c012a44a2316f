"""Amazon Grocery and Gourmet Food (5-core, ReChorus preparation) → eventrec raw logs.

Input (in ``source_dir``): ``train.csv`` (tab-separated ``user_id, item_id, time``; day-resolution
unix seconds, each user's last two items held out by the preparer) and ``item_meta.csv``
(tab-separated ``item_id, i_category, r_complement, r_substitute``).

Output (in ``out_dir``, schema ``amazon_grocery``):

- ``events.parquet``: every interaction (a review, used as the purchase signal) as an event of type
  ``purchase`` with ``item_id`` and its ``category``; sorted by (user, time, file row).
- ``impressions.parquet``: per purchase one request (``request_id``) with the purchased item
  (label ``purchase`` = 1) and ``negatives`` items (label 0) drawn uniformly, with ``seed``, from the
  catalogue (every item of ``item_meta.csv``), at the purchase's timestamp. A negative is never the
  purchased item, never repeated within its request, and never an item the user purchased at or
  before that timestamp (which would be a positive, or trivially "already owned"). Items the user
  buys *later* can be drawn: that uses no future information. Item attributes ``item_id``,
  ``category``; ``is_negative_sample`` marks the drawn rows.
- ``items.parquet``: the catalogue (``item_id``, ``category``).
- ``summary.json``: the counts returned by :func:`prepare`, drops included.

Timestamps are midnights, so all of a user's purchases of one day share a timestamp and, by the
equal-timestamp rule, never enter each other's history: a request sees only earlier *days*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from eventrec.adapters._common import (
    ROW,
    AdapterError,
    check_output_dir,
    check_not_null,
    check_timestamps,
    parse_column,
    read_tsv_checked,
    requests_with_negatives,
    write_outputs,
)

SCHEMA = "amazon_grocery"
INTERACTIONS, ITEM_META = "train.csv", "item_meta.csv"


def _read_items(path: Path, summary: dict) -> pl.DataFrame:
    raw = read_tsv_checked(path, ["item_id", "i_category"])
    check_not_null(raw, path, "item_id", "item id")
    raw = raw.with_columns(
        parse_column(raw, path, "item_id", pl.Int64, "an integer item id"),
        parse_column(raw, path, "i_category", pl.Int64, "an integer category"),
    )
    duplicated = raw["item_id"].is_duplicated()
    if duplicated.any():
        row, value = raw.filter(duplicated).select(ROW, "item_id").row(0)
        raise AdapterError(f"{path}: column 'item_id', row {row}: item id {value!r} appears more than once")
    items = raw.select("item_id", pl.col("i_category").alias("category")).sort("item_id")
    summary["catalogue_items"] = items.height
    summary["catalogue_items_without_category"] = int(items["category"].null_count())
    return items


def read_purchases(source_dir: Path | str) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Read and check ``item_meta.csv`` and ``train.csv`` of ``source_dir``.

    Returns ``(items, purchases, counts)``: the catalogue (``item_id``, ``category``, sorted by id);
    the purchases (``_row`` = file row, ``user_id``, ``item_id``, ``timestamp``, ``category``; exact
    duplicate (user, item, time) rows dropped, file order); and the counts of the reading (catalogue
    size, input rows, drops, purchases outside the catalogue or not at a UTC midnight). Raises
    :class:`AdapterError` naming file, column and first bad row.
    """
    source_dir = Path(source_dir)
    counts: dict = {}
    items = _read_items(source_dir / ITEM_META, counts)

    path = source_dir / INTERACTIONS
    raw = read_tsv_checked(path, ["user_id", "item_id", "time"])
    for column, what in [("user_id", "user id"), ("item_id", "item id")]:
        check_not_null(raw, path, column, what)
    raw = raw.with_columns(
        parse_column(raw, path, "user_id", pl.Int64, "an integer user id"),
        parse_column(raw, path, "item_id", pl.Int64, "an integer item id"),
        parse_column(raw, path, "time", pl.Int64, "integer unix seconds", integral=True),
    )
    check_timestamps(raw, path, "time")
    raw = raw.rename({"time": "timestamp"})
    counts["input_interactions"] = raw.height
    duplicate = raw.select(~pl.struct("user_id", "item_id", "timestamp").is_first_distinct()).to_series()
    counts["dropped_duplicate_interactions"] = int(duplicate.sum())
    purchases = raw.filter(~duplicate)
    unknown = ~purchases["item_id"].is_in(items["item_id"].implode())
    counts["purchases_item_not_in_catalogue"] = int(unknown.sum())
    counts["purchases_not_at_midnight_utc"] = int((purchases["timestamp"] % 86_400 != 0).sum())
    return items, purchases.join(items, on="item_id", how="left"), counts


def catalogue_of(items: pl.DataFrame, purchases: pl.DataFrame) -> np.ndarray:
    """``[K]`` sorted distinct item ids negatives are drawn from: the catalogue plus any purchased item."""
    return np.union1d(items["item_id"].to_numpy(), purchases["item_id"].unique().to_numpy())


def purchase_events(purchases: pl.DataFrame) -> pl.DataFrame:
    """``events.parquet``: one ``purchase`` event per purchase, sorted by (user, time, file row)."""
    return purchases.sort("user_id", "timestamp", ROW).select(
        "user_id", "timestamp", pl.lit("purchase").alias("event_type"), "item_id", "category"
    )


def purchase_requests(purchases: pl.DataFrame) -> pl.DataFrame:
    """One request per purchase (``request_id``, ``user_id``, ``timestamp``, ``item_id``), numbered in
    (time, user, file row) order."""
    return (
        purchases.sort("timestamp", "user_id", ROW)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("request_id"))
        .select("request_id", "user_id", "timestamp", "item_id")
    )


def purchase_impressions(
    requests: pl.DataFrame, purchases: pl.DataFrame, items: pl.DataFrame, catalogue: np.ndarray, negatives: int, seed: int
) -> tuple[pl.DataFrame, int]:
    """Per request the purchased item (``purchase`` = 1) and ``negatives`` drawn items (0).

    ``requests`` as :func:`purchase_requests` returns them, at the purchase's timestamp (a negative
    is never an item the user purchased at or before it, per ``purchases``); draws are uniform over
    ``catalogue`` with ``seed``. Returns the impressions (``request_id``, ``user_id``, ``timestamp``,
    ``item_id``, ``category``, ``purchase``, ``is_negative_sample``; by request, the purchased item
    first, then the draws in slot order) and the number of redraws.
    """
    owned = purchases.group_by("user_id", "item_id").agg(pl.col("timestamp").min().alias("first_time")).sort("user_id", "item_id")
    shown, redraws = requests_with_negatives(requests, owned, catalogue, negatives, seed)
    impressions = (
        shown.join(items, on="item_id", how="left", maintain_order="left")
        .select(
            "request_id", "user_id", "timestamp", "item_id", "category",
            (pl.col("slot") < 0).cast(pl.Int8).alias("purchase"),
            (pl.col("slot") >= 0).cast(pl.Int8).alias("is_negative_sample"),
        )  # fmt: skip
    )
    return impressions, redraws


def purchases_sharing_user_and_day(purchases: pl.DataFrame) -> int:
    """The number of purchases that share their (user, timestamp) with another purchase."""
    same_day = purchases.group_by("user_id", "timestamp").agg(pl.len().alias("n")).filter(pl.col("n") > 1)
    return int(same_day["n"].sum())


def prepare(source_dir: Path | str, out_dir: Path | str, negatives: int = 4, seed: int = 0) -> dict:
    """Convert Amazon grocery (``train.csv`` + ``item_meta.csv`` in ``source_dir``) into ``out_dir``.

    ``negatives``: items drawn per purchase (label 0); ``seed``: the draw's seed. Returns the
    summary counts (also written to ``out_dir/summary.json``). Raises :class:`AdapterError`
    naming file, column and first bad row on missing columns, null or unparsable ids / times, or
    repeated catalogue ids.
    """
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    summary: dict = {"dataset": "amazon_grocery", "source": [INTERACTIONS, ITEM_META], "negatives_per_purchase": negatives, "seed": seed}
    items, purchases, counts = read_purchases(source_dir)
    summary.update(counts)

    events = purchase_events(purchases)
    requests = purchase_requests(purchases)
    impressions, redraws = purchase_impressions(requests, purchases, items, catalogue_of(items, purchases), negatives, seed)
    summary["events"] = events.height
    summary["events_by_type"] = {"purchase": events.height}
    summary["users"] = events["user_id"].n_unique()
    summary["distinct_items_purchased"] = events["item_id"].n_unique()
    summary["requests"] = requests.height
    summary["impressions"] = impressions.height
    summary["purchases"] = int(impressions["purchase"].sum())
    summary["negative_redraws"] = redraws
    summary["purchases_sharing_user_and_day"] = purchases_sharing_user_and_day(purchases)

    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions, "items.parquet": items}, summary)
