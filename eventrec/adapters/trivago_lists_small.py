"""trivago sample → the click task on a small user sample, label derived from later events (schema
``trivago_lists_small``).

The small-data regime with a derived conversion label (issue 20): the standard ``trivago`` task (one
impression per (clickout, impressed hotel)) restricted to at most ``max_users`` users, each list
shown one second before its clickout, and labelled by the store from the clickouts that follow it.

Input: ``trivago_val_100k.parquet``, converted exactly as :mod:`eventrec.adapters.trivago` does
(:func:`eventrec.adapters.trivago.convert`: same events, merged same-second repeats and drops).

Output (in ``out_dir``):

- ``events.parquet``: the ``trivago`` adapter's ``events.parquet`` (same columns, same order),
  restricted to the sampled users.
- ``impressions.parquet``: the ``trivago`` adapter's impressions of the sampled users (same rows,
  columns and order) with three changes: ``timestamp`` is the clickout's time − 1 s
  (:data:`SHOWN_BEFORE`: the list is shown before the click), ``request_id`` is renumbered
  0, 1, ... in the same order, and there is **no label column** (``click`` is dropped).
- ``summary.json``: the counts returned by :func:`prepare`.

The label ``clickout`` is not a column: the schema declares it as a label from later events
(``derived_labels``): 1 when a ``clickout_item`` event of the same user with the same ``item_id``
falls in (t, t + 1 h], t the list's time; missing when that window is cut by a split boundary or the
end of the data. The clicked hotel's own clickout is at t + 1, inside the window, so it is a positive
(as trivago's logged ``click``); so is any other listed hotel the user clicks out on within the hour,
and a clicked hotel listed twice is positive at both positions (trivago marks the first only).

**Moving the list one second earlier** changes the history: it holds the events strictly before
t = clickout − 1, so the user's events logged in the second before the clickout (in ``trivago``
they precede the request and are in its history) are in neither the history nor the label (a
clickout at t is not in (t, t + 1 h]). ``summary["history_shift"]`` counts them.

**User sample**: among the users with at least one clickout with an impression list (the only ones
with impressions), the ``max_users`` users with the smallest key ``blake2b(f"{seed}:{user_id}")``
(:func:`eventrec.adapters._common.sample_users`, shared with ``trivago_views`` and
``amazon_grocery_conversion``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from eventrec.adapters import trivago
from eventrec.adapters._common import check_output_dir, check_sample_options, sample_users, write_outputs

SCHEMA = "trivago_lists_small"
SHOWN_BEFORE = 1  # seconds between the list (the impression) and its clickout
WINDOW = 3600  # the schema's derived label window (1 h), for the summary's label counts


def list_impressions(impressions: pl.DataFrame) -> pl.DataFrame:
    """``trivago``'s impressions (``[N, ...]``, ``click`` included, sorted by ``request_id, position``)
    → this task's: ``timestamp`` − :data:`SHOWN_BEFORE`, ``request_id`` renumbered densely in the
    same order, ``click`` dropped; same rows, same order, the other columns unchanged."""
    return impressions.with_columns(
        (pl.col("request_id").rank("dense") - 1).cast(pl.Int64).alias("request_id"),
        pl.col("timestamp") - SHOWN_BEFORE,
    ).drop("click")


def clicked_out_within(impressions: pl.DataFrame, events: pl.DataFrame, window: int = WINDOW) -> pl.Series:
    """``[N]`` bool per impression row: a ``clickout_item`` event of the same user with the same
    ``item_id`` in (timestamp, timestamp + window] -- the derived label before any censoring."""
    clickouts = events.filter(pl.col("event_type") == trivago.CLICKOUT).select("user_id", "item_id", pl.col("timestamp").alias("_tc"))
    hits = (
        impressions.select("user_id", "item_id", "timestamp").with_row_index("_i")
        .join(clickouts, on=["user_id", "item_id"], how="inner")
        .filter((pl.col("_tc") > pl.col("timestamp")) & (pl.col("_tc") <= pl.col("timestamp") + window))
    )  # fmt: skip
    return pl.int_range(impressions.height, eager=True).is_in(hits["_i"].unique().implode()).alias("clickout")


def touched_before(impressions: pl.DataFrame, events: pl.DataFrame) -> pl.Series:
    """``[N]`` bool per impression row: the user had an event on the row's hotel (any event with that
    ``item_id``: a view, a search for it, a clickout) strictly before the impression's ``timestamp``,
    i.e. the hotel is in the impression's history."""
    first = events.drop_nulls("item_id").group_by("user_id", "item_id").agg(pl.col("timestamp").min().alias("_first"))
    joined = impressions.select("user_id", "item_id", "timestamp").join(first, on=["user_id", "item_id"], how="left", maintain_order="left")
    return (joined["_first"] < joined["timestamp"]).fill_null(False).alias("touched_before")


def history_shift(impressions: pl.DataFrame, events: pl.DataFrame) -> dict:
    """What showing each list at clickout − 1 instead of at the clickout removes from the histories.

    ``impressions`` at t = clickout − 1; ``events`` of the same users. An event at exactly t was in
    ``trivago``'s history (strictly before the clickout) and is in neither this history nor the
    label window (t, t + 1 h]. Counts: requests and impression rows that lose at least one event,
    the distinct events lost (by type), and impression rows whose own hotel was clicked out at t.
    """
    lists = impressions.group_by("request_id", maintain_order=True).agg(pl.col("user_id").first(), pl.col("timestamp").first(), pl.len().alias("rows"))
    seconds = lists.select("user_id", "timestamp").unique()
    lost = events.join(seconds, on=["user_id", "timestamp"], how="semi")
    losing = lists.join(lost.select("user_id", "timestamp").unique(), on=["user_id", "timestamp"], how="semi")
    clickouts_at_t = events.filter(pl.col("event_type") == trivago.CLICKOUT).select("user_id", "item_id", "timestamp").unique()
    own_hotel = impressions.join(clickouts_at_t, on=["user_id", "item_id", "timestamp"], how="semi")
    return {
        "requests_losing_events": losing.height,
        "impressions_losing_events": int(losing["rows"].sum()),
        "events_lost": lost.height,
        "events_lost_by_type": dict(sorted(lost["event_type"].value_counts().iter_rows())),
        "impressions_with_own_hotel_clicked_out_at_list_second": own_hotel.height,
    }


def label_comparison(at_clickout: pl.DataFrame, impressions: pl.DataFrame, events: pl.DataFrame) -> dict:
    """The derived label against ``trivago``'s logged ``click`` on the same rows.

    ``at_clickout``: ``trivago``'s impressions of the sample (``click`` included) and
    ``impressions`` the same rows at t = clickout − 1. Rows whose hour (t, t + 1 h] runs past the
    data's last event are left out (the store censors them; split boundaries are not known here).
    """
    data_end = int(events["timestamp"].max())
    derived = clicked_out_within(impressions, events)
    frame = pl.DataFrame({
        "derived": derived,
        "click": at_clickout["click"].cast(pl.Boolean),
        "observed": impressions["timestamp"] + WINDOW <= data_end,
        "touched": touched_before(impressions, events),
        "request_id": impressions["request_id"],
        "item_id": impressions["item_id"],
    })  # fmt: skip
    # a hotel listed twice in its request, clicked: trivago marks only its first position
    clicked_items = frame.filter(pl.col("click")).select("request_id", "item_id", pl.lit(True).alias("clicked_hotel"))
    frame = frame.join(clicked_items, on=["request_id", "item_id"], how="left", maintain_order="left").with_columns(
        pl.col("clicked_hotel").fill_null(False)
    )
    seen = frame.filter("observed")
    extra = seen.filter(pl.col("derived") & ~pl.col("click"))

    def share(rows: pl.DataFrame) -> float:
        return round(float(rows["touched"].mean()), 4) if rows.height else 0.0

    return {
        "window_seconds": WINDOW,
        "rows": seen.height,
        "rows_hour_past_end_of_data": frame.height - seen.height,
        "logged_clicks": int(seen["click"].sum()),
        "logged_click_rate": round(float(seen["click"].mean()), 5) if seen.height else 0.0,
        "derived_positives": int(seen["derived"].sum()),
        "derived_rate": round(float(seen["derived"].mean()), 5) if seen.height else 0.0,
        "derived_1_logged_0": extra.height,
        "derived_1_logged_0_clicked_hotel_listed_twice": int(extra["clicked_hotel"].sum()),
        "derived_1_logged_0_later_clickout": int((~extra["clicked_hotel"]).sum()),
        "derived_0_logged_1": int((~seen["derived"] & seen["click"]).sum()),
        "touched_before": {"positives": share(seen.filter("derived")), "negatives": share(seen.filter(~pl.col("derived")))},
    }


def prepare(source_dir: Path | str, out_dir: Path | str, max_users: int = 1000, seed: int = 0) -> dict:
    """Convert the trivago sample in ``source_dir`` (or the Parquet file itself) into the click task
    with a derived label for at most ``max_users`` users drawn with ``seed``, written into ``out_dir``.

    Returns the summary counts (also written to ``out_dir/summary.json``). Raises
    :class:`AdapterError` on bad input (as :func:`eventrec.adapters.trivago.prepare`), a
    ``max_users`` below 1 or a non-integer ``seed``.
    """
    check_sample_options(max_users, seed)
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    all_events, all_impressions, base = trivago.convert(source_dir)
    listed_users = all_impressions["user_id"].unique().to_list()
    chosen = pl.Series(sample_users(listed_users, max_users, seed), dtype=pl.String).implode()
    events = all_events.filter(pl.col("user_id").is_in(chosen))
    at_clickout = all_impressions.filter(pl.col("user_id").is_in(chosen))
    impressions = list_impressions(at_clickout)

    summary: dict = {
        **trivago.sample_summary(SCHEMA, base, max_users, seed),
        "users_with_impression_lists": len(listed_users),
        "users": impressions["user_id"].n_unique(),
        "source_dropped_clickouts_without_impression_list": base["dropped_clickouts_without_impression_list"],
        "events": events.height,
        "events_by_type": dict(sorted(events["event_type"].value_counts().iter_rows())),
        "requests": impressions["request_id"].n_unique(),
        "impressions": impressions.height,
        "distinct_items_impressed": impressions["item_id"].n_unique(),
        "impression_seconds_before_clickout": SHOWN_BEFORE,
        "history_shift": history_shift(impressions, events),
        "label_vs_logged_click": label_comparison(at_clickout, impressions, events),
    }
    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions}, summary)
