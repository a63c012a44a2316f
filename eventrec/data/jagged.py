"""A jagged tensor: variable-length rows as ``values [sum(N_i), ...]`` plus ``offsets [B+1]``.

Offsets are int64 and start at 0; ``max_len`` is cached so that conversions never sync to read it.
Converts in at most one copy to a padded tensor with a mask, to PyTorch's jagged nested tensor, or
to the ``cu_seqlens`` of varlen attention kernels (the offsets themselves, as int32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class JaggedTensor:
    """``values [sum(N_i), *feature_shape]``, ``offsets [B+1]`` int64, ``max_len = max N_i``."""

    values: torch.Tensor
    offsets: torch.Tensor
    max_len: int

    @classmethod
    def from_numpy(cls, values: np.ndarray, lengths: np.ndarray) -> "JaggedTensor":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(offsets), int(lengths.max(initial=0)))

    @classmethod
    def from_lengths(cls, values: torch.Tensor, lengths: torch.Tensor) -> "JaggedTensor":
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(lengths.to(torch.int64), 0, out=offsets[1:])
        return cls(values, offsets, int(lengths.max()) if len(lengths) else 0)

    @property
    def batch_size(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        """``[B]`` int64."""
        return self.offsets[1:] - self.offsets[:-1]

    def row_ids(self) -> torch.Tensor:
        """``[sum(N_i)]`` int64: the row each value belongs to."""
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.offsets.device), self.lengths(), output_size=len(self.values))

    def positions(self) -> torch.Tensor:
        """``[sum(N_i)]`` int64: each value's position within its row (0..N_i-1)."""
        return torch.arange(len(self.values), device=self.offsets.device) - self.offsets[:-1][self.row_ids()]

    def select_rows(self, rows: torch.Tensor) -> "JaggedTensor":
        """Rows ``rows [R]`` (int64, any order, repeats allowed) as a new jagged tensor: values
        ``[sum of their N_i, *feature_shape]``, offsets ``[R+1]``."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64, device=self.offsets.device)
        torch.cumsum(lengths, 0, out=offsets[1:])
        total = int(offsets[-1])
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=self.offsets.device), lengths, output_size=total)
        index = starts[row_of] + torch.arange(total, device=self.offsets.device) - offsets[:-1][row_of]
        return JaggedTensor(self.values[index], offsets, int(lengths.max()) if len(rows) else 0)

    def to_padded(self, padding_value: float = 0.0, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, *feature_shape]`` padded values and ``[B, L]`` bool mask (True = real), L = max_len.

        The values are right-aligned at position 0 (row i fills ``[:N_i]``).
        """
        length = self.max_len if max_len is None else max_len
        shape = (self.batch_size, length, *self.values.shape[1:])
        padded = torch.full(shape, padding_value, dtype=self.values.dtype, device=self.values.device)
        positions = self.positions()
        keep = positions < length
        rows = self.row_ids()
        padded[rows[keep], positions[keep]] = self.values[keep]
        mask = torch.arange(length, device=self.offsets.device)[None, :] < self.lengths()[:, None]
        return padded, mask

    def to_nested(self) -> torch.Tensor:
        """A ``torch.jagged`` nested tensor sharing ``values`` (``[B, j, *feature_shape]``)."""
        return torch.nested.nested_tensor_from_jagged(self.values, self.offsets, max_seqlen=max(self.max_len, 1))

    def cu_seqlens(self) -> torch.Tensor:
        """The offsets as int32, the ``cu_seqlens`` of varlen attention kernels."""
        return self.offsets.to(torch.int32)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "JaggedTensor":
        return JaggedTensor(self.values.to(device, non_blocking=non_blocking), self.offsets.to(device, non_blocking=non_blocking), self.max_len)

    def pin_memory(self) -> "JaggedTensor":
        return JaggedTensor(self.values.pin_memory(), self.offsets.pin_memory(), self.max_len)
