"""The per-model-version cache of embedded candidates (item embeddings and match queries)."""

from __future__ import annotations

import threading

import numpy as np
import torch


class CandidateCache:
    """Item embeddings ``[Q_item]`` and match queries per distinct candidate record, for one model version.

    Keys are 64-bit hashes of the candidate's raw item-attribute values (``polars.DataFrame.hash_rows``,
    fixed seeds), looked up with one ``searchsorted`` per request. Bounded by ``max_entries``: when
    full, it is cleared (simple, and a miss only costs one embedding lookup)."""

    def __init__(self, max_entries: int = 1_000_000):
        self.max_entries = max_entries
        self.keys = np.zeros(0, dtype=np.uint64)
        self.rows = torch.zeros(0, 0)
        self.ids = torch.zeros(0, 0, dtype=torch.int64)  # with candidate_search: the match vocabularies' ids [entries, V]
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, positions in ``rows``)."""
        if not len(self.keys):
            return np.zeros(len(hashes), dtype=bool), np.zeros(len(hashes), dtype=np.int64)
        pos = np.searchsorted(self.keys, hashes).clip(max=len(self.keys) - 1)
        return self.keys[pos] == hashes, pos

    def insert(self, hashes: np.ndarray, rows: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Add rows ``[n, Q]`` (and ids ``[n, V]``) under their hashes."""
        hashes, first = np.unique(hashes, return_index=True)
        rows = rows[torch.from_numpy(first)]
        ids = ids[torch.from_numpy(first)] if ids is not None else torch.zeros(len(rows), 0, dtype=torch.int64)
        if len(self.keys) + len(hashes) > self.max_entries or self.rows.shape[-1] != rows.shape[-1] or self.ids.shape[-1] != ids.shape[-1]:
            self.keys, self.rows, self.ids = np.zeros(0, dtype=np.uint64), rows[:0], ids[:0]
        keys = np.concatenate([self.keys, hashes])
        order = torch.from_numpy(np.argsort(keys, kind="stable"))
        self.keys, self.rows, self.ids = keys[order.numpy()], torch.cat([self.rows, rows])[order], torch.cat([self.ids, ids])[order]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.rows.numel() * self.rows.element_size() + self.ids.numel() * self.ids.element_size()
