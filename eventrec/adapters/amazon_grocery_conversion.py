"""Amazon grocery → a small-data *conversion* task on a user sample (schema ``amazon_grocery_conversion``).

The small-data regime with a label derived from later events (issue 20): at most ``max_users``
users, and for each of their purchases a request shown just before the purchase day starts, whose
label ``purchase`` the store derives from the purchase events: is the candidate bought that day?

Input: ``train.csv`` and ``item_meta.csv``, read and checked exactly as
:mod:`eventrec.adapters.amazon_grocery` does (:func:`~eventrec.adapters.amazon_grocery.read_purchases`).

Output (in ``out_dir``):

- ``events.parquet``: the ``amazon_grocery`` adapter's events (one ``purchase`` event per purchase,
  with ``item_id`` and ``category``, same order), restricted to the sampled users.
- ``impressions.parquet``: per purchase one request, as ``amazon_grocery`` builds it (the purchased
  item and ``negatives`` items drawn uniformly with ``seed`` from the catalogue, never the purchased
  item, never repeated in the request, never an item the user bought on or before the purchase's
  day: a negative bought *that same day* cannot happen, so it cannot become a positive), but at
  **timestamp = purchase time − 1**: one second before the purchase day starts (Amazon times are UTC
  midnights). Columns ``request_id``, ``user_id``, ``timestamp``, ``item_id``, ``category``,
  ``is_negative_sample``; **no label column**.
- ``items.parquet``: the catalogue (``item_id``, ``category``).
- ``summary.json``: the counts returned by :func:`prepare`.

The label ``purchase`` is declared by the schema as a label from later events: 1 when a ``purchase``
event of the same user with the same ``item_id`` falls in (t, t + 1 d], i.e. at the purchase day's
midnight (the next midnight is t + 1 d + 1, outside): exactly the request's purchased item, since
the user's other purchases that day are never drawn as negatives. The history (events strictly
before t = midnight − 1) holds the earlier days, exactly the history of ``amazon_grocery``'s
request at the midnight. The last day of the sample has its window cut by the end of the data
(label missing).

**User sample**: every user with a purchase gets the key ``blake2b(f"{seed}:{user_id}")`` (8 bytes,
big-endian, the id in decimal); the ``max_users`` users with the smallest keys are kept, with all
their purchases (:func:`eventrec.adapters._common.sample_users`, as ``trivago_views`` samples). The
same ``seed`` then draws the negatives.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from eventrec.adapters import amazon_grocery
from eventrec.adapters._common import (
    ROW,
    AdapterError,
    check_output_dir,
    check_sample_options,
    sample_users,
    write_outputs,
)

SCHEMA = "amazon_grocery_conversion"
DAY = 86_400
SHOWN_BEFORE = 1  # seconds between the impression and the purchase day's midnight


def _check_midnights(purchases: pl.DataFrame, path: Path) -> None:
    """Every sampled purchase must be at a UTC midnight: the label window (t, t + 1 d] is "that day"
    only then (and the history before t is the plain adapter's)."""
    bad = purchases["timestamp"] % DAY != 0
    if bad.any():
        row, value = purchases.filter(bad).select(ROW, "timestamp").row(0)
        raise AdapterError(
            f"{path}: column 'time', row {row}: {value} is not a UTC midnight ({int(bad.sum())} sampled purchase(s)); "
            "the conversion task shows each request one second before its purchase day and needs day-resolution times"
        )


def category_bought_before(impressions: pl.DataFrame, events: pl.DataFrame) -> dict[str, float]:
    """Share of positive and of negative impressions whose ``category`` the user bought on an earlier day.

    ``impressions`` at purchase time (the midnight) with ``is_negative_sample``; ``events`` the
    purchase events. "Earlier" is strictly before the impression's midnight (what its history holds).
    """
    first = events.drop_nulls("category").group_by("user_id", "category").agg(pl.col("timestamp").min().alias("_first"))
    flagged = impressions.join(first, on=["user_id", "category"], how="left", maintain_order="left").with_columns(
        (pl.col("_first") < pl.col("timestamp")).fill_null(False).alias("_before")
    )
    shares = flagged.group_by("is_negative_sample").agg(pl.col("_before").mean())
    by_kind = dict(shares.iter_rows())
    return {kind: round(float(by_kind.get(flag, 0.0)), 4) for kind, flag in (("positives", 0), ("negatives", 1))}


def prepare(source_dir: Path | str, out_dir: Path | str, max_users: int = 1000, negatives: int = 4, seed: int = 0) -> dict:
    """Convert Amazon grocery (``train.csv`` + ``item_meta.csv`` in ``source_dir``) into the
    conversion task for at most ``max_users`` users drawn with ``seed``, written into ``out_dir``.

    ``negatives``: items drawn per purchase; ``seed``: the user sample's and the draw's seed.
    Returns the summary counts (also written to ``out_dir/summary.json``). Raises
    :class:`AdapterError` on bad input (as :func:`eventrec.adapters.amazon_grocery.prepare`), a
    sampled purchase not at a UTC midnight, a ``max_users`` below 1 or a negative ``negatives``.
    """
    check_sample_options(max_users, seed)
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise AdapterError(f"negatives must be a non-negative integer, got {negatives!r}")
    check_output_dir(Path(out_dir), Path(source_dir))  # before the work: refuse an output it may not replace
    items, all_purchases, counts = amazon_grocery.read_purchases(source_dir)
    users_in_source = all_purchases["user_id"].n_unique()
    chosen = sample_users(all_purchases["user_id"].to_list(), max_users, seed)
    purchases = all_purchases.filter(pl.col("user_id").is_in(pl.Series(chosen, dtype=pl.Int64).implode()))
    _check_midnights(purchases, Path(source_dir) / amazon_grocery.INTERACTIONS)

    events = amazon_grocery.purchase_events(purchases)
    requests = amazon_grocery.purchase_requests(purchases)
    # drawn at the purchase's midnight, so that nothing the user bought that day is a negative
    at_purchase, redraws = amazon_grocery.purchase_impressions(
        requests, purchases, items, amazon_grocery.catalogue_of(items, all_purchases), negatives, seed
    )
    impressions = at_purchase.drop("purchase").with_columns(pl.col("timestamp") - SHOWN_BEFORE)

    summary: dict = {
        "dataset": SCHEMA,
        "source": [amazon_grocery.INTERACTIONS, amazon_grocery.ITEM_META],
        "max_users": max_users,
        "negatives_per_purchase": negatives,
        "seed": seed,
        "users_in_source": users_in_source,
        "users": len(chosen),
        # what reading the files did, over the whole file, before the sample
        **{f"source_{key}": value for key, value in counts.items()},
        "events": events.height,
        "events_by_type": {"purchase": events.height},
        "distinct_items_purchased": events["item_id"].n_unique(),
        "requests": requests.height,
        "impressions": impressions.height,
        "negative_redraws": redraws,
        "purchases_sharing_user_and_day": amazon_grocery.purchases_sharing_user_and_day(purchases),
        "impression_seconds_before_purchase_day": SHOWN_BEFORE,
        "category_bought_before": category_bought_before(at_purchase, events),
    }
    return write_outputs(out_dir, source_dir, {"events.parquet": events, "impressions.parquet": impressions, "items.parquet": items}, summary)
