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

MISSING_ID = 0
OOV_ID = 1
FIRST_KNOWN_ID = 2


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of int64 values (``[n] -> [n]`` uint64)."""
    x = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
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
        ids = (codes % np.uint64(buckets)).astype(np.int64) + 1
        return pl.Series(np.where(values.is_null().to_numpy(), MISSING_ID, ids))
    unique = values.drop_nulls().unique().sort()
    if unique.dtype.is_integer():
        codes = splitmix64(unique.cast(pl.Int64).to_numpy())
    else:
        codes = hash_strings(unique.cast(pl.String).to_list())
    ids = (codes % np.uint64(buckets)).astype(np.int64) + 1
    mapping = pl.DataFrame({"value": unique, "id": ids})
    joined = pl.DataFrame({"value": values}).join(mapping, on="value", how="left", maintain_order="left")
    return joined["id"].fill_null(MISSING_ID).cast(pl.Int64)


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
        is_null = values.is_null().to_numpy()
        if not self.values:
            return pl.Series(np.where(is_null, MISSING_ID, OOV_ID).astype(np.int64))
        known = pl.Series("value", self.values)
        if values.dtype != known.dtype:
            values, known = values.cast(pl.String), known.cast(pl.String)
        ids = np.arange(FIRST_KNOWN_ID, FIRST_KNOWN_ID + len(known), dtype=np.int64)
        mapping = pl.DataFrame({"value": known, "id": ids})
        joined = pl.DataFrame({"value": values}).join(mapping, on="value", how="left", maintain_order="left")
        encoded = joined["id"].fill_null(OOV_ID)
        return pl.Series(np.where(is_null, MISSING_ID, encoded.to_numpy()).astype(np.int64))

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
