"""Vectors kept at a lower precision in the store: float16, or int8 with a per-row scale.

An ``embedding`` attribute's per-event column and a content table's rows are stored at the schema's
``precision`` (``float32`` default, ``float16``, ``int8``) and dequantized to float32 when batches
are made. On disk (a list column of ``users.parquet`` / ``examples.parquet``, a ``content__*.npy``)
each row is::

    float32   [dim] float32                        4·dim bytes
    float16   [dim] float16                        2·dim bytes
    int8      [dim] int8 codes, then the row's     dim + 4 bytes
              float32 scale as 4 bytes (little-endian)

int8 is symmetric per row: ``scale = max|x| / 127`` (0 for an all-zero row), ``code = round(x / scale)``
in ``[-127, 127]``, ``x̂ = code · scale``: every element within ``scale / 2`` of its float32 value.
Quantizing a dequantized row gives the same codes again (serving re-encodes appended events with
:func:`round_trip`, and a row read back is what the store holds).

In memory a float32 column stays a numpy array ``[rows, dim]``; a lower precision is a
:class:`StoredVectors`, whose indexing returns dequantized float32 rows like the array would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PRECISIONS = ("float32", "float16", "int8")
INT8_MAX = 127
_SCALE = np.dtype("<f4")  # the int8 row's scale: 4 bytes, little-endian on every machine


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def quantize_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows [n, dim]`` (finite) → (``codes [n, dim]`` int8 in [-127, 127], ``scales [n]`` float32)."""
    rows = np.asarray(rows, dtype=np.float32)
    scales = (np.abs(rows).max(axis=1, initial=0.0) / np.float32(INT8_MAX)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    codes = np.clip(np.rint(rows / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``codes [..., dim]`` int8 and ``scales [...]`` float32 → float32 ``[..., dim]`` (``code · scale``)."""
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[..., None]


def to_stored(rows: np.ndarray, precision: str) -> np.ndarray:
    """Float rows ``[n, dim]`` → the on-disk rows of ``precision`` (see the module's doc): float32 or
    float16 ``[n, dim]``, or int8 ``[n, dim + 4]`` (codes, then the scale's 4 bytes)."""
    _check(precision)
    rows = np.asarray(rows, dtype=np.float32)
    if precision == "float32":
        return rows
    if precision == "float16":
        return rows.astype(np.float16)
    codes, scales = quantize_int8(rows)
    return np.concatenate([codes, scales.astype(_SCALE).view(np.int8).reshape(-1, 4)], axis=1)


def stored_width(dim: int, precision: str) -> int:
    """Elements per stored row: ``dim``, or ``dim + 4`` for int8 (its scale's bytes)."""
    return dim + 4 if precision == "int8" else dim


STORED_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "int8": np.dtype(np.int8)}


def from_stored(stored: np.ndarray, precision: str, dim: int, field: str) -> "np.ndarray | StoredVectors":
    """On-disk rows ``[n, width]`` → a float32 array (``float32``) or a :class:`StoredVectors`.
    A dtype or width that is not ``precision``'s raises a ValueError naming ``field``."""
    _check(precision)
    expected = (STORED_DTYPES[precision], stored_width(dim, precision))
    if stored.ndim != 2 or (stored.dtype, stored.shape[1]) != expected:
        raise ValueError(f"{field}: stored as {stored.dtype} rows of {stored.shape[1:] or 'scalars'}, but the schema says precision "
                         f"{precision!r}, dim {dim} ({expected[0]} rows of {expected[1]}); rebuild the store with this schema")
    if precision == "float32":
        return stored
    if precision == "float16":
        return StoredVectors(np.ascontiguousarray(stored), None)
    scales = np.ascontiguousarray(stored[:, dim:]).view(_SCALE).reshape(-1).astype(np.float32)
    return StoredVectors(np.ascontiguousarray(stored[:, :dim]), scales)


def round_trip(rows: np.ndarray, precision: str) -> np.ndarray:
    """What the store gives back for float ``rows [n, dim]`` kept at ``precision`` (float32)."""
    stored = to_stored(rows, precision)
    vectors = from_stored(stored, precision, np.asarray(rows).shape[1], "rows")
    return vectors if isinstance(vectors, np.ndarray) else vectors[:]


@dataclass(frozen=True)
class StoredVectors:
    """Rows kept at a lower precision: ``codes [n, dim]`` float16 (``scales`` None) or int8 with
    ``scales [n]`` float32. Indexing (``[rows]``, ``[a:b]``, ``[i]``) returns dequantized float32,
    like indexing the float32 array would; ``nbytes`` is what it holds."""

    codes: np.ndarray
    scales: np.ndarray | None

    def __getitem__(self, index: Any) -> np.ndarray:
        if self.scales is None:
            return self.codes[index].astype(np.float32)
        return dequantize_int8(self.codes[index], self.scales[index])

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        """The dtype rows are read as (float32)."""
        return np.dtype(np.float32)

    @property
    def precision(self) -> str:
        return "float16" if self.scales is None else "int8"

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + (0 if self.scales is None else self.scales.nbytes)
