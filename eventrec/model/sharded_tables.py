"""The embedding tables as one TorchRec ``EmbeddingCollection``: the twin of
:class:`~eventrec.model.embeddings.EmbeddingTables` that distributed training shards.

Only distributed training builds it (:mod:`eventrec.training.distributed`); it swaps it into a built
model with :func:`replace_tables`, so the model never knows. The single-process path never imports
this module (nor TorchRec).

**Row layout.** Each vocabulary is one TorchRec table of ``num_embeddings`` rows of
``2·E + COUNT_COLUMNS`` float32 columns (E = the model's ``attribute_dim``):

* ``[0, E)``: the row's weights, what ``nn.Embedding(num_embeddings, E).weight`` holds in one process;
* ``[E, 2E)``: a gradient accumulator (zero between steps);
* ``[2E, 2E + COUNT_COLUMNS)``: a read counter (zero between steps).

Why: TorchRec's CPU kernels (fbgemm-gpu-cpu) update sharded tables only with a *fused* optimizer in
the backward pass, and offer no Adam there (exact SGD and Adagrad variants only), while eventrec trains
its tables with ``torch.optim.SparseAdam``. So the tables train with fused exact SGD at learning rate
1, and a lookup's backward (:class:`_ReadRows`) gives the weight columns a zero gradient (they are left
exactly as they were), the accumulator the rows' gradient (after the step it holds ``-Σ grad`` over all
ranks' reads) and the counter 1 per read (``-reads``: which rows were read, even with a zero gradient).
The gradient and the counts travel to each row's owner through TorchRec's own all-to-all; the owner
then applies SparseAdam to its shard (:mod:`eventrec.training.sharded_adam`) and zeroes the two.

**A step's lookups.** Before the model's forward, :meth:`ShardedEmbeddingTables.prefetch` looks up the
batch's distinct ids of every vocabulary at once (one sharded lookup: one collective per step, the same
on every rank whatever its batch holds); the model's lookups (``tables[vocabulary](ids)`` and
:meth:`ShardedEmbeddingTables.bag`, the interface of ``EmbeddingTables``) then read those rows. Id 0
(padding) is never looked up: it reads a zero vector and is left out of a bag's mean, as with
``padding_idx=0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from eventrec.data.batch import EventBatch
from eventrec.model.embeddings import EmbeddingTables
from eventrec.schema import Schema

COUNT_COLUMNS = 4  # fbgemm's kernels want row widths that are multiples of 4
ID_KINDS = ("categorical", "hashed", "multi_categorical")


def row_width(dim: int) -> int:
    """Columns of a row of the collection: weights, gradient accumulator, read counter."""
    return 2 * dim + COUNT_COLUMNS


def batch_ids(schema: Schema, batch: EventBatch) -> dict[str, list[torch.Tensor]]:
    """Per vocabulary, the id tensors of ``batch`` that a model can look up in it: the events'
    categorical / hashed attributes (``[N]``) and multi-categorical values (the jagged values), the
    candidate's and the context's (``[B]``)."""
    ids: dict[str, list[torch.Tensor]] = {}

    def add(attributes: list, values: dict, multi: dict | None) -> None:
        for attribute in attributes:
            if attribute.kind not in ID_KINDS:
                continue
            if attribute.kind == "multi_categorical":
                jagged = (multi or values).get(attribute.name)
                tensor = None if jagged is None else jagged.values
            else:
                tensor = values.get(attribute.name)
            if tensor is not None:
                ids.setdefault(attribute.vocabulary_name, []).append(tensor.reshape(-1))

    for stream in schema.streams:
        events = batch.streams.get(stream.name)
        if events is not None:
            add(stream.attributes, events.attributes, events.multi)
    add(schema.impressions.item_attributes, batch.item, None)
    add(schema.impressions.context_attributes, batch.context, None)
    return ids


class _ReadRows(torch.autograd.Function):
    """``rows [U, 2E + C]`` (the collection's rows of U distinct ids), ``positions [n]`` (each id's row,
    -1 for the padding id) → the ids' weights ``[n, E]`` (zeros at -1). Backward: ``[U, 2E + C]`` with
    zeros under the weights, the summed gradient under the accumulator and the number of reads under
    the counter."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, positions: torch.Tensor, dim: int) -> torch.Tensor:
        valid = positions >= 0
        ctx.save_for_backward(positions, valid)
        ctx.shape, ctx.dim = rows.shape, dim
        out = rows.new_zeros(len(positions), dim)
        out[valid] = rows[positions[valid], :dim]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        positions, valid = ctx.saved_tensors
        dim, read = ctx.dim, positions[valid]
        full = grad.new_zeros(ctx.shape)
        full[:, dim : 2 * dim].index_add_(0, read, grad[valid])
        full[:, 2 * dim :].index_add_(0, read, grad.new_ones(len(read), ctx.shape[1] - 2 * dim))
        return full, None, None


class _TableView:
    """``tables[vocabulary]``: callable like that vocabulary's ``nn.Embedding`` (``ids [...]`` →
    ``[..., E]``), reading the rows prefetched for the step."""

    def __init__(self, tables: "ShardedEmbeddingTables", vocabulary: str):
        self.tables, self.vocabulary = tables, vocabulary

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tables.lookup(self.vocabulary, ids)


class ShardedEmbeddingTables(nn.Module):
    """``num_embeddings``: rows per vocabulary (the tables of an :class:`EmbeddingTables` of ``dim``
    columns), as one ``EmbeddingCollection`` built on the ``meta`` device: ``DistributedModelParallel``
    allocates each rank's shards. One feature per table, named like its vocabulary."""

    def __init__(self, num_embeddings: dict[str, int], dim: int):
        super().__init__()
        self.names = sorted(num_embeddings)
        self.num_embeddings = {name: int(num_embeddings[name]) for name in self.names}
        self.dim = dim
        self.sparse = True
        configs = [EmbeddingConfig(name=name, embedding_dim=row_width(dim), num_embeddings=self.num_embeddings[name], feature_names=[name])
                   for name in self.names]
        self.collection = EmbeddingCollection(tables=configs, device=torch.device("meta"))
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.read_vocabularies: set[str] = set()

    @classmethod
    def like(cls, tables: EmbeddingTables) -> "ShardedEmbeddingTables":
        return cls({name: table.num_embeddings for name, table in tables.tables.items()}, tables.dim)

    def prefetch(self, ids: dict[str, list[torch.Tensor]], device: torch.device | None = None) -> None:
        """Look up, in one sharded call, the distinct non-zero ids of ``ids`` (per vocabulary, e.g.
        :func:`batch_ids`); the step's lookups read them. Every rank must call it once per forward."""
        device = device or torch.device("cpu")
        distinct = []
        for name in self.names:
            parts = ids.get(name, [])
            values = torch.unique(torch.cat(parts).to(device=device, dtype=torch.int64)) if parts else torch.zeros(0, dtype=torch.int64, device=device)
            values = values[values != 0]
            if len(values) and (int(values[0]) < 0 or int(values[-1]) >= self.num_embeddings[name]):
                raise ValueError(f"vocabulary {name!r}: ids outside 0..{self.num_embeddings[name] - 1} (got {int(values[0])}..{int(values[-1])})")
            distinct.append(values)
        lengths = torch.tensor([len(v) for v in distinct], dtype=torch.int64, device=device)
        features = KeyedJaggedTensor.from_lengths_sync(keys=self.names, values=torch.cat(distinct), lengths=lengths)
        rows = self.collection(features)
        self._rows = {name: (values, rows[name].values()) for name, values in zip(self.names, distinct)}
        self.read_vocabularies = set()

    def __getitem__(self, vocabulary: str) -> _TableView:
        if vocabulary not in self.num_embeddings:
            raise KeyError(vocabulary)
        return _TableView(self, vocabulary)

    def lookup(self, vocabulary: str, ids: torch.Tensor) -> torch.Tensor:
        """``ids [...]`` → ``[..., E]``, as ``nn.Embedding(..., padding_idx=0)`` (id 0: zeros)."""
        if vocabulary not in self._rows:
            raise RuntimeError(f"vocabulary {vocabulary!r}: no rows prefetched; call prefetch(batch ids) before the forward pass")
        distinct, rows = self._rows[vocabulary]
        flat = ids.reshape(-1).to(torch.int64)
        positions = torch.searchsorted(distinct, flat).clamp_(max=max(len(distinct) - 1, 0))
        found = (distinct[positions] == flat) if len(distinct) else torch.zeros_like(flat, dtype=torch.bool)
        if not bool((found | (flat == 0)).all()):
            missing = flat[~(found | (flat == 0))][:5].tolist()
            raise RuntimeError(f"vocabulary {vocabulary!r}: ids {missing} were not prefetched for this step (batch_ids misses an attribute)")
        positions = torch.where(flat == 0, torch.full_like(positions, -1), positions)
        self.read_vocabularies.add(vocabulary)
        return _ReadRows.apply(rows, positions, self.dim).reshape(*ids.shape, self.dim)

    def bag(self, vocabulary: str, ids: torch.Tensor, offsets: torch.Tensor, mode: str,
            per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[bags, E]``: :meth:`EmbeddingTables.bag` (``offsets [bags+1]``; id 0 left out of its bag and
        of a mean's count). Weighted bags (the DLRM's) are not sharded: ValueError."""
        if per_sample_weights is not None:
            raise ValueError("per_sample_weights: weighted bags (the DLRM's) are not supported by the sharded tables")
        rows = self.lookup(vocabulary, ids)
        padding = len(ids)  # one more, all-zero row that the padding ids point at
        positions = torch.where(ids == 0, padding, torch.arange(len(ids), device=ids.device))
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        return F.embedding_bag(positions, rows, offsets, mode=mode, include_last_offset=True, padding_idx=padding)

    def local_rows(self, vocabulary: str) -> torch.Tensor:
        """This rank's shard of a table, ``[rows here, 2E + C]`` (a view: writes reach the table; empty
        where the rank holds none). Only after ``DistributedModelParallel`` sharded the collection."""
        return self.collection.embeddings[vocabulary].weight


def replace_tables(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Make every module of ``model`` that holds ``old`` (as the registered ``tables`` child, or as the
    unregistered reference the embedders keep) hold ``new`` instead."""
    for module in list(model.modules()):
        if module._modules.get("tables") is old:
            module._modules["tables"] = new
        elif module.__dict__.get("tables") is old:
            module.__dict__["tables"] = new
