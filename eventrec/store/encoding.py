"""Encoding raw attribute values with the vocabularies and statistics learned from the training period.

:class:`AttributeEncoder` is fitted once by the build (:meth:`AttributeEncoder.fit`) and rebuilt from a
store's files for new rows (:meth:`AttributeEncoder.fitted`); :meth:`AttributeEncoder.encode_records`
is the one function that encodes raw records (requests, candidates, appended events) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from eventrec.schema import EmbeddingAttribute, Schema
from eventrec.store.layout import TIME, Ragged
from eventrec.store.raw_logs import ROW, DataError
from eventrec.store.vector_precision import from_stored, to_stored
from eventrec.store.vocab import NumericStatistics, Vocabulary, build_vocabulary_from_counts, normalize, numeric_statistics, value_counts


@dataclass
class BuildReport:
    """What the build did, including every counted drop (nothing is lost silently)."""

    counts: dict[str, Any] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    nulls: dict[str, int] = field(default_factory=dict)

    def drop(self, key: str, n: int) -> None:
        if n:
            self.drops[key] = self.drops.get(key, 0) + int(n)

    def null(self, key: str, n: int) -> None:
        if n:
            self.nulls[key] = self.nulls.get(key, 0) + int(n)


@dataclass
class TrainingSummary:
    """The training-period inputs of the vocabularies and statistics of some rows, summable over parts:
    ``counts``: vocabulary → value-count frames (``value``, ``len``), one per place and part;
    ``numeric``: ``place.attribute`` → (order columns, frame of the order columns and ``value``)."""

    counts: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    numeric: dict[str, tuple[list[str], pl.DataFrame]] = field(default_factory=dict)


class AttributeEncoder:
    """Learns vocabularies and numeric statistics from the training period, then encodes."""

    def __init__(self, schema: Schema, train_end: int):
        self.schema = schema
        self.train_end = train_end
        self.vocabularies: dict[str, Vocabulary] = {}
        self.statistics: dict[str, NumericStatistics] = {}

    @classmethod
    def fitted(cls, schema: Schema, train_end: int, vocabularies: dict[str, Vocabulary], statistics: dict[str, dict]) -> "AttributeEncoder":
        """An encoder with a built store's vocabularies and statistics (to encode new rows alike)."""
        encoder = cls(schema, train_end)
        encoder.vocabularies = dict(vocabularies)
        encoder.statistics = {k: NumericStatistics(v["mean"], v["std"], v["transform"]) for k, v in statistics.items()}
        return encoder

    def fit(self, places: list[tuple[str, list, pl.DataFrame, list[str]]]) -> None:
        """``places``: (place name, attributes, raw frame with ``_t``, order) for every stream and
        impressions. Numeric statistics are computed over the training rows sorted by ``order``
        (e.g. the file row), so that their floating-point sums do not depend on the frame's order."""
        self.fit_summaries([self.training_summary(places)])

    def training_summary(self, places: list[tuple[str, list, pl.DataFrame, list[str]]]) -> "TrainingSummary":
        """What :meth:`fit` needs of ``places`` (same form), in a form that adds up over parts of the
        rows: per vocabulary the training values' counts, per numeric attribute its training values
        with their ``order`` columns. :meth:`fit_summaries` of the summaries of the parts of a user
        partition gives the vocabularies and statistics of the whole, bit for bit."""
        # categorical values are counted per place (lazily, only the needed column of the training
        # rows), and the counts summed per vocabulary: never all the training values at once
        def value_dtype(frame: pl.DataFrame, attribute: Any) -> pl.DataType:
            dtype = frame.schema[attribute.source_column]
            if attribute.kind == "multi_categorical" and isinstance(dtype, (pl.List, pl.Array)):
                dtype = dtype.inner
            return pl.String if dtype == pl.Categorical else dtype

        dtypes: dict[str, set] = {}
        for _, attributes, frame, _ in places:
            for attribute in attributes:
                if attribute.kind in ("categorical", "multi_categorical"):
                    dtypes.setdefault(attribute.vocabulary_name, set()).add(value_dtype(frame, attribute))
        summary = TrainingSummary()
        for place, attributes, frame, order in places:
            train = frame.lazy().filter(pl.col(TIME) < self.train_end)
            numeric = sorted({a.source_column for a in attributes if a.kind == "numeric"} - set(order))
            if numeric:
                numeric_train = train.select(*order, *numeric).collect()
            for attribute in attributes:
                if attribute.kind in ("categorical", "multi_categorical"):
                    values = pl.col(attribute.source_column)
                    if attribute.kind == "multi_categorical":
                        values = values.explode()
                    if value_dtype(frame, attribute) == pl.String or len(dtypes[attribute.vocabulary_name]) > 1:
                        values = values.cast(pl.String)
                    summary.counts.setdefault(attribute.vocabulary_name, []).append(value_counts(train.select(values.alias("value"))))
                elif attribute.kind == "numeric":
                    summary.numeric[f"{place}.{attribute.name}"] = (
                        order, numeric_train.select(*order, pl.col(attribute.source_column).alias("value")))
        return summary

    def fit_summaries(self, summaries: list["TrainingSummary"]) -> None:
        """Learn the vocabularies and statistics from the summaries of parts of the rows (any order)."""
        options: dict[str, tuple[int, int | None]] = {}
        for _, attribute in self.schema.all_attributes():
            if attribute.kind in ("categorical", "multi_categorical"):
                min_count, max_size = options.get(attribute.vocabulary_name, (attribute.min_count, attribute.max_size))
                options[attribute.vocabulary_name] = (max(min_count, attribute.min_count), max_size or attribute.max_size)
        counts: dict[str, list[pl.DataFrame]] = {}
        numeric: dict[str, tuple[list[str], list[pl.DataFrame]]] = {}
        for summary in summaries:
            for name, parts in summary.counts.items():
                counts.setdefault(name, []).extend(parts)
            for key, (order, frame) in summary.numeric.items():
                numeric.setdefault(key, (order, []))[1].append(frame)
        for place, attribute in self.schema.all_attributes():
            key = f"{place}.{attribute.name}"
            if attribute.kind == "numeric" and key in numeric:
                order, frames = numeric[key]
                train = pl.concat(frames) if len(frames) > 1 else frames[0]
                train = train.sort(order) if order else train  # one sum order, whatever the parts
                self.statistics[key] = numeric_statistics(train["value"], attribute.transform)
        for name in counts:
            min_count, max_size = options[name]
            self.vocabularies[name] = build_vocabulary_from_counts(name, counts[name], min_count, max_size)
        for _, attribute in self.schema.all_attributes():
            if attribute.kind == "hashed":
                self.vocabularies[attribute.vocabulary_name] = Vocabulary(attribute.vocabulary_name, buckets=self.schema.hash_buckets(attribute.vocabulary_name))

    def encode(self, place: str, attribute: Any, frame: pl.DataFrame, report: BuildReport, source: Path | str) -> dict[str, np.ndarray]:
        """Encoded arrays of one attribute over ``frame``'s rows (keys: "values", maybe "offsets")."""
        key = f"{place}.{attribute.name}"
        if attribute.kind in ("categorical", "hashed"):
            values = frame[attribute.source_column]
            report.null(key, values.null_count())
            ids = self.vocabularies[attribute.vocabulary_name].encode(values).to_numpy()
            return {"values": ids.astype(np.int32 if ids.max(initial=0) < 2**31 else np.int64)}
        if attribute.kind == "multi_categorical":
            column = frame[attribute.source_column]
            report.null(key, column.null_count())
            lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            ids = self.vocabularies[attribute.vocabulary_name].encode_lists(column)  # elements of non-null lists
            if len(ids) != offsets[-1]:
                raise DataError(f"{source}: column {attribute.source_column!r}: could not flatten the lists")
            return {"values": ids, "offsets": offsets}
        if attribute.kind == "numeric":
            values, bad = normalize(frame[attribute.source_column], self.statistics[key])
            report.null(key, bad)
            return {"values": values}
        if isinstance(attribute, EmbeddingAttribute) and attribute.table is None:
            column = frame[attribute.source_column]
            lengths = column.list.len() if isinstance(column.dtype, pl.List) else pl.Series([attribute.dim] * len(column))
            wrong = (lengths != attribute.dim) | column.is_null()
            if wrong.any():
                position = int(np.argmax(wrong.to_numpy()))
                raise DataError(
                    f"{source}: column {attribute.source_column!r}, row {int(frame[ROW][position])}: "
                    f"expected a vector of {attribute.dim} floats, got {column[position]!r}"
                )
            # a copy: polars may hand out a read-only view, and the non-finite rows are zeroed below
            matrix = np.array(column.cast(pl.Array(pl.Float32, attribute.dim)).to_numpy(), dtype=np.float32).reshape(-1, attribute.dim)
            bad = ~np.isfinite(matrix).all(axis=1)
            matrix[bad] = 0.0
            report.null(key, int(bad.sum()))
            return {"values": to_stored(matrix, attribute.precision)}  # [rows, dim] or int8 [rows, dim + 4] (store/vector_precision.py)
        return {}  # table-looked-up embeddings are gathered at batch time from the content matrix

    def encode_records(self, place: str, attributes: list, frame: pl.DataFrame, source: Path | str = "<request>",
                       report: BuildReport | None = None) -> dict[str, np.ndarray | Ragged]:
        """Encoded columns of ``attributes`` over ``frame``'s rows, by attribute name: ``[rows]`` arrays,
        ``[rows, dim]`` float32 vectors (as the store gives them back: through its ``precision``), or
        :class:`Ragged` multi-valued ids. Attributes looked up in a side table have no column here
        (they are gathered at batch time)."""
        frame = frame.with_row_index(ROW) if ROW not in frame.columns else frame
        report = report if report is not None else BuildReport()
        out: dict[str, np.ndarray | Ragged] = {}
        for attribute in attributes:
            encoded = self.encode(place, attribute, frame, report, source)
            if encoded and isinstance(attribute, EmbeddingAttribute):
                out[attribute.name] = from_stored(encoded["values"], attribute.precision, attribute.dim, f"{place}.{attribute.name}")[:]
            elif encoded:
                out[attribute.name] = Ragged(encoded["values"].astype(np.int64), encoded["offsets"]) if "offsets" in encoded else encoded["values"]
        return out
