"""Cached user states at a lower precision: bfloat16, or int8 with a per-row scale.

A cached :class:`~eventrec.serving.state.EncodedState` is mostly float32 tensors with one row per
position of the user's history: the keyed pooling's ``keys``/``values [P, H, d]`` and ``match_keys
[P, V·E]``, ``encoded [P, D]`` for a model that reads it and, in the exact-incremental mode, each
encoder layer's ``(k, v) [P, H, d]``. The service's
``state_precision`` keeps them as:

* ``fp32``: as computed (scores equal ``eventrec evaluate``'s);
* ``bf16``: ``torch.bfloat16``, 2 bytes per element;
* ``int8``: :class:`RowwiseInt8`, per position ``p`` int8 codes of its whole row (e.g. ``[H, d]`` flattened)
  with one float32 ``scale_p = max|x_p| / 127``: ``x̂ = code · scale_p``, 1 byte per element + 4
  per position.

The encoder layers' keys/values (the KV cache, read only when events are appended, never by a
request's scoring) have their own ``kv_cache_precision``: the same choices (by default the
``state_precision``) and

* ``int4``: :class:`GroupwiseInt4`, per position and head (a group of ``d`` elements) int4 codes in
  ``[-7, 7]``, two to a byte, with one float16 ``scale = max|x| / 7``: ``d / 2 + 2`` bytes per group.

Timestamps stay int64. A state is compressed when it is computed (:func:`compress`); a state grown by
appends compresses only the new positions and keeps the old ones' codes (:func:`append_rows`), so it
does not drift (and compressing a dequantized row gives its codes again). A request dequantizes what
it reads to float32 (:func:`decompress`); the model only ever sees float32. Scores stay within 1e-2 of
fp32 (``tests/serving/test_state_precision.py``; measured: ``bench/quantization.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch

StatePrecision = Literal["fp32", "bf16", "int8"]
KvCachePrecision = Literal["fp32", "bf16", "int8", "int4"]
STATE_PRECISIONS = ("fp32", "bf16", "int8")
KV_CACHE_PRECISIONS = STATE_PRECISIONS + ("int4",)
INT8_MAX = 127
INT4_MAX = 7


def check_state_precision(precision: str) -> str:
    """``precision`` itself, or a ValueError naming the ``state_precision`` field."""
    if precision not in STATE_PRECISIONS:
        raise ValueError(f"state_precision: expected one of {STATE_PRECISIONS}, got {precision!r}")
    return precision


def check_kv_cache_precision(precision: str, head_dim: int) -> str:
    """``precision`` itself, or a ValueError naming the ``kv_cache_precision`` field (int4 packs two
    codes to a byte: it needs an even ``head_dim``)."""
    if precision not in KV_CACHE_PRECISIONS:
        raise ValueError(f"kv_cache_precision: expected one of {KV_CACHE_PRECISIONS}, got {precision!r}")
    if precision == "int4" and head_dim % 2:
        raise ValueError(f"kv_cache_precision: int4 needs an even head dimension (model_dim / num_heads), got {head_dim}")
    return precision


@dataclass(frozen=True)
class RowwiseInt8:
    """A ``[P, ...]`` float tensor as ``codes [P, ...]`` int8 and one ``scales [P]`` float32 per row."""

    codes: torch.Tensor
    scales: torch.Tensor

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()


def quantize_rows(x: torch.Tensor) -> RowwiseInt8:
    """``x [P, ...]`` float → :class:`RowwiseInt8` (each row: all elements after the first dimension)."""
    x = x.detach().float()
    flat = x.reshape(len(x), -1)
    scales = flat.abs().amax(dim=1) / INT8_MAX if flat.shape[1] else flat.new_zeros(len(x))
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(flat / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return RowwiseInt8(codes.reshape(x.shape), scales)


def dequantize_rows(q: RowwiseInt8) -> torch.Tensor:
    """:class:`RowwiseInt8` → float32 ``[P, ...]`` (``code · scale`` of its row)."""
    return q.codes.float() * q.scales.reshape(-1, *([1] * (q.codes.dim() - 1)))


@dataclass(frozen=True)
class GroupwiseInt4:
    """A ``[P, ..., g]`` float tensor (``g`` even: one group per last-dimension row, e.g. a head's ``d``
    elements of keys ``[P, H, d]``) as ``packed [P, ..., g/2]`` uint8, two int4 codes in ``[-7, 7]`` per
    byte (element ``2j`` in the low nibble, ``2j+1`` in the high one, each stored as ``code + 8``), and
    ``scales [P, ...]`` float16, one per group."""

    packed: torch.Tensor
    scales: torch.Tensor

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.packed.shape[:-1], 2 * self.packed.shape[-1])

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + 2 * self.scales.numel()


def quantize_groups_int4(x: torch.Tensor) -> GroupwiseInt4:
    """``x [P, ..., g]`` float (``g`` even) → :class:`GroupwiseInt4`. The scale is rounded to float16
    before the codes are taken, so ``code · scale`` is what is kept; a scale beyond float16's range is
    clipped to its largest value (those elements clip to ``±7 · scale``)."""
    x = x.detach().float()
    if x.shape[-1] % 2:
        raise ValueError(f"int4 groups need an even last dimension, got {x.shape[-1]}")
    limit = torch.finfo(torch.float16).max
    scales = (x.abs().amax(dim=-1) / INT4_MAX).clamp_(max=limit).to(torch.float16) if x.shape[-1] else x.new_zeros(x.shape[:-1], dtype=torch.float16)
    wide = scales.float()
    safe = torch.where(wide > 0, wide, torch.ones_like(wide))
    codes = torch.round(x / safe.unsqueeze(-1)).clamp_(-INT4_MAX, INT4_MAX).to(torch.int16) + 8  # [1, 15]
    pairs = codes.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)
    return GroupwiseInt4(packed, scales)


def dequantize_groups_int4(q: GroupwiseInt4) -> torch.Tensor:
    """:class:`GroupwiseInt4` → float32 ``[P, ..., g]`` (``code · scale`` of its group)."""
    wide = q.packed.to(torch.int16)
    codes = torch.stack([wide & 15, wide >> 4], dim=-1).reshape(q.shape) - 8
    return codes.float() * q.scales.float().unsqueeze(-1)


Stored = Union[torch.Tensor, RowwiseInt8, GroupwiseInt4]


def compress(x: torch.Tensor | None, precision: str) -> Stored | None:
    """A state tensor ``[P, ...]`` kept at ``precision`` (None stays None)."""
    if x is None or precision == "fp32":
        return x
    if precision == "bf16":
        return x.detach().to(torch.bfloat16)
    if precision == "int4":
        return quantize_groups_int4(x)
    return quantize_rows(x)


def decompress(x: Stored | None) -> torch.Tensor | None:
    """A kept state tensor back to float32 ``[P, ...]`` (a float32 one as is)."""
    if x is None:
        return None
    if isinstance(x, RowwiseInt8):
        return dequantize_rows(x)
    if isinstance(x, GroupwiseInt4):
        return dequantize_groups_int4(x)
    return x if x.dtype == torch.float32 else x.float()


def append_rows(kept: Stored | None, rows: torch.Tensor | None, precision: str) -> Stored | None:
    """``kept`` (``[P, ...]`` at ``precision``) followed by ``rows [n, ...]`` float compressed at
    ``precision``: the old positions keep their codes (a grown state does not drift, and an append
    compresses only what it adds)."""
    if kept is None or rows is None:
        return None
    new = compress(rows, precision)
    if isinstance(kept, RowwiseInt8):
        return RowwiseInt8(torch.cat([kept.codes, new.codes]), torch.cat([kept.scales, new.scales]))
    if isinstance(kept, GroupwiseInt4):
        return GroupwiseInt4(torch.cat([kept.packed, new.packed]), torch.cat([kept.scales, new.scales]))
    return torch.cat([kept, new])


def stored_bytes(x: Stored | None) -> int:
    if x is None:
        return 0
    return x.nbytes if isinstance(x, (RowwiseInt8, GroupwiseInt4)) else x.numel() * x.element_size()


def precision_of(x: Stored | None) -> str:
    """The precision a kept tensor is at (``fp32`` for None)."""
    if isinstance(x, RowwiseInt8):
        return "int8"
    if isinstance(x, GroupwiseInt4):
        return "int4"
    return "bf16" if x is not None and x.dtype == torch.bfloat16 else "fp32"
