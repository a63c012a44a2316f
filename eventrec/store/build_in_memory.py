"""The in-memory build: every raw row read at once, then users, examples and metadata in one pass.

The readable reference of the partitioned build (:mod:`eventrec.store.build`): the same functions,
over all users at once. The tests compare the two byte for byte. It is also the build that names the
first offending row of bad input: the partitioned engines hand such input to it. Its peak memory is
about 14x the store it writes (``bench/results/build_store.md``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from eventrec.schema import Schema
from eventrec.store.columns import encode_streams, example_columns
from eventrec.store.encoding import AttributeEncoder, BuildReport
from eventrec.store.later_labels import later_label_columns
from eventrec.store.layout import SPLIT_NAMES, TIME, write_parquet
from eventrec.store.load import Progress, read_logs
from eventrec.store.metadata import finish_store
from eventrec.store.raw_logs import ROW
from eventrec.store.splits import check_splits, resolve_splits, split_of


def build_in_memory(schema: Schema, data_dir: Path, out_dir: Path, say: Progress, allow_empty_splits: bool = False) -> dict:
    """Write the store's files into the existing, empty ``out_dir``; return the manifest (not written)."""
    report = BuildReport()
    imp = schema.impressions
    imp_table, impressions, streams, users = read_logs(schema, data_dir, report, say)
    boundaries = resolve_splits(schema, impressions[TIME].to_numpy())
    times = impressions[TIME].to_numpy().astype(np.int64)
    split = split_of(times, boundaries)
    check_splits(schema, np.bincount(split, minlength=len(SPLIT_NAMES)), boundaries, allow_empty_splits)
    num_users = users.height

    # --- vocabularies and statistics from the training period only ---------------------------
    say("learning vocabularies and statistics (training period)")
    encoder = AttributeEncoder(schema, boundaries[0])
    places = [(f"streams.{s.name}", s.attributes, streams[s.name][1], [ROW]) for s in schema.streams]
    places.append(("impressions", imp.item_attributes + imp.context_attributes, impressions, []))
    encoder.fit(places)
    del places

    writer = ThreadPoolExecutor(max_workers=2)
    try:
        stream_rows = {name: (table.path, df) for name, (table, df) in streams.items()}
        streams.clear()
        user_columns, indexes = encode_streams(schema, stream_rows, users, encoder, report, say)
        # users.parquet is compressed and written in the background while the examples are computed,
        # then examples.parquet alongside it (pyarrow releases the GIL: one core each)
        users_written = writer.submit(write_parquet, pa.table(user_columns), out_dir / "users.parquet")
        del user_columns

        # --- examples: one per impression, pointing at the user's history --------------------
        say("computing point-in-time examples")
        columns = example_columns(schema, impressions, users, indexes, encoder, report, imp_table.path, split)
        for column, values in later_label_columns(schema, data_dir, impressions, split, boundaries, report).items():
            columns[column] = pa.array(values)  # labels from later events: never a history
        del impressions, indexes
        say("writing users and examples")
        examples_written = writer.submit(write_parquet, pa.table(columns), out_dir / "examples.parquet")
        del columns
        users_written.result()
        examples_written.result()
    finally:
        writer.shutdown(wait=True)  # no write into out_dir after the caller removes it

    report.counts["users"] = num_users
    report.counts["impressions"] = int(len(times))
    for i, name in enumerate(SPLIT_NAMES):
        report.counts[f"examples.{name}"] = int((split == i).sum())
    return finish_store(schema, data_dir, encoder, report, boundaries, out_dir)
