"""Encode new impressions (requests, candidate pools) against a built store.

New rows — held-out candidate pools, requests at serving time — are encoded with the store's own
vocabularies and statistics (ids never seen in training: hashed ids keep their identity, vocabulary
ids become out-of-vocabulary), and point at the store's histories with cuts computed by the same
strictly-before rule. Users the store has never seen get an empty history (cold start).

``store_for_requests(store, frame)`` returns a view of the store whose examples are the new rows,
so that every batch function (``make_batch``, the DLRM features) works on it unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import polars as pl

from eventrec.store.encoding import AttributeEncoder
from eventrec.store.raw_logs import ROW, TIMESTAMP_SCALE, DataError
from eventrec.store.reader import EventStore
from eventrec.schema import EmbeddingAttribute


def store_for_requests(store: EventStore, frame: pl.DataFrame, source: str = "<requests>") -> EventStore:
    """A view of ``store`` whose examples are the rows of ``frame``.

    ``frame`` has the impressions' raw columns (user, timestamp in the schema's unit, item and
    context attributes); label columns are optional (NaN when absent), other columns are ignored.
    """
    imp = store.schema.impressions
    missing = [c for c in [imp.user_column, imp.timestamp_column] if c not in frame.columns]
    missing += [a.source_column for a in imp.item_attributes + imp.context_attributes if not (isinstance(a, EmbeddingAttribute) and a.table) and a.source_column not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    frame = frame.with_row_index(ROW)
    if frame[imp.timestamp_column].null_count():
        raise DataError(f"{source}: column {imp.timestamp_column!r}: null timestamp")
    times = frame[imp.timestamp_column].cast(pl.Int64).to_numpy() // TIMESTAMP_SCALE[imp.timestamp_unit]
    # user rows: known users by id, unknown users share one extra, empty row (cold start)
    known = pl.DataFrame({"_user": store.user_ids, "_user_row": np.arange(store.num_users, dtype=np.int64)})
    users = frame.select(pl.col(imp.user_column).alias("_user"))
    if users.schema["_user"] != known.schema["_user"]:
        users, known = users.cast({"_user": pl.String}), known.cast({"_user": pl.String})
    rows = users.join(known, on="_user", how="left", maintain_order="left")["_user_row"].fill_null(store.num_users).to_numpy().astype(np.int64)
    cold = rows == store.num_users

    view = copy.copy(store)
    view.streams = {}
    view.cuts = {}
    for name, data in store.streams.items():
        cuts = np.zeros(len(rows), dtype=np.int64)
        if (~cold).any():
            cuts[~cold] = data.time_index.count_before(rows[~cold], times[~cold])
        view.cuts[name] = cuts
        extended = np.concatenate([data.user_offsets, data.user_offsets[-1:]])
        view.streams[name] = replace(data, user_offsets=extended)
    encoder = AttributeEncoder.fitted(store.schema, store.manifest["splits"]["train_end"], store.vocabularies, store.statistics)
    view.item = encoder.encode_records("impressions", imp.item_attributes, frame, source)
    view.context = encoder.encode_records("impressions", imp.context_attributes, frame, source)
    view.user_rows = rows
    view.timestamps = times.astype(np.int64)
    view.splits = np.full(len(rows), 2, dtype=np.int8)
    view.request_ids = frame[imp.request_column].to_numpy() if imp.request_column and imp.request_column in frame.columns else None
    view.item_ids = frame[imp.item_column].to_numpy() if imp.item_column in frame.columns else np.zeros(len(rows))
    view.labels = np.stack(
        [frame[n].cast(pl.Float32).fill_null(np.nan).to_numpy() if n in frame.columns else np.full(len(rows), np.nan, dtype=np.float32) for n in store.label_names],
        axis=1,
    ).astype(np.float32)
    view.extras = {c: frame[c].cast(pl.Float64).to_numpy() for c in imp.extra_columns if c in frame.columns}
    view.cold_start = cold
    return view
