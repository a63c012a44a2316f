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

Timestamps stay int64. A state is compressed once when it is computed or grown (:func:`compress`)
and dequantized to float32 each time a request reads it (:func:`decompress`); the model only ever
sees float32. Compressing a dequantized int8 row gives its codes again, so a state grown by appends
(:meth:`SequenceRanker.extend_user`) does not drift. Scores stay within 1e-2 of fp32
(``tests/serving/test_state_precision.py``; measured: ``bench/quantization.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch

StatePrecision = Literal["fp32", "bf16", "int8"]
STATE_PRECISIONS = ("fp32", "bf16", "int8")
INT8_MAX = 127


def check_state_precision(precision: str) -> str:
    """``precision`` itself, or a ValueError naming the ``state_precision`` field."""
    if precision not in STATE_PRECISIONS:
        raise ValueError(f"state_precision: expected one of {STATE_PRECISIONS}, got {precision!r}")
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


Stored = Union[torch.Tensor, RowwiseInt8]


def compress(x: torch.Tensor | None, precision: str) -> Stored | None:
    """A state tensor ``[P, ...]`` kept at ``precision`` (None stays None)."""
    if x is None or precision == "fp32":
        return x
    if precision == "bf16":
        return x.detach().to(torch.bfloat16)
    return quantize_rows(x)


def decompress(x: Stored | None) -> torch.Tensor | None:
    """A kept state tensor back to float32 ``[P, ...]`` (a float32 one as is)."""
    if x is None:
        return None
    if isinstance(x, RowwiseInt8):
        return dequantize_rows(x)
    return x if x.dtype == torch.float32 else x.float()


def stored_bytes(x: Stored | None) -> int:
    if x is None:
        return 0
    return x.nbytes if isinstance(x, RowwiseInt8) else x.numel() * x.element_size()


def precision_of(x: Stored | None) -> str:
    """The precision a kept tensor is at (``fp32`` for None)."""
    if isinstance(x, RowwiseInt8):
        return "int8"
    return "bf16" if x is not None and x.dtype == torch.bfloat16 else "fp32"
