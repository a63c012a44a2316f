"""Training on several processes (torchrun): TorchRec-sharded embedding tables, the rest data parallel.

``eventrec train --nproc-per-node N ...`` starts ``torch.distributed.run`` itself (:func:`launch`); on a
cluster, torchrun starts ``python -m eventrec.cli train ...`` on every node (docs/distributed_training.md).
Each process then runs a :class:`DistributedTrainer`:

* **the same global batches as one process**: every rank draws the one-process trainer's batch of
  ``batch_size`` examples and takes its share (:class:`RankShare`, ``np.array_split`` by rank); its loss
  is its share of the global batch's loss (:func:`bce_share`: its rows' summed losses over the global
  batch's labelled counts), so the gradients summed over the ranks are the one-process gradients and
  the losses are equal to one process's (up to float rounding);
* **dense part**: ``DistributedDataParallel`` (via TorchRec's ``DistributedModelParallel``) and the
  one-process AdamW with gradient clipping;
* **embedding tables**: :class:`~eventrec.model.sharded_tables.ShardedEmbeddingTables`, sharded
  row-wise or table-wise by TorchRec's planner, trained by SparseAdam on each owner's shard
  (:class:`~eventrec.training.sharded_adam.ShardedSparseAdam`);
* **validation, ``best/``, ``last/`` and calibration on rank 0**, on a one-process model whose tables
  are gathered from the shards: checkpoints are in the one-process format (a checkpoint written by N
  ranks resumes in one process and the other way round; serving and evaluation read it as usual).

Supported: the sequence model with the ``bce`` objective (no experimental section). Imported only
when training is distributed: the one-process path never imports TorchRec.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.distributed.comm_ops import get_gradient_division

from eventrec.data.loader import BatchDataset
from eventrec.model.config import SequenceModelConfig
from eventrec.model.embeddings import EmbeddingTables
from eventrec.model.sharded_tables import ShardedEmbeddingTables, batch_ids, replace_tables
from eventrec.store.reader import EventStore
from eventrec.training.config import TrainConfig
from eventrec.training.factory import ModelConfig, build_model
from eventrec.training.objectives import BceObjective, forward
from eventrec.training.optim import build_optimizers
from eventrec.training.sharded_adam import ShardedSparseAdam
from eventrec.training.sharding import (Backend, DistributedEnv, Sharding, describe, gather_rows, plan_tables, quiet_torchrec, shard_layout,
                                        shard_model)
from eventrec.training.trainer import Trainer, TrainResult

TABLES_PATH = "tables.collection"  # the collection's module path in a SequenceRanker


@dataclass
class ShareBatch:
    """This rank's share of a global batch, and ``label_counts [T]``: the global batch's labelled
    impressions per task (what its loss is divided by)."""

    batch: object
    label_counts: torch.Tensor


@dataclass(frozen=True)
class RankShare:
    """A batch function that builds rank ``rank``'s share (of ``world``) of each global batch."""

    batch_fn: Callable[[EventStore, np.ndarray], object]
    rank: int
    world: int

    def __call__(self, store: EventStore, indices: np.ndarray) -> ShareBatch:
        counts = (~np.isnan(store.labels[indices])).sum(0)
        return ShareBatch(self.batch_fn(store, np.array_split(indices, self.world)[self.rank]), torch.from_numpy(counts.astype(np.int64)))


def bce_share(logits: torch.Tensor, labels: torch.Tensor, label_counts: torch.Tensor,
              task_weights: list[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of :func:`~eventrec.training.objectives.losses.multitask_loss` over a global
    batch: ``logits, labels [b, T]`` (its rows; NaN = missing), ``label_counts [T]`` (the global batch's
    labelled rows per task). Returns (the weighted sum over tasks, per-task ``[T]`` detached); summed over
    the ranks' shares, both are the global batch's ``multitask_loss``."""
    present = ~torch.isnan(labels)
    safe = torch.where(present, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, safe, reduction="none") * present
    per_task = losses.sum(0) / label_counts.to(losses.dtype).clamp(min=1)
    w = torch.ones_like(per_task) if task_weights is None else torch.tensor(task_weights, dtype=per_task.dtype, device=per_task.device)
    return (per_task * w).sum(), per_task.detach()


def check_distributable(model_config: ModelConfig, config: TrainConfig) -> None:
    """Raise ``ValueError`` naming the field when distributed training does not support the configs."""
    if not isinstance(model_config, SequenceModelConfig):
        raise ValueError(f"model: distributed training shards the sequence model's tables; train the {model_config.kind!r} model in one process")
    if config.experimental is not None:
        raise ValueError("train.experimental: distributed training supports no experimental objective or setting")
    for i, objective in enumerate(config.objectives):
        if not isinstance(objective, BceObjective):
            raise ValueError(f"objectives[{i}].kind: distributed training supports the bce objective only, got {objective.kind!r}")


class _NullLog:
    """The CSV logs of ranks other than 0 (rank 0 writes the run's logs)."""

    def write(self, row: dict) -> None:
        pass

    def drop_after(self, step: int) -> int:
        return 0


class DistributedTrainer(Trainer):
    """The :class:`~eventrec.training.trainer.Trainer` on one of ``env.world`` processes (module doc).
    ``sharding``: the planner's choice between row-wise and table-wise (``auto``), or one of them."""

    def __init__(self, store: EventStore, model_config: ModelConfig, config: TrainConfig, run_dir: Path, env: DistributedEnv,
                 sharding: Sharding = "auto", show_progress: bool = True):
        check_distributable(model_config, config)
        self.env, self.sharding, self._inside = env, sharding, False
        super().__init__(store, model_config, config, run_dir, show_progress and env.rank == 0)

    # -- building: the one-process model first (fresh or resumed), then sharded --------------------------
    def _build(self) -> None:
        super()._build()
        env = self.env
        self.dataset = BatchDataset(self.store, "train", self.config.batch_size, shuffle=True, seed=self.config.seed,
                                    batch_fn=RankShare(self.batch_fn, env.rank, env.world))

    def resume(self) -> None:
        """Resume ``last/`` (if any) into the one-process model, then shard it. Rank 0 reads it first
        (finishing, alone, a checkpoint swap a kill interrupted), then the others."""
        if self.env.rank == 0:
            super().resume()
        dist.barrier()
        if self.env.rank != 0:
            super().resume()
        self._shard()

    def _open_logs(self) -> None:
        if self.env.rank == 0:
            super()._open_logs()
        else:
            self.train_log, self.eval_log, self.score_log = _NullLog(), _NullLog(), None

    def _shard(self) -> None:
        """Swap the model's tables for their TorchRec twin, shard it, copy each rank's rows (and
        SparseAdam state) into its shards, and wrap the model in ``DistributedModelParallel``. The run's
        random generator is left as one process leaves it (sharding initialises the shards at random
        before they are overwritten)."""
        with torch.random.fork_rng(devices=[]):
            self._shard_tables()

    def _shard_tables(self) -> None:
        env, config = self.env, self.config
        quiet_torchrec()
        ranker, plain = self.model, self.model.tables
        if not isinstance(plain, EmbeddingTables):
            raise TypeError(f"the model's tables are a {type(plain).__name__}, not EmbeddingTables")
        states = _table_states(self.optimizers.get("sparse_adam"), plain)
        twin = ShardedEmbeddingTables.like(plain)
        replace_tables(ranker, plain, twin)
        for name, module in ranker.named_children():  # the dense part to the device (the twin is on "meta" until sharded)
            if module is not twin:
                module.to(env.device)
        plan, sharders = plan_tables(ranker, env, self.sharding, max(1, config.batch_size // env.world))
        self.model = shard_model(ranker, env, plan, sharders)
        self.layout = shard_layout(plan, TABLES_PATH)
        starts: dict[str, int] = {}
        with torch.no_grad():
            for name in twin.names:
                mine = [(start, rows) for rank, start, rows in self.layout[name] if rank == env.rank]
                if len(mine) > 1:
                    raise ValueError(f"table {name!r}: {len(mine)} shards on rank {env.rank}; one expected")
                if mine:
                    (start, rows), local = mine[0], twin.local_rows(name)
                    local[:, : twin.dim] = plain.tables[name].weight[start : start + rows].to(local.device)
                    local[:, twin.dim :] = 0
                    starts[name] = start
        # each rank back-propagates world x its share (DDP averages); TorchRec divides the tables' gradients likewise
        scale = 1.0 if get_gradient_division() else 1.0 / env.world
        sparse = ShardedSparseAdam(twin, starts, config.learning_rate, scale, device=env.device)
        sparse.load_table_states(states)
        adamw = self.optimizers["adamw"]
        if env.device.type != "cpu":  # the state follows the parameters to the device
            adamw.load_state_dict(adamw.state_dict())
        self.optimizers = {"adamw": adamw, "sparse_adam": sparse}
        ranker.register_forward_pre_hook(self._prefetch)
        self.ranker, self.twin, self.row_starts = ranker, twin, starts
        if env.rank == 0 and self.show_progress:
            print(f"{env.world} processes ({env.backend}); embedding tables sharded by TorchRec's planner:\n{describe(self.layout)}", file=sys.stderr)

    def _prefetch(self, module: torch.nn.Module, args: tuple) -> None:
        """Before each forward pass of the sharded model: look up the batch's ids (one collective)."""
        if module.tables is self.twin:
            self.twin.prefetch(batch_ids(self.spec.schema, args[0]), self.env.device)

    # -- a step ------------------------------------------------------------------------------------------
    def loss(self, share: ShareBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``world`` x this rank's share of the global batch's loss (what it back-propagates), and the
        global batch's per-task losses ``[T]`` (summed over the ranks: a collective)."""
        device = self.env.device
        batch = share.batch if device.type == "cpu" else share.batch.to(device)
        context = forward(self.model, batch, self.objectives, self.store, None)
        objective = self.objectives[0]
        mine, per_task = bce_share(context.logits, batch.labels, share.label_counts.to(device), objective.task_weights)
        mine = mine if objective.weight == 1.0 else objective.weight * mine
        totals = torch.cat([mine.detach().reshape(1), per_task])
        dist.all_reduce(totals)
        self._global_loss = float(totals[0])
        return mine * self.env.world, totals[1:].cpu()

    def logged_loss(self, loss: torch.Tensor) -> float:
        return self._global_loss

    # -- rank 0's work on a one-process model: validation, checkpoints, the end ------------------------------
    @contextmanager
    def _one_process(self, with_optimizers: bool) -> Iterator[bool]:
        """All ranks send their rows (and SparseAdam states) to rank 0, where ``self.model`` and
        ``self.optimizers`` are, inside the block, a one-process model and its optimizers holding them;
        yields whether this is rank 0 (only rank 0 may work inside the block: no collective there)."""
        env, twin, dim = self.env, self.twin, self.twin.dim
        weights = gather_rows({name: twin.local_rows(name)[:, :dim] for name in self.row_starts}, self.layout, twin.num_embeddings, env)
        moments, steps = None, None
        if with_optimizers:
            states = self.optimizers["sparse_adam"].table_states()
            zeros = lambda name: torch.zeros(len(twin.local_rows(name)), 2 * dim, device=env.device)  # noqa: E731
            local = {name: torch.cat([states[name]["exp_avg"], states[name]["exp_avg_sq"]], dim=1) if name in states else zeros(name)
                     for name in self.row_starts}
            moments = gather_rows(local, self.layout, twin.num_embeddings, env)
            gathered: list | None = [None] * env.world if env.rank == 0 else None
            dist.gather_object({name: state["step"] for name, state in states.items()}, gathered, dst=0)
            steps = {name: step for part in (gathered or []) for name, step in part.items()}
        if env.rank != 0:
            yield False
            return
        with torch.random.fork_rng(devices=[]):  # building the model draws numbers: keep the run's generator as it was
            plain = build_model(self.spec, self.model_config)
        table_keys = {f"tables.tables.{name}.weight" for name in twin.names}
        missing, unexpected = plain.load_state_dict(_dense_state(self.ranker), strict=False)
        if set(missing) != table_keys or unexpected:
            raise RuntimeError(f"the sharded model's dense part does not fit a one-process model (missing {missing}, unexpected {unexpected})")
        with torch.no_grad():
            for name in twin.names:
                plain.tables.tables[name].weight.copy_(weights[name])
        optimizers = {"adamw": self.optimizers["adamw"]}
        if with_optimizers:
            sparse = build_optimizers(plain, self.config)["sparse_adam"]
            sparse.param_groups[0]["lr"] = self.optimizers["sparse_adam"].param_groups[0]["lr"]
            vocabulary = {id(plain.tables.tables[name].weight): name for name in twin.names}
            for parameter in sparse.param_groups[0]["params"]:
                name = vocabulary[id(parameter)]
                if name in steps:
                    sparse.state[parameter] = {"step": steps[name], "exp_avg": moments[name][:, :dim].clone(), "exp_avg_sq": moments[name][:, dim:].clone()}
            optimizers["sparse_adam"] = sparse
        saved = self.model, self.optimizers
        self.model, self.optimizers, self._inside = plain, optimizers, True
        try:
            yield True
        finally:
            self.model, self.optimizers = saved
            self._inside = False
            self.model.train()

    def checkpoint(self, directory: Path, with_optimizers: bool) -> None:
        """Rank 0 writes the one-process checkpoint of the gathered tables (a collective, unless called
        from inside rank 0's block)."""
        if self._inside:
            return super().checkpoint(directory, with_optimizers)
        with self._one_process(with_optimizers) as here:
            if here:
                super().checkpoint(directory, with_optimizers)
        dist.barrier()  # written before any rank goes on: a job killed later finds it whole

    def validate(self, epoch: int) -> bool:
        """Rank 0 validates the gathered model (and keeps ``best/``); every rank gets its state and verdict."""
        with self._one_process(with_optimizers=False) as here:
            stopped = super().validate(epoch) if here else False
        return self._from_rank_zero(stopped)

    def _from_rank_zero(self, stopped: bool) -> bool:
        """Rank 0's training state (in place: the loop holds it) and stopping verdict, on every rank."""
        message = [self.state, stopped]
        dist.broadcast_object_list(message, src=0)
        if self.env.rank != 0:
            self.state.clear()
            self.state.update(message[0])
        return bool(message[1])

    def fit(self) -> tuple[torch.nn.Module | None, TrainResult]:
        """Train, then rank 0 loads ``best/``, calibrates it and writes ``result.json``; returns (the
        one-process model on rank 0, None elsewhere; the result on every rank)."""
        import time

        started = time.perf_counter()
        self.train_epochs()
        model, result = None, None
        with self._one_process(with_optimizers=False) as here:
            if here:
                model, result = self.finish(started)
        message = [result]
        dist.broadcast_object_list(message, src=0)
        return model, message[0]


def _table_states(optimizer: torch.optim.Optimizer | None, tables: EmbeddingTables) -> dict[str, dict]:
    """The one-process SparseAdam state of each table (``{vocabulary: {step, exp_avg, exp_avg_sq}}``),
    for the tables that have one."""
    if optimizer is None:
        return {}
    by_parameter = {id(tables.tables[name].weight): name for name in tables.tables}
    states = {}
    for parameter in optimizer.param_groups[0]["params"]:
        if id(parameter) not in by_parameter:
            raise ValueError("a sparse embedding outside the model's tables: distributed training shards only EmbeddingTables")
        if parameter in optimizer.state:
            states[by_parameter[id(parameter)]] = dict(optimizer.state[parameter])
    return states


def _dense_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict entries of ``model`` outside its ``tables`` (on the CPU), without calling the
    sharded collection's ``state_dict``."""
    state = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        if prefix == "tables" or prefix.startswith("tables."):
            continue
        dot = f"{prefix}." if prefix else ""
        for name, parameter in module._parameters.items():
            if parameter is not None:
                state[dot + name] = parameter.detach().cpu()
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                state[dot + name] = buffer.detach().cpu()
    return state


def train_distributed(store: EventStore, model_config: ModelConfig, config: TrainConfig, run_dir: Path, sharding: Sharding = "auto",
                      backend: Backend = "auto", show_progress: bool = True) -> tuple[torch.nn.Module | None, TrainResult, DistributedEnv]:
    """Join torchrun's process group and train (:class:`DistributedTrainer`); returns (rank 0's
    one-process model with the best weights, None elsewhere; the result; this process's place)."""
    env = DistributedEnv.from_torchrun(backend)
    model, result = DistributedTrainer(store, model_config, config, run_dir, env, sharding, show_progress).fit()
    return model, result, env
