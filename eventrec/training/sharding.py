"""The process group, TorchRec's sharding plan and ``DistributedModelParallel``, and the gathering of
sharded tables onto rank 0 (distributed training; imported only under ``torchrun``).

* :class:`DistributedEnv`: rank, world size and device of this process, from torchrun's variables;
  the backend is NCCL where CUDA exists and gloo otherwise (or as asked).
* :func:`shard_model`: TorchRec's ``EmbeddingShardingPlanner`` plans the
  :class:`~eventrec.model.sharded_tables.ShardedEmbeddingTables` of a model (row-wise or table-wise,
  as ``sharding`` allows, fused exact SGD: see that module for why), and ``DistributedModelParallel``
  shards them and wraps the rest of the model in ``DistributedDataParallel``.
* :func:`shard_layout` / :func:`gather_rows`: where each table's rows live, and every shard's rows
  sent to rank 0 to form whole tables (checkpoints and validation, in the one-process format).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from fbgemm_gpu.split_embedding_configs import EmbOptimType

from eventrec.model.sharded_tables import ShardedEmbeddingTables

Sharding = Literal["auto", "row_wise", "table_wise"]
SHARDING_TYPES: dict[str, list[str]] = {"auto": ["row_wise", "table_wise"], "row_wise": ["row_wise"], "table_wise": ["table_wise"]}
Backend = Literal["auto", "gloo", "nccl"]


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node of
    ``local_world`` processes, the collective ``backend`` and the ``device`` it computes on."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    backend: str
    device: torch.device

    @classmethod
    def from_torchrun(cls, backend: Backend = "auto") -> "DistributedEnv":
        """Join the process group that torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) describe, once per process."""
        missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise RuntimeError(f"not started by torchrun: {', '.join(missing)} unset; run `torchrun --nproc-per-node N -m eventrec.cli train ...` "
                               "or `eventrec train --nproc-per-node N ...`")
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend: expected auto, gloo or nccl, got {backend!r}")
        local_rank = int(os.environ["LOCAL_RANK"])
        device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend)
        world = dist.get_world_size()
        return cls(dist.get_rank(), world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world)), backend, device)

    def leave(self) -> None:
        """Leave the process group once training ended well on every rank (a barrier, then
        ``destroy_process_group``). Without it, gloo's worker threads can outlive the interpreter and
        abort the process at exit (SIGABRT, "terminate called without an active exception"). Not
        called after a failure: a rank still inside a collective would hang the others."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def quiet_torchrec() -> None:
    """TorchRec's planner warns about its own defaults at every start; keep its errors only."""
    logging.getLogger("torchrec").setLevel(logging.ERROR)


def plan_tables(model: nn.Module, env: DistributedEnv, sharding: Sharding, batch_size: int) -> tuple[ShardingPlan, list]:
    """TorchRec's plan for the sharded tables of ``model`` (every rank gets rank 0's plan) and the
    sharders that carry it out. ``batch_size``: examples per rank and step (the planner's cost model)."""
    if sharding not in SHARDING_TYPES:
        raise ValueError(f"sharding: expected one of {sorted(SHARDING_TYPES)}, got {sharding!r}")
    tables = [m for m in model.modules() if isinstance(m, ShardedEmbeddingTables)]
    if len(tables) != 1:
        raise ValueError(f"the model holds {len(tables)} sharded table collections; exactly one expected")
    fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}  # accumulates -grad (model/sharded_tables.py)
    sharders = [EmbeddingCollectionSharder(fused_params=fused)]
    constraints = {name: ParameterConstraints(sharding_types=SHARDING_TYPES[sharding], compute_kernels=["fused"]) for name in tables[0].names}
    topology = TopologyFactory.create_topology(TrainerConfig(world_size=env.world, local_world_size=env.local_world),
                                               kernel_config=KernelConfig(compute_device=env.device.type))
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=max(1, batch_size), constraints=constraints, debug=False,
                                       storage_reservation=FixedPercentageStorageReservation(0.15))
    return planner.collective_plan(model, sharders, dist.GroupMember.WORLD), sharders


def shard_model(model: nn.Module, env: DistributedEnv, plan: ShardingPlan, sharders: list) -> DistributedModelParallel:
    """``DistributedModelParallel`` of ``model`` under ``plan``: its sharded tables split over the
    ranks, the rest in ``DistributedDataParallel`` (unused parameters allowed: a rank's batch may miss
    a stream that another rank's has)."""
    wrapper = DefaultDataParallelWrapper(static_graph=False, find_unused_parameters=True)
    with warnings.catch_warnings():  # TorchRec's DDP wrapper passes an argument DDP now calls deprecated
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD), device=env.device, plan=plan,
                                        sharders=sharders, data_parallel_wrapper=wrapper)


def shard_layout(plan: ShardingPlan, tables_path: str) -> dict[str, list[tuple[int, int, int]]]:
    """Per vocabulary, its shards as ``(rank, first row, rows)`` in the plan's order; ``tables_path``:
    the collection's module path in the planned model (e.g. ``"tables.collection"``)."""
    layout: dict[str, list[tuple[int, int, int]]] = {}
    for name, parameter in plan.get_plan_for_module(tables_path).items():
        if parameter.sharding_type not in ("row_wise", "table_wise"):
            raise ValueError(f"table {name!r}: sharding {parameter.sharding_type!r}, only row_wise and table_wise are supported")
        layout[name] = [(shard.placement.rank(), shard.shard_offsets[0], shard.shard_sizes[0]) for shard in parameter.sharding_spec.shards]
    return layout


def describe(layout: dict[str, list[tuple[int, int, int]]]) -> str:
    """One line per table: how its rows are shared out."""
    return "\n".join(f"  {name}: " + ", ".join(f"rows {start}..{start + rows - 1} on rank {rank}" for rank, start, rows in shards)
                     for name, shards in layout.items())


@torch.no_grad()
def gather_rows(local: dict[str, torch.Tensor], layout: dict[str, list[tuple[int, int, int]]], num_rows: dict[str, int],
                env: DistributedEnv, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """Whole tables on rank ``dst`` (CPU float32 ``[V, width]``, None elsewhere) from every rank's
    ``local[vocabulary]`` rows ``[rows here, width]`` (absent where the rank holds none), placed as
    ``layout`` says. Point-to-point sends, in the layout's order on every rank (a collective)."""
    out: dict[str, torch.Tensor] | None = {} if env.rank == dst else None
    width = _agree_width(next(iter(local.values())).shape[1] if local else None, env)
    for name in sorted(layout):
        shards = layout[name]
        if env.rank == dst:
            whole = torch.empty(num_rows[name], width)
            for rank, start, rows in shards:
                if rank == dst:
                    whole[start : start + rows] = local[name].cpu()
                else:
                    buffer = torch.empty(rows, width, device=env.device)
                    dist.recv(buffer, src=rank)
                    whole[start : start + rows] = buffer.cpu()
            out[name] = whole
        else:
            for rank, _, _ in shards:
                if rank == env.rank:
                    dist.send(local[name].contiguous(), dst=dst)
    return out


def _agree_width(width: int | None, env: DistributedEnv) -> int:
    """The row width every rank sends (ranks without any shard do not know it)."""
    value = torch.tensor([width if width is not None else -1], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())
