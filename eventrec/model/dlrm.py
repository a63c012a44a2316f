"""The DLRM baseline over human-engineered aggregated features.

Sparse: for each stream, aggregated id attribute and window, the distinct ids before the impression
with their counts, sum
pooled by a count-weighted embedding bag (weights ``log1p(count)``, so a heavy user's bag does not
grow without bound) over the *same* id table as the candidate (so the dot interaction can match
"ads this user clicked" with "this ad"). Dense: log counts and time since last event per stream,
plus the candidate's numeric attributes (and, with ``features: engineered``, the candidate-match
counts and recency and the numeric aggregates of :mod:`eventrec.data.dlrm_features`), through a
bottom MLP. Interaction: DLRM's pairwise dot
products of all feature vectors, concatenated with the bottom MLP's output; then the same task
heads as the sequence model.
"""

from __future__ import annotations

import torch
from torch import nn

from eventrec.data.dlrm_features import DlrmBatch, dense_names
from eventrec.model.config import DlrmConfig
from eventrec.model.embeddings import EmbeddingTables, FeatureSpec, vocabularies_used
from eventrec.model.heads import TaskHeads, dot_interaction, mlp

ID_KINDS = ("categorical", "hashed", "multi_categorical")


class DlrmModel(nn.Module):
    def __init__(self, spec: FeatureSpec, config: DlrmConfig):
        super().__init__()
        self.spec, self.config = spec, config
        schema = spec.schema
        imp = schema.impressions
        self.candidate_attributes = imp.item_attributes + imp.context_attributes
        self.sparse_features = []  # (key, vocabulary)
        for stream in schema.streams:
            for name in stream.aggregated_ids:
                vocabulary = stream.attribute(name).vocabulary_name
                self.sparse_features += [(f"{stream.name}.{name}.{window}", vocabulary) for window in config.windows]
        vocabularies = vocabularies_used(self.candidate_attributes) | {v for _, v in self.sparse_features}
        self.tables = EmbeddingTables(spec, config.attribute_dim, vocabularies)
        num_dense = len(dense_names(schema, config.windows, config.features == "engineered", config.reads_item_counters))
        self.candidate_dense = [a for a in self.candidate_attributes if a.kind in ("numeric", "embedding")]
        num_dense += sum(getattr(a, "dim", 1) if a.kind == "embedding" else 1 for a in self.candidate_dense)
        self.bottom = mlp(num_dense, config.bottom_mlp)
        num_vectors = 1 + len(self.sparse_features) + sum(1 for a in self.candidate_attributes if a.kind in ID_KINDS)
        interaction_dim = num_vectors * (num_vectors - 1) // 2 + config.attribute_dim
        self.heads = TaskHeads(interaction_dim, config.top_mlp, len(imp.all_labels))

    def _pooled_bags(self, batch: DlrmBatch) -> list[torch.Tensor]:
        """One fused embedding-bag call per table (like TorchRec's EmbeddingBagCollection), so each
        table's gradient is built once per step, not once per feature. Returns ``[B, E]`` per feature."""
        pooled: dict[str, torch.Tensor] = {}
        by_table: dict[str, list[str]] = {}
        for key, vocabulary in self.sparse_features:
            by_table.setdefault(vocabulary, []).append(key)
        for vocabulary, keys in by_table.items():
            bags = [batch.sparse[k] for k in keys]
            batch_size = len(bags[0].offsets) - 1
            shifts = torch.cumsum(torch.tensor([0] + [len(b.ids) for b in bags[:-1]]), 0).tolist()
            offsets = torch.cat([b.offsets[:-1] + shift for b, shift in zip(bags, shifts)] + [torch.tensor([sum(len(b.ids) for b in bags)])])
            out = self.tables.bag(
                vocabulary, torch.cat([b.ids for b in bags]), offsets, mode="sum",
                per_sample_weights=torch.log1p(torch.cat([b.weights for b in bags])),
            ).view(len(bags), batch_size, -1)
            pooled |= {k: out[i] for i, k in enumerate(keys)}
        return [pooled[key] for key, _ in self.sparse_features]

    def forward(self, batch: DlrmBatch) -> torch.Tensor:
        """Logits ``[B, T]``."""
        candidate = {**batch.item, **batch.context}
        dense = [batch.dense]
        for attribute in self.candidate_dense:
            value = candidate[attribute.name].float()
            dense.append(value.unsqueeze(-1) if value.dim() == 1 else value)
        vectors = [self.bottom(torch.cat(dense, dim=1))]
        vectors += self._pooled_bags(batch)
        for attribute in self.candidate_attributes:
            if attribute.kind in ("categorical", "hashed"):
                vectors.append(self.tables[attribute.vocabulary_name](candidate[attribute.name]))
            elif attribute.kind == "multi_categorical":
                jagged = candidate[attribute.name]
                vectors.append(self.tables.bag(attribute.vocabulary_name, jagged.values, jagged.offsets, mode="mean"))
        stacked = torch.stack(vectors, dim=1)
        return self.heads(torch.cat([vectors[0], dot_interaction(stacked)], dim=1))
