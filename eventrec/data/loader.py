"""A DataLoader over a store's split that gathers histories at batch time.

The dataset is indexed by *batch number*: a seeded permutation (per epoch) of the split's examples
is cut into batches, and each worker gathers whole batches from the in-memory store (workers fork
and share the store's arrays copy-on-write). ``pin_memory`` works because the batch types implement
``pin_memory()``. The same seed and epoch give the same batches, whatever the number of workers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from eventrec.data.gather import make_batch
from eventrec.store.reader import EventStore


class BatchDataset(Dataset):
    """Batches of a split: ``dataset[i]`` is the i-th batch of the current epoch's order."""

    def __init__(
        self,
        store: EventStore,
        split: str | np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        batch_fn: Callable[[EventStore, np.ndarray], object] = make_batch,
        groups: np.ndarray | None = None,
    ):
        """``groups`` (optional, ``[num_examples]`` of the split, e.g. request ids): keep each group's
        examples together and in one batch (shuffling permutes whole groups; a batch holds whole groups
        and about ``batch_size`` examples), as a per-request (listwise) loss needs."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.examples = store.split_indices(split) if isinstance(split, str) else np.asarray(split, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.batch_fn = batch_fn
        self.epoch = 0
        self.group_starts: np.ndarray | None = None  # [G+1] group boundaries in self.examples
        self._grouped_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != len(self.examples):
                raise ValueError(f"groups has {len(groups)} entries for {len(self.examples)} examples")
            by_group = np.argsort(groups, kind="stable")
            self.examples = self.examples[by_group]
            sorted_groups = groups[by_group]
            self.group_starts = np.concatenate([[0], np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1, [len(groups)]])

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if self.group_starts is not None:
            return self._grouped_order()[0]
        if not self.shuffle:
            return self.examples
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.examples[rng.permutation(len(self.examples))]

    def _grouped_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Examples with whole groups permuted, and the batch boundaries ``[num_batches + 1]`` (cached per epoch)."""
        if self._grouped_cache is not None and self._grouped_cache[0] == self.epoch:
            return self._grouped_cache[1], self._grouped_cache[2]
        starts = self.group_starts
        sizes = np.diff(starts)
        groups = np.arange(len(sizes))
        if self.shuffle:
            groups = np.random.default_rng([self.seed, self.epoch]).permutation(len(sizes))
        order = self.examples[np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])] if len(groups) else self.examples[:0]
        ends = np.cumsum(sizes[groups])  # example count after each group
        # a group joins the batch in whose batch_size window it starts
        window = (ends - sizes[groups]) // self.batch_size
        bounds = np.concatenate([[0], ends[np.flatnonzero(np.diff(window))], ends[-1:]]).astype(np.int64)
        if self.drop_last and len(bounds) > 1 and bounds[-1] - bounds[-2] < self.batch_size:
            bounds = bounds[:-1]
        self._grouped_cache = (self.epoch, order, bounds)
        return order, bounds

    def __len__(self) -> int:
        if self.group_starts is not None:
            return len(self._grouped_order()[1]) - 1
        full, rest = divmod(len(self.examples), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def batch_indices(self, i: int) -> np.ndarray:
        if self.group_starts is not None:
            order, bounds = self._grouped_order()
            return order[bounds[i] : bounds[i + 1]]
        order = self.order()
        return order[i * self.batch_size : (i + 1) * self.batch_size]

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        index = self.batch_indices(i)
        return self.batch_fn(self.store, index)


def _identity(batch):
    return batch


def make_loader(
    store: EventStore,
    split: str | np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    batch_fn: Callable[[EventStore, np.ndarray], object] = make_batch,
) -> DataLoader:
    """A DataLoader yielding ``batch_fn(store, indices)`` batches (default :class:`EventBatch`) of a split.

    ``batch_fn`` is :func:`eventrec.data.gather.make_batch` for the sequence model and
    :class:`eventrec.data.dlrm_features.DlrmFeatureBuilder` for the DLRM baseline.

    Call ``loader.dataset.set_epoch(e)`` before each epoch to reshuffle deterministically.
    """
    dataset = BatchDataset(store, split, batch_size, shuffle, seed, drop_last, batch_fn)
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=_identity,
        persistent_workers=False,
    )
