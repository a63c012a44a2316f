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

from eventrec.batching import make_batch
from eventrec.store import EventStore


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
    ):
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

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (call before iterating, like DistributedSampler)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return self.examples
        rng = np.random.default_rng([self.seed, self.epoch])
        return self.examples[rng.permutation(len(self.examples))]

    def __len__(self) -> int:
        full, rest = divmod(len(self.examples), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def batch_indices(self, i: int) -> np.ndarray:
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

    ``batch_fn`` is :func:`eventrec.batching.make_batch` for the sequence model and
    :class:`eventrec.dlrm_features.DlrmFeatureBuilder` for the DLRM baseline.

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
