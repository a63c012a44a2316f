"""trivago sample → a *view → clickout* conversion task on a small user sample (schema ``trivago_views``).

The small-data regime with a label derived from later events: each time a user looks at a hotel
(its images, info, rating or deals), does a clickout on that same hotel follow within one hour?

Input: ``trivago_val_100k.parquet``, converted exactly as :mod:`eventrec.adapters.trivago` does
(:func:`eventrec.adapters.trivago.convert`: same events, same merged same-second repeats, same
drops), then restricted to a sample of users.

Output (in ``out_dir``):

- ``events.parquet``: the ``trivago`` adapter's ``events.parquet`` (same columns, same order),
  restricted to the sampled users.
- ``impressions.parquet``: one row per *view* of a hotel by a sampled user: the events of types
  :data:`VIEW_ACTIONS` (the ``item_interaction`` stream without ``search_for_item``), deduplicated
  on (user, second, hotel), so that several views of one hotel in one second (an image swipe and
  the info tab, say) are one impression. Columns ``request_id`` (each impression its own request,
  numbered in (timestamp, user, session, step, hotel) order of its first view), ``user_id``,
  ``timestamp``, ``item_id``, ``session_id``; no label column (the task's label is the derived
  ``clickout``).
- ``summary.json``: the counts returned by :func:`prepare`.

The label ``clickout`` is not a column: the schema declares it as a label from later events
(``derived_labels``): 1 when a ``clickout_item`` event of the same user on the same ``item_id``
falls in (t, t + 1 h]; missing when that window is cut by a split boundary or the end of the data.
A clickout in the view's own second does not count (nor is it in the view's history).

**User sample**: among the users with at least one view (the only ones that have impressions),
each user gets the key ``blake2b(f"{seed}:{user_id}")`` (8 bytes, big-endian); the ``max_users``
users with the smallest keys are kept (all of them when there are fewer). The choice depends only on
the seed and the user ids, not on file order, and the sample for ``max_users = n`` holds the one
for any smaller ``n`` (:func:`eventrec.adapters._common.sample_users`, shared with
:mod:`eventrec.adapters.amazon_grocery_conversion`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from eventrec.adapters import trivago
from eventrec.adapters._common import check_output_dir, check_sample_options, sample_users, write_outputs
from eventrec.adapters._common import sample_key  # noqa: F401  (the user sample's key, importable from here as before)

SCHEMA = "trivago_views"
# Looking at a hotel's page: the item_interaction stream of trivago.yaml without search_for_item
VIEW_ACTIONS = ["interaction_item_image", "interaction_item_info", "interaction_item_rating", "interaction_item_deals"]
IMPRESSION_KEY = ["user_id", "timestamp", "item_id"]


def view_impressions(events: pl.DataFrame) -> pl.DataFrame:
    """One impression per (user, second, hotel) among the view events of ``events`` (trivago's events,
    sorted as the adapter writes them), with its ``request_id`` and ``session_id``."""
    views = events.filter(pl.col("event_type").is_in(VIEW_ACTIONS))
    first = views.unique(subset=IMPRESSION_KEY, keep="first", maintain_order=True)
    return (
        first.sort("timestamp", "user_id", "session_id", "step", "item_id", maintain_order=True)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("request_id"))
        .select("request_id", "user_id", "timestamp", "item_id", "session_id")
    )


def prepare(source_dir: Path | str, out_dir: Path | str, max_users: int = 1000, seed: int = 0) -> dict:
    """Convert the trivago sample in ``source_dir`` (or the Parquet file itself) into the view →
    clickout task for at most ``max_users`` users drawn with ``seed``, written into ``out_dir``.

    Returns the summary counts (also written to ``out_dir/summary.json``). Raises
    :class:`AdapterError` on bad input (as :func:`eventrec.adapters.trivago.prepare`) or a
    ``max_users`` below 1.
    """
    check_sample_options(max_users, seed)
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    all_events, _, base = trivago.convert(source_dir)
    viewers = all_events.filter(pl.col("event_type").is_in(VIEW_ACTIONS))["user_id"].unique().to_list()
    chosen = sample_users(viewers, max_users, seed)
    events = all_events.filter(pl.col("user_id").is_in(chosen))
    impressions = view_impressions(events)
    views = events.filter(pl.col("event_type").is_in(VIEW_ACTIONS))

    summary: dict = {
        **trivago.sample_summary(SCHEMA, base, max_users, seed),
        "users_with_views": len(viewers),
        "users": len(chosen),
        "events": events.height,
        "events_by_type": dict(sorted(events["event_type"].value_counts().iter_rows())),
        "view_events": views.height,
        "merged_same_second_views": views.height - impressions.height,
        "impressions": impressions.height,
        "requests": impressions.height,
        "distinct_items_impressed": impressions["item_id"].n_unique(),
        "clickout_events": int((events["event_type"] == trivago.CLICKOUT).sum()),
    }
    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions}, summary)
