"""Vectors kept at a lower precision in the store: float16, or int8 / int4 with a per-row scale.

An ``embedding`` attribute's per-event column and a content table's rows are stored at the schema's
``precision`` (``float32`` default, ``float16``, ``int8``, ``int4``) and dequantized to float32 when
batches are made. On disk (a list column of ``users.parquet`` / ``examples.parquet``, a
``content__*.npy``) each row is::

    float32   [dim] float32                        4·dim bytes
    float16   [dim] float16                        2·dim bytes
    int8      [dim] int8 codes, then the row's     dim + 4 bytes
              float32 scale as 4 bytes (little-endian)
    int4      [ceil(dim/2)] uint8, two codes per   ceil(dim/2) + 2·ceil(dim/8) bytes
              byte, then one float16 scale per
              8 elements, 2 bytes each (little-endian)

int8 is symmetric per row: ``scale = max|x| / 127`` (0 for an all-zero row), ``code = round(x / scale)``
in ``[-127, 127]``, ``x̂ = code · scale``: every element within ``scale / 2`` of its float32 value.
int4 the same per group of 8 elements (elements ``8g .. 8g+7`` of a row; the last group may be shorter)
with ``scale = max|x| / 7`` rounded to float16 first and codes in ``[-7, 7]``, stored as ``code + 8``
(element ``2j`` in the low nibble of byte ``j``, ``2j+1`` in its high nibble; an odd ``dim`` pads a
zero code). Quantizing a dequantized row gives the same codes again (serving re-encodes
appended events with :func:`round_trip`, and a row read back is what the store holds).

In memory a float32 column stays a numpy array ``[rows, dim]``; a lower precision is a
:class:`StoredVectors`, whose indexing returns dequantized float32 rows like the array would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PRECISIONS = ("float32", "float16", "int8", "int4")
INT8_MAX = 127
INT4_MAX = 7
INT4_GROUP = 8  # elements per int4 scale: per row, a 16-wide vector's largest score change was 1.1e-2 with one scale, 8.8e-3 with two
_SCALE = np.dtype("<f4")  # the int8 row's scale: 4 bytes, little-endian on every machine
_SCALE4 = np.dtype("<f2")  # the int4 row's scale: 2 bytes


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


def int4_groups(dim: int) -> int:
    """Scales per int4 row: one per :data:`INT4_GROUP` elements (the last group may be shorter)."""
    return -(-dim // INT4_GROUP)


def quantize_int4(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows [n, dim]`` (finite) → (``packed [n, ceil(dim/2)]`` uint8, ``scales [n, ceil(dim/8)]`` float16,
    one per group of :data:`INT4_GROUP` elements)."""
    rows = np.asarray(rows, dtype=np.float32)
    n, dim = rows.shape
    groups = int4_groups(dim)
    padded = np.zeros((n, groups * INT4_GROUP), dtype=np.float32)
    padded[:, :dim] = rows
    grouped = padded.reshape(n, groups, INT4_GROUP)
    limit = np.float32(np.finfo(np.float16).max)
    scales = np.minimum(np.abs(grouped).max(axis=2, initial=0.0) / np.float32(INT4_MAX), limit).astype(np.float16)
    wide = scales.astype(np.float32)
    safe = np.where(wide > 0, wide, np.float32(1.0))
    codes = (np.clip(np.rint(grouped / safe[..., None]), -INT4_MAX, INT4_MAX) + 8).astype(np.uint8).reshape(n, -1)  # [1, 15]
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return np.ascontiguousarray(packed[:, : (dim + 1) // 2]), scales


def dequantize_int4(packed: np.ndarray, scales: np.ndarray, dim: int) -> np.ndarray:
    """``packed [..., ceil(dim/2)]`` uint8 and ``scales [..., ceil(dim/8)]`` float16 → float32 ``[..., dim]``."""
    lead = packed.shape[:-1]
    groups = int4_groups(dim)
    codes = np.full((*lead, groups * INT4_GROUP), 8, dtype=np.uint8)
    unpacked = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*lead, -1)
    codes[..., : unpacked.shape[-1]] = unpacked
    values = (codes.astype(np.float32) - 8).reshape(*lead, groups, INT4_GROUP) * np.asarray(scales, dtype=np.float32)[..., None]
    return values.reshape(*lead, -1)[..., :dim]


def to_stored(rows: np.ndarray, precision: str) -> np.ndarray:
    """Float rows ``[n, dim]`` → the on-disk rows of ``precision`` (see the module's doc): float32 or
    float16 ``[n, dim]``, int8 ``[n, dim + 4]`` (codes, then the scale's 4 bytes) or uint8
    ``[n, ceil(dim/2) + 2]`` for int4 (packed codes, then the scale's 2 bytes)."""
    _check(precision)
    rows = np.asarray(rows, dtype=np.float32)
    if precision == "float32":
        return rows
    if precision == "float16":
        return rows.astype(np.float16)
    if precision == "int4":
        packed, scales = quantize_int4(rows)
        return np.concatenate([packed, scales.astype(_SCALE4).view(np.uint8).reshape(len(rows), -1)], axis=1)
    codes, scales = quantize_int8(rows)
    return np.concatenate([codes, scales.astype(_SCALE).view(np.int8).reshape(-1, 4)], axis=1)


def stored_width(dim: int, precision: str) -> int:
    """Elements per stored row: ``dim``, ``dim + 4`` for int8 (its scale's bytes), ``ceil(dim/2) +
    2·ceil(dim/8)`` for int4."""
    if precision == "int4":
        return (dim + 1) // 2 + 2 * int4_groups(dim)
    return dim + 4 if precision == "int8" else dim


STORED_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "int8": np.dtype(np.int8), "int4": np.dtype(np.uint8)}


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
    if precision == "int4":
        width = (dim + 1) // 2
        scales = np.ascontiguousarray(stored[:, width:]).view(_SCALE4).reshape(len(stored), int4_groups(dim)).astype(np.float16)
        return StoredVectors(np.ascontiguousarray(stored[:, :width]), scales, dim)
    scales = np.ascontiguousarray(stored[:, dim:]).view(_SCALE).reshape(-1).astype(np.float32)
    return StoredVectors(np.ascontiguousarray(stored[:, :dim]), scales)


def round_trip(rows: np.ndarray, precision: str) -> np.ndarray:
    """What the store gives back for float ``rows [n, dim]`` kept at ``precision`` (float32)."""
    stored = to_stored(rows, precision)
    vectors = from_stored(stored, precision, np.asarray(rows).shape[1], "rows")
    return vectors if isinstance(vectors, np.ndarray) else vectors[:]


@dataclass(frozen=True)
class StoredVectors:
    """Rows kept at a lower precision: ``codes [n, dim]`` float16 (``scales`` None), int8 with
    ``scales [n]`` float32, or int4 (``dim`` set): ``codes [n, ceil(dim/2)]`` packed uint8 with ``scales
    [n, ceil(dim/8)]`` float16. Indexing (``[rows]``, ``[a:b]``, ``[i]``) returns dequantized float32, like indexing
    the float32 array would; ``nbytes`` is what it holds."""

    codes: np.ndarray
    scales: np.ndarray | None
    dim: int | None = None  # int4 only: the rows' width (the packed codes hold ceil(dim/2) bytes)

    def __getitem__(self, index: Any) -> np.ndarray:
        if self.scales is None:
            return self.codes[index].astype(np.float32)
        if self.dim is not None:
            return dequantize_int4(self.codes[index], self.scales[index], self.dim)
        return dequantize_int8(self.codes[index], self.scales[index])

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape if self.dim is None else (len(self.codes), self.dim)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        """The dtype rows are read as (float32)."""
        return np.dtype(np.float32)

    @property
    def precision(self) -> str:
        if self.dim is not None:
            return "int4"
        return "float16" if self.scales is None else "int8"

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + (0 if self.scales is None else self.scales.nbytes)
