"""Small helpers for jagged batches: ``values [sum(N_i), ...]`` plus ``offsets [B+1]`` (int64, from 0).

Everything here runs on the tensors' own device without reading values back to the host, except where
a docstring says it does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lengths_from_offsets(offsets: Tensor) -> Tensor:
    """``[B+1]`` offsets -> ``[B]`` lengths (same dtype and device)."""
    return offsets[1:] - offsets[:-1]


def gather_rows(x: Tensor, index: Tensor, dim: int = 0) -> Tensor:
    """``x`` gathered along ``dim`` by an integer ``index`` of any shape: ``x[index]`` for ``dim=0``
    (``[T, *rest]`` by ``[G, L]`` -> ``[G, L, *rest]``).

    The same values as advanced indexing, through ``index_select``: its backward is an ``index_add``,
    several times faster on the CPU than the accumulating ``index_put`` that advanced indexing's
    backward runs (tested against advanced indexing in ``tests/ops/test_jagged_helpers.py``).
    """
    picked = x.index_select(dim, index.reshape(-1))
    return picked.view(*x.shape[:dim], *index.shape, *x.shape[dim + 1 :])


def select_rows(x: Tensor, mask: Tensor) -> Tensor:
    """``x[mask]`` for a boolean ``mask`` over the leading dims of ``x``, with ``index_select``'s
    fast backward (see :func:`gather_rows`): ``[G, L, *rest]`` by ``[G, L]`` -> ``[count, *rest]``."""
    flat = x.reshape(-1, *x.shape[mask.dim() :])
    return flat.index_select(0, mask.reshape(-1).nonzero().squeeze(1))


def check_offsets(offsets: Tensor, total: int) -> None:
    """Cheap shape checks on offsets (no device sync). Raises ValueError on a malformed tensor."""
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be 1-D [B+1], got shape {tuple(offsets.shape)}")
    if offsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"offsets must be int64 (or int32), got {offsets.dtype}")
    if offsets.device.type == "cpu" and offsets.numel() > 0:
        if int(offsets[0]) != 0 or int(offsets[-1]) != total:
            raise ValueError(f"offsets must start at 0 and end at {total}, got {int(offsets[0])}..{int(offsets[-1])}")


def block_table(offsets: Tensor, block: int, total_rows: int) -> tuple[Tensor, Tensor]:
    """Work list of (sequence, block) pairs for a kernel whose programs each take ``block`` rows.

    Sequences are listed longest first, and within a sequence the last block first, so the most
    expensive programs start first (better load balance on skewed lengths). Computed on the device
    with no host sync: the list has a fixed length ``total_rows // block + B``, an upper bound on
    ``sum(ceil(N_i / block))``, and entries past the real work have sequence ``-1``.

    Args:
        offsets: ``[B+1]`` int64 row offsets.
        block: rows per program.
        total_rows: ``offsets[-1]`` as a Python int (the values' first dimension).

    Returns:
        ``(seq, blk)``: two int32 ``[total_rows // block + B]`` tensors.
    """
    device = offsets.device
    num_seqs = offsets.numel() - 1
    width = total_rows // block + num_seqs
    if num_seqs == 0 or width == 0:
        empty = torch.full((max(width, 1),), -1, dtype=torch.int32, device=device)
        return empty, torch.zeros_like(empty)
    lengths = lengths_from_offsets(offsets).to(torch.int64)
    nblk = (lengths + block - 1) // block
    order = torch.argsort(lengths, descending=True, stable=True)
    nblk_sorted = nblk[order]
    ends = torch.cumsum(nblk_sorted, 0)
    starts = ends - nblk_sorted
    work = torch.arange(width, device=device, dtype=torch.int64)
    slot = torch.searchsorted(ends, work, right=True)
    valid = slot < num_seqs
    slot_c = slot.clamp(max=num_seqs - 1)
    blk = nblk_sorted[slot_c] - 1 - (work - starts[slot_c])
    seq = torch.where(valid, order[slot_c], torch.full_like(slot_c, -1))
    blk = torch.where(valid, blk, torch.zeros_like(blk))
    return seq.to(torch.int32).contiguous(), blk.to(torch.int32).contiguous()


def padded_index(offsets: Tensor, seq_ids: Tensor, pad_len: int) -> tuple[Tensor, Tensor]:
    """Row indices that gather a jagged tensor into a padded ``[G, pad_len]`` layout.

    Args:
        offsets: ``[B+1]`` int64.
        seq_ids: ``[G]`` int64, the sequences to gather (any order).
        pad_len: padded length, at least the longest of those sequences.

    Returns:
        ``(index, valid)``: int64 ``[G, pad_len]`` row indices (clamped to a valid row where padded,
        0 when the whole batch is empty) and bool ``[G, pad_len]`` true on real rows.
    """
    starts = offsets[seq_ids]
    lengths = offsets[seq_ids + 1] - starts
    pos = torch.arange(pad_len, device=offsets.device, dtype=torch.int64)
    valid = pos[None, :] < lengths[:, None]
    last = (offsets[-1] - 1).clamp(min=0)
    index = torch.minimum(starts[:, None] + pos[None, :], last)
    index = torch.where(valid, index, torch.zeros_like(index))
    return index, valid
