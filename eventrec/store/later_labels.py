"""Labels from later events: the schema's ``impressions.derived_labels`` (attribution windows).

For an impression of user ``u`` at time ``t`` and a derived label with event types ``T``, match
columns ``M`` and window ``w`` (seconds)::

    label = 1    if some event of u, of a type in T, with every M column equal to the impression's,
                 has a timestamp in (t, t + w]      (strictly after the impression, end included)
            0    if there is none and the window is observed
            NaN  if the window is censored: t + w is past the last observed second of the impression's
                 split (train: train_end - 1, validation: validation_end - 1) or of the events source
                 (its largest timestamp, any event type) -- even when an event was seen early, so
                 that censoring does not favour positives

Censored impressions are counted in the manifest (``labels.NAME.censored.split_boundary`` and
``labels.NAME.censored.end_of_data``). The events read here never enter a history: the streams and
the cuts are computed from the streams alone, exactly as without derived labels.

Vectorised: each (user, match values) pair becomes one segment of a :class:`SegmentedTimeIndex`, and
an impression's count is ``count_before(t + w + 1) - count_before(t + 1)`` (integer seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from eventrec.schema import DerivedLabel, EventsSource, Schema
from eventrec.store.encoding import BuildReport
from eventrec.store.layout import TIME, USER
from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.store.raw_logs import ROW, check_timestamps, require_columns, scan_table, timestamp_seconds

KEY = "_key"


def _events(schema: Schema, derived: DerivedLabel, data_dir: Path, keys: list[str]) -> tuple[pl.DataFrame, int]:
    """The events that count (``USER``, ``TIME``, the match columns renamed to ``keys[1:]``), rows
    with a null user or match value dropped, and the last timestamp of the whole source."""
    source: EventsSource = derived.source or schema.events  # type: ignore[assignment]
    table = scan_table(data_dir, source.path)
    needed = {source.user_column: "id", source.timestamp_column: "timestamp", str(source.type_column): "id"}
    for match in derived.match_columns:
        needed.setdefault(match.event, "id")
    require_columns(table, needed)
    seconds = timestamp_seconds(table, source.timestamp_column, source.timestamp_unit)
    data_end = table.collect(table.frame.select(seconds.max())).item()
    frame = table.frame.filter(pl.col(str(source.type_column)).cast(pl.String).is_in(derived.events))
    events = table.collect(frame.select(
        pl.col(ROW), pl.col(source.timestamp_column), pl.col(source.user_column).alias(USER), seconds.alias(TIME),
        *[pl.col(m.event).alias(key) for m, key in zip(derived.match_columns, keys[1:])],
    ), streaming=True)
    check_timestamps(table, events, source.timestamp_column, TIME)
    events = events.select(keys + [TIME]).drop_nulls(keys)
    return events, int(data_end) if data_end is not None else 0


def _aligned(left: pl.DataFrame, right: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast key columns whose types differ between the two frames to strings on both sides."""
    differ = [k for k in keys if left.schema[k] != right.schema[k]]
    cast = [pl.col(k).cast(pl.String) for k in differ]
    return (left.with_columns(cast), right.with_columns(cast)) if differ else (left, right)


def later_label(schema: Schema, derived: DerivedLabel, data_dir: Path, impressions: pl.DataFrame, split: np.ndarray,
                boundaries: tuple[int, int], report: BuildReport) -> np.ndarray:
    """``[N]`` float32 label (1, 0 or NaN) of ``derived`` for the impressions (``USER``, ``TIME`` and
    the match columns, in the examples' order; ``split [N]`` 0/1/2); counts go to ``report``."""
    events, data_end = _events(schema, derived, data_dir, label_keys(derived))
    return later_label_from_events(derived, events, data_end, impressions, split, boundaries, report)


def label_keys(derived: DerivedLabel) -> list[str]:
    """The columns an event and an impression must share: the user, then each match column."""
    return [USER] + [f"_match{i}" for i in range(len(derived.match_columns))]


def later_label_from_events(derived: DerivedLabel, events: pl.DataFrame, data_end: int, impressions: pl.DataFrame, split: np.ndarray,
                            boundaries: tuple[int, int], report: BuildReport) -> np.ndarray:
    """:func:`later_label` from the events that count (``label_keys`` and ``TIME``, null keys dropped)
    and the last timestamp of the whole events source. Given the events of some users only, it gives
    the labels of those users' impressions: a label depends on its own user's events alone."""
    keys = label_keys(derived)
    queries = impressions.select(pl.col(USER), *[pl.col(m.impression).alias(k) for m, k in zip(derived.match_columns, keys[1:])])
    events, queries = _aligned(events, queries, keys)
    segments = events.select(keys).unique(maintain_order=True).with_row_index(KEY)
    events = events.join(segments, on=keys, how="inner").sort([KEY, TIME])
    segment_of = events[KEY].to_numpy().astype(np.int64)
    offsets = np.searchsorted(segment_of, np.arange(segments.height + 1), side="left").astype(np.int64)
    index = SegmentedTimeIndex(offsets, events[TIME].to_numpy())
    found = queries.with_row_index("_q").join(segments, on=keys, how="left").sort("_q")[KEY]
    rows = found.fill_null(0).to_numpy().astype(np.int64)
    times = impressions[TIME].to_numpy().astype(np.int64)
    window = derived.window_seconds
    hits = index.count_before(rows, times + window + 1) - index.count_before(rows, times + 1)
    positive = (hits > 0) & found.is_not_null().to_numpy()

    split_last = np.array([boundaries[0] - 1, boundaries[1] - 1, data_end], dtype=np.int64)[split.astype(np.int64)]
    window_end = times + window
    past_end = window_end > data_end
    past_split = (window_end > split_last) & ~past_end
    censored = past_end | past_split
    label = np.where(censored, np.nan, positive.astype(np.float32)).astype(np.float32)
    name = derived.name
    report.counts[f"labels.{name}.censored.end_of_data"] = int(past_end.sum())
    report.counts[f"labels.{name}.censored.split_boundary"] = int(past_split.sum())
    report.counts[f"labels.{name}.missing"] = int(censored.sum())
    report.counts[f"labels.{name}.positives"] = int(np.nansum(label))
    report.counts[f"labels.{name}.events"] = int(events.height)
    return label


def later_label_columns(schema: Schema, data_dir: Path, impressions: pl.DataFrame, split: np.ndarray,
                        boundaries: tuple[int, int], report: BuildReport) -> dict[str, np.ndarray]:
    """``label__{name}`` → ``[N]`` float32 for every derived label of the schema (none: empty)."""
    return {f"label__{d.name}": later_label(schema, d, data_dir, impressions, split, boundaries, report)
            for d in schema.impressions.derived_labels}
