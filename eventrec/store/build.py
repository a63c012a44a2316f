"""Build the people-centric event store and the point-in-time examples from raw logs.

Output directory (written to a temporary sibling, then renamed into place)::

    manifest.json       schema, resolved split boundaries, counts, drops, column layout
    vocabularies.json   per vocabulary: its values (training period only) or its hash buckets
    statistics.json     per numeric attribute: training-period mean/std after the transform
    users.parquet       one row per user: ``user_id`` and, per stream, list columns sorted by time:
                        ``{stream}__timestamp`` and ``{stream}__{attribute}`` (encoded); with a value
                        sampling policy also ``{stream}___sampling_value`` (store/sampling_values.py)
    examples.parquet    one row per impression, time-ordered: ``user_row``, ``timestamp``,
                        ``split`` (0 train, 1 validation, 2 test), ``cut__{stream}`` (number of the
                        user's events strictly before the impression), encoded item and context
                        attributes, labels (float, NaN when missing; derived labels from later
                        events last, see ``store/later_labels.py``), extra columns
    content__{table}__{vocabulary}.npy   side-table vectors aligned with the key's encoded ids

Engines (``engine``), all writing the same bytes (see ``docs/store.md``):

- ``polars`` (default): the partitioned build in this process, memory bounded by a user partition
  (:mod:`eventrec.store.partitioned`, :mod:`eventrec.store.embedded_engine`);
- ``spark``: the same partitions run by Apache Spark (:mod:`eventrec.store.spark_engine`);
- ``memory``: every row at once (:mod:`eventrec.store.build_in_memory`), the readable reference;
  the partitioned engines hand it any input they refuse or fail on with a ``DataError``, so that
  errors name the first bad row exactly as it does (and in the same order).

The same input gives byte-identical output, whatever the engine and the partition size.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from eventrec.schema import Schema
from eventrec.store.arrow_memory import returning_arrow_memory
from eventrec.store.build_in_memory import build_in_memory
from eventrec.store.layout import check_replaceable, recover_interrupted_swap, remove_stale_temporaries, swap_into_place, write_json
from eventrec.store.load import Progress
from eventrec.store.partitioned import DEFAULT_ROWS_PER_PARTITION, build_partitioned
from eventrec.store.raw_logs import DataError

ENGINES = ("polars", "spark", "memory")


def build_store(schema: Schema, data_dir: Path | str, out_dir: Path | str, progress: Progress | None = None,
                allow_empty_splits: bool = False, *, engine: str = "polars", rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
                spark_master: str | None = None, workers: int | None = None) -> dict:
    """Build the store for ``schema`` from the raw logs in ``data_dir`` into ``out_dir``.

    ``out_dir`` must be absent, empty or a previous store, and neither ``data_dir`` nor inside it.
    A split without impressions is refused unless ``allow_empty_splits``. ``engine``: "polars",
    "spark" or "memory" (module docstring); ``rows_per_partition``: the raw rows (events and
    impressions) of a user partition, the unit of memory of the partitioned engines;
    ``spark_master``: the Spark master URL (default ``local[*]``); ``workers``: the polars engine's
    partitions in flight (threads; default ``min(2, cores)``: peak memory grows with it, and each
    partition's Polars work already uses every core). Returns the manifest (also
    written as ``manifest.json``). Raises :class:`DataError` on bad input.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if isinstance(rows_per_partition, bool) or not isinstance(rows_per_partition, int) or rows_per_partition < 1:
        raise ValueError(f"rows_per_partition: expected an integer >= 1, got {rows_per_partition!r}")
    if spark_master is not None and engine != "spark":
        raise ValueError(f"spark_master: only for engine 'spark' (engine is {engine!r})")
    if workers is not None and (engine != "polars" or isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers: an integer >= 1, for engine 'polars' only (engine {engine!r}, workers {workers!r})")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    recover_interrupted_swap(out_dir)
    check_replaceable(out_dir, {"--data": data_dir})
    remove_stale_temporaries(out_dir.parent, f".{out_dir.name}.tmp-*")

    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if engine == "memory":
            manifest = build_in_memory(schema, data_dir, tmp, say, allow_empty_splits)
        else:
            try:
                with returning_arrow_memory():
                    manifest = build_partitioned(schema, data_dir, tmp, _engine(engine, spark_master, workers), say, allow_empty_splits, rows_per_partition)
            except DataError as refused:  # Refused by the scan, or an error met on the way
                say(f"input refused ({refused}): the in-memory build names the first offending row")
                shutil.rmtree(tmp)
                tmp.mkdir()
                manifest = build_in_memory(schema, data_dir, tmp, say, allow_empty_splits)
        write_json(manifest, tmp / "manifest.json")
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    return manifest


def _engine(name: str, spark_master: str | None, workers: int | None):
    if name == "spark":
        try:
            from eventrec.store.spark_engine import SparkEngine  # pyspark is an optional extra
        except ImportError as error:
            raise ValueError(f"engine 'spark': {error}; install it with pip install 'eventrec[spark]' (or make spark)") from None
        return SparkEngine(spark_master)
    from eventrec.store.embedded_engine import EmbeddedEngine

    return EmbeddedEngine(workers)
