"""Embedding tables at a lower precision for inference: int8 row-wise or float16.

A trained model's :class:`~eventrec.model.embeddings.EmbeddingTables` hold one float32
``nn.Embedding`` per vocabulary: most of a model's bytes (the synthetic world's hashed ad ids alone
are 200,003 rows). :func:`quantize_tables` replaces each of them, in place, by a module that keeps
the rows at a lower precision and dequantizes only the rows a lookup reads:

* ``int8`` (:class:`Int8RowwiseEmbedding`): per row ``r``, 8-bit codes ``q [E]`` in 0..255 with a
  float32 ``scale_r = (max_r - min_r) / 255`` and ``offset_r = min_r``; ``x̂ = q · scale_r + offset_r``
  (every element within ``scale_r / 2``; a constant row, e.g. the zero padding row 0, is exact).
  ``E + 8`` bytes per row instead of ``4·E``.
* ``fp16`` (:class:`Float16Embedding`): the rows in float16, ``2·E`` bytes per row.

Both keep ``nn.Embedding``'s behaviour: ``module(ids) → [..., E]`` float32, and ``bag`` (what
:meth:`EmbeddingTables.bag` calls) with padding id 0 left out of the bags. The model never knows:
serving and evaluation call :func:`quantize_tables` on a loaded checkpoint (``RankingService.load(...,
table_precision=)``, ``eventrec serve / evaluate --table-precision``). Inference only: the modules
hold buffers, not parameters.

:func:`dequantize_rowwise` is the readable reference (the whole table at once); the modules gather
rows first and dequantize only those, and ``tests/test_quantized_tables.py`` compares the two.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from eventrec.model.embeddings import EmbeddingTables

TablePrecision = Literal["fp32", "fp16", "int8"]
TABLE_PRECISIONS = ("fp32", "fp16", "int8")
LEVELS = 255  # uint8 codes 0..255


def quantize_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight [V, E]`` float → (``codes [V, E]`` uint8, ``scale [V]`` float32, ``offset [V]`` float32)."""
    weight = weight.detach().float()
    low, high = weight.min(dim=1).values, weight.max(dim=1).values
    scale = (high - low) / LEVELS
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((weight - low[:, None]) / safe[:, None]).clamp_(0, LEVELS).to(torch.uint8)
    return codes, scale, low


def dequantize_rowwise(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The reference: ``codes [..., E]`` uint8 with their rows' ``scale``/``offset [...]`` → float32
    ``codes · scale + offset`` (the whole table when given the whole table)."""
    return codes.float() * scale[..., None] + offset[..., None]


def _bag(rows: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, mode: str, per_sample_weights: torch.Tensor | None) -> torch.Tensor:
    """``F.embedding_bag`` over already looked-up ``rows [T, E]`` (one per id of ``ids [T]``, bags by
    ``offsets [bags+1]``), with the float table's rule: id 0 (padding) is left out of its bag (also of a
    mean's count) unless ``per_sample_weights`` are given."""
    positions = torch.arange(len(ids), device=ids.device)
    padding = None
    if per_sample_weights is None:
        padding = len(ids)  # one more, all-zero row that the padding ids point at
        positions = torch.where(ids == 0, padding, positions)
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    return F.embedding_bag(positions, rows, offsets, mode=mode, per_sample_weights=per_sample_weights, include_last_offset=True,
                           padding_idx=padding)


class Int8RowwiseEmbedding(nn.Module):
    """An ``nn.Embedding``'s rows as uint8 codes with a per-row scale and offset (buffers ``codes [V, E]``,
    ``scale [V]``, ``offset [V]``); a lookup dequantizes only the rows it reads."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        codes, scale, offset = quantize_rowwise(weight)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        self.num_embeddings, self.embedding_dim = codes.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [...]`` int64 → ``[..., E]`` float32."""
        return dequantize_rowwise(self.codes[ids], self.scale[ids], self.offset[ids])

    def bag(self, ids: torch.Tensor, offsets: torch.Tensor, mode: str, per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[bags, E]``: :meth:`EmbeddingTables.bag` on this table (``offsets [bags+1]``)."""
        return _bag(self(ids), ids, offsets, mode, per_sample_weights)

    def dequantized(self) -> torch.Tensor:
        """``[V, E]`` float32: the whole table through the reference."""
        return dequantize_rowwise(self.codes, self.scale, self.offset)


class Float16Embedding(nn.Module):
    """An ``nn.Embedding``'s rows in float16 (buffer ``weight16 [V, E]``); lookups return float32."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight16", weight.detach().to(torch.float16))
        self.num_embeddings, self.embedding_dim = self.weight16.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight16[ids].float()

    def bag(self, ids: torch.Tensor, offsets: torch.Tensor, mode: str, per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return _bag(self(ids), ids, offsets, mode, per_sample_weights)

    def dequantized(self) -> torch.Tensor:
        return self.weight16.float()


QUANTIZED = {"fp16": Float16Embedding, "int8": Int8RowwiseEmbedding}


def quantize_tables(model: nn.Module, precision: str) -> nn.Module:
    """Replace, in place, the float32 tables of every :class:`EmbeddingTables` in ``model`` by their
    ``precision`` version (``"fp32"``: unchanged); returns ``model``. Other ``nn.Embedding`` modules (the
    event model's small stream-type, recency and order embeddings) stay float32. A ValueError names
    ``table_precision`` for an unknown precision."""
    if precision not in TABLE_PRECISIONS:
        raise ValueError(f"table_precision: expected one of {TABLE_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    for module in model.modules():
        if isinstance(module, EmbeddingTables):
            for name, table in list(module.tables.items()):
                if isinstance(table, nn.Embedding):
                    module.tables[name] = QUANTIZED[precision](table.weight)
    return model


def table_precision_of(model: nn.Module) -> str:
    """The precision of ``model``'s vocabulary tables: ``fp32``, ``fp16``, ``int8`` (``mixed`` if they differ;
    ``fp32`` for a model without tables)."""
    kinds = {{Float16Embedding: "fp16", Int8RowwiseEmbedding: "int8"}.get(type(table), "fp32")
             for module in model.modules() if isinstance(module, EmbeddingTables) for table in module.tables.values()}
    return kinds.pop() if len(kinds) == 1 else ("fp32" if not kinds else "mixed")


def table_bytes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per vocabulary table of ``model``: (rows, bytes held), whatever its precision."""
    out: dict[str, tuple[int, int]] = {}
    for module in model.modules():
        if isinstance(module, EmbeddingTables):
            for name, table in module.tables.items():
                held = list(table.parameters()) + list(table.buffers())
                out[name] = (int(table.num_embeddings), sum(t.numel() * t.element_size() for t in held))
    return out
