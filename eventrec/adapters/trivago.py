"""trivago RecSys Challenge 2019 sample → eventrec raw logs (schema ``trivago``).

Input: ``trivago_val_100k.parquet`` (columns ``user_id, session_id, timestamp, step, action_type,
reference, platform, city, device, current_filters, impressions, prices``).

Output (in ``out_dir``):

- ``impressions.parquet``: one row per (clickout, impressed hotel). ``request_id`` numbers the
  clickouts in (timestamp, user, session, step, file row) order; ``position`` is the 0-based display
  position, ``price`` the displayed price, ``price_rank`` the 0-based rank of the price within the
  list (ties share the lower rank), ``click`` = 1 for the hotel equal to the clickout's ``reference``
  (first occurrence only), else 0. Context: ``platform``, ``device``, ``city``, ``filters`` (the
  active filters, ``current_filters`` split on ``|``; empty list when none).
- ``events.parquet``: every row of the log as an event of type ``action_type`` in snake case:
  item actions (``interaction_item_*``, ``search_for_item``) with ``item_id``; clickouts with the
  clicked ``item_id`` and its displayed ``price`` and ``position`` (null if the clicked hotel is not
  in the list); search/filter actions with their text ``query``. Every event also has ``action``
  (= its type, as an attribute), ``repeats``, ``session_id`` and ``step``. Identical rows within one
  second (same user, action, reference and, for clickouts, list) are merged into the first, with
  ``repeats`` counting them: trivago logs every image swipe as a row, often dozens per second.
  A repeated clickout is therefore one request, not several (counted).
- ``summary.json``: the counts returned by :func:`prepare`, drops included.

A clickout's own event has the impression's timestamp and is therefore never in its history
(eventrec's equal-timestamp rule); nor is any other event logged in that same second.
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
    read_parquet_checked,
    write_outputs,
)

FILE = "trivago_val_100k.parquet"
SCHEMA = "trivago"
COLUMNS = [
    "user_id", "session_id", "timestamp", "step", "action_type", "reference",
    "platform", "city", "device", "current_filters", "impressions", "prices",
]  # fmt: skip
ACTION_TYPES = {
    "clickout item": "clickout_item",
    "interaction item image": "interaction_item_image",
    "interaction item info": "interaction_item_info",
    "interaction item rating": "interaction_item_rating",
    "interaction item deals": "interaction_item_deals",
    "search for item": "search_for_item",
    "filter selection": "filter_selection",
    "search for destination": "search_for_destination",
    "search for poi": "search_for_poi",
    "change of sort order": "change_of_sort_order",
}
ITEM_ACTIONS = ["interaction_item_image", "interaction_item_info", "interaction_item_rating", "interaction_item_deals", "search_for_item"]
TEXT_ACTIONS = ["filter_selection", "search_for_destination", "search_for_poi", "change_of_sort_order"]
CLICKOUT = "clickout_item"
# trivago's marker for an item action whose hotel id was not logged; such events are dropped (counted)
UNKNOWN_REFERENCE = "unknown"
EVENT_ORDER = ["user_id", "timestamp", "session_id", "step", ROW]


def _locate(path: Path | str) -> Path:
    path = Path(path)
    return path / FILE if path.is_dir() else path


def _parse_list(frame: pl.DataFrame, path: Path, column: str, dtype: pl.DataType, what: str) -> pl.Series:
    """Split a ``|``-joined column into a list of ``dtype``; an unparsable element raises with its row."""
    parts = frame.select(ROW, pl.col(column).str.split("|").alias("_parts")).explode("_parts")
    parsed = parts["_parts"].str.strip_chars().cast(dtype, strict=False)
    bad = parts["_parts"].is_not_null() & parsed.is_null()
    if bad.any():
        row, value = parts.filter(bad).select(ROW, "_parts").row(0)
        raise AdapterError(f"{path}: column {column!r}, row {row}: cannot parse element {value!r} as {what}")
    return (
        parts.with_columns(parsed.alias("_parsed"))
        .group_by(ROW, maintain_order=True)
        .agg(pl.col("_parsed"))
        .select(pl.col("_parsed").alias(column))
        .to_series()
    )


def prepare(source_dir: Path | str, out_dir: Path | str) -> dict:
    """Convert the trivago sample in ``source_dir`` (or the Parquet file itself) into ``out_dir``.

    Returns the summary counts (also written to ``out_dir/summary.json``). Raises
    :class:`AdapterError` naming file, column and first bad row on missing columns, null ids or
    timestamps, unknown action types, or unparsable item ids / prices / timestamps.
    """
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    events, impressions, summary = convert(source_dir)
    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions}, summary)


def convert(source_dir: Path | str) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The tables of :func:`prepare`, in memory: ``(events, impressions, summary)``, nothing written.

    ``source_dir`` is the folder holding :data:`FILE` or the Parquet file itself. ``events`` and
    ``impressions`` are exactly the frames ``prepare`` writes (same rows, columns and order);
    other adapters built on this sample (``trivago_views``, ``trivago_lists_small``) start from them. Raises
    :class:`AdapterError` as :func:`prepare` does.
    """
    path = _locate(source_dir)
    raw = read_parquet_checked(path, COLUMNS)
    if raw.height == 0:
        raise AdapterError(f"{path}: no rows")
    for column, what in [("user_id", "user id"), ("session_id", "session id"), ("action_type", "action type")]:
        check_not_null(raw, path, column, what)
    raw = raw.with_columns(
        pl.col("user_id").cast(pl.String),
        pl.col("session_id").cast(pl.String),
        parse_column(raw, path, "timestamp", pl.Int64, "integer unix seconds", integral=True),
        parse_column(raw, path, "step", pl.Int64, "integer step", integral=True),
    )
    check_timestamps(raw, path, "timestamp")
    unknown = ~raw["action_type"].is_in(list(ACTION_TYPES))
    if unknown.any():
        row, value = raw.filter(unknown).select(ROW, "action_type").row(0)
        raise AdapterError(f"{path}: column 'action_type', row {row}: unknown action type {value!r}; expected one of {sorted(ACTION_TYPES)}")
    raw = raw.with_columns(pl.col("action_type").replace_strict(ACTION_TYPES).alias("event_type")).sort(EVENT_ORDER)
    summary: dict = {"dataset": "trivago", "source": path.name, "input_rows": raw.height}
    summary["input_rows_by_action"] = dict(sorted(raw["event_type"].value_counts().iter_rows()))

    # --- item ids of item actions and clickouts -------------------------------------------------
    with_item = raw["event_type"].is_in(ITEM_ACTIONS + [CLICKOUT])
    unknown_ref = with_item & (raw["reference"] == UNKNOWN_REFERENCE).fill_null(False)
    summary["dropped_item_events_unknown_reference"] = int(unknown_ref.sum())
    raw = raw.filter(~unknown_ref)

    # --- same-second repeats: trivago logs e.g. every image swipe as its own row, often dozens
    # within one second on the same hotel. Identical rows (user, second, action, reference and,
    # for clickouts, the same list and prices) are merged into the first, with ``repeats`` = count.
    repeat_key = ["user_id", "timestamp", "event_type", "reference", "impressions", "prices"]
    raw = raw.with_columns(
        pl.len().over(repeat_key).cast(pl.Int64).alias("repeats"),
        pl.struct(repeat_key).is_first_distinct().alias("_first"),
    )
    merged = raw.filter(~pl.col("_first"))
    summary["merged_repeated_rows"] = merged.height
    summary["merged_repeated_rows_by_action"] = dict(sorted(merged["event_type"].value_counts().iter_rows()))
    summary["dropped_repeated_clickouts"] = int((merged["event_type"] == CLICKOUT).sum())
    raw = raw.filter(pl.col("_first")).drop("_first")
    items = raw.filter(pl.col("event_type").is_in(ITEM_ACTIONS + [CLICKOUT]))
    check_not_null(items, path, "reference", "hotel id of an item action")
    items = items.with_columns(parse_column(items, path, "reference", pl.Int64, "an integer hotel id").alias("item_id"))

    # --- clickouts → impressions ----------------------------------------------------------------
    clickouts = items.filter(pl.col("event_type") == CLICKOUT)
    no_list = clickouts["impressions"].is_null() | clickouts["prices"].is_null()
    summary["clickouts"] = clickouts.height
    summary["dropped_clickouts_without_impression_list"] = int(no_list.sum())
    listed = clickouts.filter(~no_list)
    listed = listed.with_columns(
        _parse_list(listed, path, "impressions", pl.Int64, "an integer hotel id"),
        _parse_list(listed, path, "prices", pl.Float64, "a price"),
    )
    mismatch = listed["impressions"].list.len() != listed["prices"].list.len()
    if mismatch.any():
        row = int(listed.filter(mismatch)[ROW][0])
        raise AdapterError(f"{path}: columns 'impressions' and 'prices', row {row}: lists of different lengths")
    listed = (
        listed.sort("timestamp", "user_id", "session_id", "step", ROW)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("request_id"))
        .with_columns(pl.int_ranges(0, pl.col("impressions").list.len(), dtype=pl.Int64).alias("position"))
    )
    exploded = listed.select(
        "request_id", "user_id", "session_id", "step", "timestamp",
        pl.col("item_id").alias("reference_id"),
        "impressions", "prices", "position", "platform", "device", "city", "current_filters",
    ).explode(["impressions", "prices", "position"])  # fmt: skip
    exploded = exploded.rename({"impressions": "item_id", "prices": "price"})
    is_ref = pl.col("item_id") == pl.col("reference_id")
    first_ref = is_ref & (is_ref.cast(pl.Int64).cum_sum().over("request_id") == 1)
    impressions = exploded.select(
        "request_id",
        "user_id",
        "timestamp",
        "item_id",
        "position",
        "price",
        (pl.col("price").rank("min").over("request_id") - 1).cast(pl.Int64).alias("price_rank"),
        first_ref.cast(pl.Int8).alias("click"),
        "platform",
        "device",
        "city",
        pl.col("current_filters").str.split("|").fill_null(pl.lit([], dtype=pl.List(pl.String))).alias("filters"),
        "session_id",
        "step",
    ).sort("request_id", "position")
    per_request = exploded.group_by("request_id").agg(is_ref.sum().alias("matches"))
    summary["clickouts_with_impressions"] = listed.height
    summary["clickouts_reference_not_in_list"] = int((per_request["matches"] == 0).sum())
    summary["clickouts_reference_repeated_in_list"] = int((per_request["matches"] > 1).sum())
    summary["impressions"] = impressions.height
    summary["clicks"] = int(impressions["click"].sum())
    summary["requests"] = listed.height

    # --- events ---------------------------------------------------------------------------------
    clicked = impressions.filter(pl.col("click") == 1).select("request_id", "price", "position")
    clickout_events = (
        listed.select(ROW, "request_id")
        .join(clicked, on="request_id", how="left")
        .select(ROW, "price", "position")
    )
    events = (
        raw.join(items.select(ROW, "item_id"), on=ROW, how="left")
        .join(clickout_events, on=ROW, how="left")
        .select(
            "user_id",
            "timestamp",
            "event_type",
            "item_id",
            pl.col("event_type").alias("action"),
            pl.when(pl.col("event_type").is_in(TEXT_ACTIONS)).then(pl.col("reference")).alias("query"),
            pl.col("price").cast(pl.Float64),
            pl.col("position").cast(pl.Int64),
            "repeats",
            "session_id",
            "step",
            ROW,
        )
        .sort(EVENT_ORDER)
        .drop(ROW)
    )
    summary["events"] = events.height
    summary["events_by_type"] = dict(sorted(events["event_type"].value_counts().iter_rows()))
    summary["users"] = events["user_id"].n_unique()
    summary["users_with_impressions"] = impressions["user_id"].n_unique()
    summary["distinct_items_impressed"] = impressions["item_id"].n_unique()
    return events, impressions, summary


def sample_summary(dataset: str, base: dict, max_users: int, seed: int) -> dict:
    """The head of a trivago user sample's summary: its options, and what :func:`convert` did to the
    whole file before the sample (``base``, its summary)."""
    return {
        "dataset": dataset,
        "source": base["source"],
        "max_users": max_users,
        "seed": seed,
        "users_in_source": base["users"],
        "source_input_rows": base["input_rows"],
        "source_events": base["events"],
        "source_merged_repeated_rows": base["merged_repeated_rows"],
        "source_dropped_item_events_unknown_reference": base["dropped_item_events_unknown_reference"],
    }
