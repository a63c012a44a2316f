"""Embedding tables shared by vocabulary, and the embedder of a group of attributes.

One table per vocabulary name (``schema`` attribute ``vocabulary``): the ad id of the click stream,
of the conversion stream and of the candidate ad read the same rows, so a model can tell that the
candidate is an ad the user clicked. Row 0 (missing) is a fixed zero vector. Tables produce sparse
gradients by default (only the rows a batch touched), trained by SparseAdam: a dense gradient of a
200k-row table per lookup dominated the DLRM's step time on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eventrec.data.jagged import JaggedTensor
from eventrec.schema import Schema


@dataclass(frozen=True)
class FeatureSpec:
    """What a model needs to know of the data: the schema and each vocabulary's table size."""

    schema: Schema
    num_embeddings: dict[str, int]

    def to_json(self) -> dict:
        return {"schema": self.schema.model_dump(mode="json"), "num_embeddings": self.num_embeddings}

    @classmethod
    def from_json(cls, data: dict) -> "FeatureSpec":
        from eventrec.schema import parse_schema

        return cls(parse_schema(data["schema"], "<checkpoint>"), {k: int(v) for k, v in data["num_embeddings"].items()})

    @classmethod
    def from_store(cls, store) -> "FeatureSpec":
        return cls(store.schema, {name: v.num_embeddings for name, v in store.vocabularies.items()})


class EmbeddingTables(nn.Module):
    """``tables[vocabulary]``: an ``nn.Embedding(num_embeddings, dim, padding_idx=0)`` per vocabulary."""

    def __init__(self, spec: FeatureSpec, dim: int, vocabularies: set[str] | None = None, sparse: bool = True):
        super().__init__()
        names = sorted(vocabularies if vocabularies is not None else spec.num_embeddings)
        self.dim = dim
        self.sparse = sparse
        self.tables = nn.ModuleDict({name: nn.Embedding(spec.num_embeddings[name], dim, padding_idx=0, sparse=sparse) for name in names})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=0.1)
            with torch.no_grad():
                table.weight[0].zero_()

    def __getitem__(self, vocabulary: str) -> nn.Embedding:
        return self.tables[vocabulary]

    def bag(self, vocabulary: str, ids: torch.Tensor, offsets: torch.Tensor, mode: str, per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``F.embedding_bag`` over a table (``offsets [bags+1]``), with the table's gradient kind."""
        table = self.tables[vocabulary]
        if not isinstance(table, nn.Embedding):  # an inference table at a lower precision (model/quantized_tables.py)
            return table.bag(ids, offsets, mode, per_sample_weights)
        return F.embedding_bag(ids, self.tables[vocabulary].weight, offsets, mode=mode, per_sample_weights=per_sample_weights,
                               include_last_offset=True, padding_idx=0 if per_sample_weights is None else None, sparse=self.sparse)


class AttributeEmbedder(nn.Module):
    """Concatenate the representations of a group of attributes into one vector per row.

    Ids → the shared table's embedding ``[rows, E]``; multi-valued ids → mean of their embeddings;
    numbers → themselves ``[rows, 1]``; vectors → themselves ``[rows, dim]``.
    Input: ``ids`` dict of ``[rows]`` int64 / ``[rows]`` float / ``[rows, dim]`` float tensors and
    ``multi`` dict of :class:`JaggedTensor` over rows. Output ``[rows, out_dim]``.
    """

    def __init__(self, attributes: list, tables: EmbeddingTables):
        super().__init__()
        # a reference, not a submodule: the owning model registers the shared tables once
        self.__dict__["tables"] = tables
        self.attributes = [(a.name, a.kind, getattr(a, "vocabulary_name", None), getattr(a, "dim", 1)) for a in attributes]
        self.out_dim = 0
        for _, kind, _, dim in self.attributes:
            self.out_dim += tables.dim if kind in ("categorical", "hashed", "multi_categorical") else (dim if kind == "embedding" else 1)

    def forward(self, values: dict, multi: dict | None = None) -> torch.Tensor:
        parts = []
        for name, kind, vocabulary, _ in self.attributes:
            if kind in ("categorical", "hashed"):
                parts.append(self.tables[vocabulary](values[name]))
            elif kind == "multi_categorical":
                jagged: JaggedTensor = (multi or values)[name]
                parts.append(self.tables.bag(vocabulary, jagged.values, jagged.offsets, mode="mean"))
            elif kind == "numeric":
                parts.append(values[name].float().unsqueeze(-1))
            else:
                parts.append(values[name].float())
        if not parts:
            raise ValueError("an attribute group with no attributes")
        return torch.cat(parts, dim=-1)


def id_attributes_only(attributes: list, keep: str | None) -> list:
    """The ablation 'event attributes off': keep only the stream's id attribute."""
    return [a for a in attributes if a.name == keep] if keep else attributes[:1]


def vocabularies_used(attributes: list) -> set[str]:
    return {a.vocabulary_name for a in attributes if a.kind in ("categorical", "hashed", "multi_categorical")}
