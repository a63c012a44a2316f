"""Vocabularies, id hashing and numeric statistics: the encodings learned from the training period.

Encoded ids of categorical (and multi-categorical) attributes:
    0 = missing (null), 1 = out of vocabulary, 2.. = known values ordered by descending training
    count, ties by value. ``num_embeddings = len(values) + 2``.
Encoded ids of hashed attributes:
    0 = missing, 1 + (hash64(value) mod buckets) otherwise. ``num_embeddings = buckets + 1``. The hash
    is eventrec's own (splitmix64 for integers, blake2b for strings), stable across library versions,
    so a served model hashes an unseen ad id exactly as training would have.
Numeric attributes: ``(transform(x) - mean) / std`` with mean and std over training-period rows;
    null, NaN and infinite values become 0.0 (the training mean) and are counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

MISSING_ID = 0
OOV_ID = 1
FIRST_KNOWN_ID = 2


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of int64 values (``[n] -> [n]`` uint64)."""
    x = values.astype(np.uint64, copy=True)
    shifted = np.empty_like(x)  # in-place steps: two arrays in all, however long the input
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        np.right_shift(x, np.uint64(30), out=shifted)
        x ^= shifted
        x *= np.uint64(0xBF58476D1CE4E5B9)
        np.right_shift(x, np.uint64(27), out=shifted)
        x ^= shifted
        x *= np.uint64(0x94D049BB133111EB)
        np.right_shift(x, np.uint64(31), out=shifted)
        x ^= shifted
    return x


def hash_strings(values: list[str]) -> np.ndarray:
    """blake2b-64 of each UTF-8 string (``[n] -> [n]`` uint64)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") for v in values], dtype=np.uint64
    )


def hashed_ids(values: pl.Series, buckets: int) -> pl.Series:
    """Hashed encoding of a Series of ints or strings; nulls → 0 (missing)."""
    if values.dtype.is_integer():  # hashing every value is cheaper than a join with the distinct ones
        codes = splitmix64(values.cast(pl.Int64).fill_null(0).to_numpy())
        codes %= np.uint64(buckets)
        ids = codes.view(np.int64)  # < buckets, so the same values
        ids += 1
        if values.null_count():
            ids[values.is_null().to_numpy()] = MISSING_ID
        return pl.Series(ids)
    unique = values.drop_nulls().unique().sort()
    if unique.dtype.is_integer():
        codes = splitmix64(unique.cast(pl.Int64).to_numpy())
    else:
        codes = hash_strings(unique.cast(pl.String).to_list())
    ids = (codes % np.uint64(buckets)).astype(np.int64) + 1
    mapping = pl.DataFrame({"value": unique, "id": ids})
    joined = pl.DataFrame({"value": values}).join(mapping, on="value", how="left", maintain_order="left")
    return joined["id"].fill_null(MISSING_ID).cast(pl.Int64)


def _integer_lookup(values: pl.Series, known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``ids[i]`` where ``values == known[i]``, else OOV (``values``: integers other than UInt64, no
    nulls). A dense table indexed by ``value - min(known)`` when the known values span a small range
    (ids, categories, hours); otherwise a hash lookup. Both are several times faster than a join,
    and than a binary search (``np.searchsorted``) over the sorted known values, on millions of rows.
    """
    values = values.cast(pl.Int64)
    lo, hi = int(known.min()), int(known.max())
    if hi - lo < max(1 << 16, 8 * len(known)) and hi - lo < 1 << 26:
        table = np.full(hi - lo + 1, OOV_ID, dtype=np.int64)
        table[known - lo] = ids
        raw = values.to_numpy()
        inside = (raw >= lo) & (raw <= hi)
        return np.where(inside, table[np.where(inside, raw - lo, 0)], OOV_ID)
    return values.replace_strict(pl.Series(known), pl.Series(ids), default=OOV_ID, return_dtype=pl.Int64).to_numpy()


@dataclass
class Vocabulary:
    """A categorical vocabulary (``values``) or a hashed space (``buckets``)."""

    name: str
    values: list = field(default_factory=list)
    buckets: int | None = None

    @property
    def hashed(self) -> bool:
        return self.buckets is not None

    @property
    def num_embeddings(self) -> int:
        return self.buckets + 1 if self.buckets is not None else len(self.values) + FIRST_KNOWN_ID

    def encode(self, values: pl.Series) -> pl.Series:
        """Raw values (any length) → int64 ids; see the module docstring for the id layout."""
        if self.buckets is not None:
            return hashed_ids(values, self.buckets)
        is_null = values.is_null().to_numpy() if values.null_count() else np.zeros(len(values), dtype=bool)
        if not self.values:
            return pl.Series(np.where(is_null, MISSING_ID, OOV_ID).astype(np.int64))
        known = pl.Series("value", self.values)
        ids = np.arange(FIRST_KNOWN_ID, FIRST_KNOWN_ID + len(known), dtype=np.int64)
        if values.dtype.is_integer() and values.dtype != pl.UInt64 and known.dtype == pl.Int64:
            # integers compare as integers (the same matches as their decimal strings would)
            encoded = _integer_lookup(values.fill_null(0), known.to_numpy(), ids)
        else:
            if values.dtype != known.dtype:
                values, known = values.cast(pl.String), known.cast(pl.String)
            if values.dtype == pl.String:  # a hash lookup, several times faster than a join
                encoded = values.replace_strict(known, pl.Series(ids), default=OOV_ID, return_dtype=pl.Int64).to_numpy()
            else:
                mapping = pl.DataFrame({"value": known, "id": ids})
                joined = pl.DataFrame({"value": values}).join(mapping, on="value", how="left", maintain_order="left")
                encoded = joined["id"].fill_null(OOV_ID).to_numpy()
        encoded = encoded.astype(np.int64, copy=False)
        if is_null.any():
            encoded = np.where(is_null, MISSING_ID, encoded)
        return pl.Series(encoded)

    def encode_lists(self, lists: pl.Series) -> np.ndarray:
        """The ids (``[n]`` int32) of the elements of a List column's non-null lists, in order.

        The same ids as :meth:`encode` of the flattened elements.
        """
        inner = lists.dtype.inner if isinstance(lists.dtype, pl.List) else None
        if inner == pl.String or inner == pl.Categorical:
            # strings → categorical codes (a cast inside the lists: no flat copy of the strings), the
            # few distinct values encoded as usual, then a table lookup by code
            flat = lists.cast(pl.List(pl.Categorical)).explode(empty_as_null=False, keep_nulls=False)
            codes = flat.to_physical()
            if len(flat) == 0:
                return np.zeros(0, dtype=np.int32)
            distinct = flat.unique().drop_nulls()
            table = np.full(int(distinct.to_physical().max() or 0) + 1, OOV_ID, dtype=np.int32)
            if len(distinct):
                table[distinct.to_physical().to_numpy()] = self.encode(distinct.cast(pl.String)).to_numpy()
            ids = table[codes.fill_null(0).to_numpy()]
            if codes.null_count():
                ids[codes.is_null().to_numpy()] = MISSING_ID
            return ids
        if inner is not None:
            flat = lists.explode(empty_as_null=False, keep_nulls=False)
        else:
            arrow = lists.to_arrow()
            if isinstance(arrow, pa.ChunkedArray):
                arrow = arrow.combine_chunks()
            flat = pl.Series(arrow.flatten())
        return self.encode(flat).to_numpy().astype(np.int32)

    def to_json(self) -> dict:
        if self.buckets is not None:
            return {"kind": "hashed", "buckets": self.buckets}
        return {"kind": "vocabulary", "values": self.values, "num_embeddings": self.num_embeddings}

    @classmethod
    def from_json(cls, name: str, data: dict) -> "Vocabulary":
        if data["kind"] == "hashed":
            return cls(name, buckets=int(data["buckets"]))
        return cls(name, values=list(data["values"]))


def build_vocabulary(name: str, training_values: pl.Series, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
    """Values seen in training at least ``min_count`` times, by descending count then value."""
    counts = (
        pl.DataFrame({"value": training_values.drop_nulls()})
        .group_by("value")
        .len()
        .filter(pl.col("len") >= min_count)
        .sort(["len", "value"], descending=[True, False])
    )
    if max_size is not None:
        counts = counts.head(max_size)
    values = counts["value"].to_list()
    return Vocabulary(name, values=values)


def value_counts(values: pl.LazyFrame) -> pl.DataFrame:
    """``values`` (one column, ``value``) → its non-null distinct values with their counts (``len``)."""
    return values.drop_nulls().group_by("value").agg(pl.len().cast(pl.Int64).alias("len")).collect()


def build_vocabulary_from_counts(name: str, counts: list[pl.DataFrame], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
    """:func:`build_vocabulary` of the concatenated training values, from per-part :func:`value_counts`
    (summed per value): the same vocabulary, without holding every training value at once."""
    merged = (
        pl.concat(counts)
        .group_by("value")
        .agg(pl.col("len").sum())
        .filter(pl.col("len") >= min_count)
        .sort(["len", "value"], descending=[True, False])
    )
    if max_size is not None:
        merged = merged.head(max_size)
    return Vocabulary(name, values=merged["value"].to_list())


@dataclass(frozen=True)
class NumericStatistics:
    """Training-period mean and std of a (transformed) numeric attribute."""

    mean: float
    std: float
    transform: str

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "transform": self.transform}


def transformed(values: pl.Series, transform: str) -> np.ndarray:
    """Float64 values after the transform, with null/NaN/inf as NaN."""
    x = values.cast(pl.Float64).fill_null(np.nan).to_numpy().copy()
    x[~np.isfinite(x)] = np.nan
    if transform == "log1p":
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.sign(x) * np.log1p(np.abs(x))
    return x


def numeric_statistics(training_values: pl.Series, transform: str) -> NumericStatistics:
    x = transformed(training_values, transform)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return NumericStatistics(0.0, 1.0, transform)
    std = float(finite.std())
    return NumericStatistics(float(finite.mean()), std if std > 1e-12 else 1.0, transform)


def normalize(values: pl.Series, stats: NumericStatistics) -> tuple[np.ndarray, int]:
    """Standardised float32 values and the number of null/NaN/inf values set to 0.0."""
    x = (transformed(values, stats.transform) - stats.mean) / stats.std
    bad = ~np.isfinite(x)
    x[bad] = 0.0
    return x.astype(np.float32), int(bad.sum())
