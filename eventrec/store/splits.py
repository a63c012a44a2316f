"""The time splits of a build: boundaries resolved from the schema, the split of each impression,
and the refusal of a split left without impressions."""

from __future__ import annotations

import numpy as np

from eventrec.schema import Schema, boundary_to_seconds
from eventrec.store.layout import SPLIT_NAMES
from eventrec.store.raw_logs import DataError


def needs_impression_times(schema: Schema) -> bool:
    """Whether the boundaries are fractions of the impressions (resolved from all their times)."""
    return schema.splits.train_end is None


def resolve_splits(schema: Schema, impression_times: np.ndarray | None) -> tuple[int, int]:
    """``(train_end, validation_end)`` in seconds: the schema's time boundaries, or the impression
    times at its fractions (``impression_times [N]``, any order; unused with time boundaries)."""
    splits = schema.splits
    if splits.train_end is not None:
        train_end, validation_end = boundary_to_seconds(splits.train_end), boundary_to_seconds(splits.validation_end)
        if validation_end < train_end:
            raise DataError(f"schema splits: validation_end ({validation_end}) is before train_end ({train_end})")
        return train_end, validation_end
    ordered = np.sort(impression_times)
    n = len(ordered)
    train_end = int(ordered[min(n - 1, int(n * splits.train_fraction))])
    validation_end = int(ordered[min(n - 1, int(n * (splits.train_fraction + splits.validation_fraction)))])
    return train_end, validation_end


def split_of(times: np.ndarray, boundaries: tuple[int, int]) -> np.ndarray:
    """``[N]`` int8 split (0 train, 1 validation, 2 test) of impressions at ``times [N]``."""
    times = np.asarray(times, dtype=np.int64)
    return np.where(times < boundaries[0], 0, np.where(times < boundaries[1], 1, 2)).astype(np.int8)


def check_splits(schema: Schema, sizes: np.ndarray, boundaries: tuple[int, int], allow_empty_splits: bool) -> None:
    """Refuse a split without impressions (``sizes [3]``: impressions per split) when the schema's
    boundaries are timestamps beyond the data: training would have nothing to validate or test on.
    Fraction splits are resolved inside the data and are empty only with a handful of impressions
    (the next-item benchmarks then assign their own splits after the build): allowed.
    ``allow_empty_splits`` is the way out for time boundaries."""
    empty = [name for name, size in zip(SPLIT_NAMES, sizes) if size == 0]
    if empty and not allow_empty_splits and schema.splits.train_end is not None:
        raise DataError(
            f"schema splits ({schema.splits.model_dump(exclude_none=True)}; resolved train_end={boundaries[0]}, "
            f"validation_end={boundaries[1]}): no impression in the {' and '.join(empty)} split(s) "
            f"({', '.join(f'{n} {c}' for n, c in zip(SPLIT_NAMES, np.asarray(sizes).tolist()))}); move the boundaries inside the data "
            "or pass allow_empty_splits (--allow-empty-splits)"
        )
