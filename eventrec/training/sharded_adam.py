"""SparseAdam on this rank's shards of the sharded embedding tables (distributed training).

In one process the tables train with ``torch.optim.SparseAdam`` on sparse gradients
(:mod:`eventrec.training.optim`). Sharded, each row's gradient and read count arrive, summed over
all ranks, in its owner's accumulator and counter columns
(:mod:`eventrec.model.sharded_tables`); :class:`ShardedSparseAdam` turns them into the sparse
gradient of the owner's shard (the rows read this step, also those whose gradient is zero, as a
lookup's sparse gradient lists them) and calls ``torch.optim.SparseAdam``'s own step on it. A table
that no rank read this step gets no gradient (its step count stays, as in one process); one read on
some rank gets a possibly empty gradient on every shard, so that all its shards count the step.

State conversion: :meth:`ShardedSparseAdam.load_table_states` takes one-process states (whole
tables: ``step``, ``exp_avg [V, E]``, ``exp_avg_sq [V, E]``) and keeps this rank's rows;
:meth:`ShardedSparseAdam.table_states` gives this rank's rows back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from eventrec.model.sharded_tables import ShardedEmbeddingTables


class ShardedSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (learning rate ``lr``, default betas and eps) over the weight columns
    of this rank's shards of ``tables``. ``row_starts[vocabulary]``: the first table row of this rank's
    shard. ``gradient_scale``: the factor from the accumulated sums to the gradient of the loss (1 when
    the loss each rank back-propagates is scaled to cancel TorchRec's division by the world size).
    ``device``: where the shards are (for a rank that holds none)."""

    def __init__(self, tables: ShardedEmbeddingTables, row_starts: dict[str, int], lr: float, gradient_scale: float = 1.0,
                 group: dist.ProcessGroup | None = None, device: torch.device | None = None):
        self.tables, self.row_starts, self.gradient_scale, self.group = tables, dict(row_starts), gradient_scale, group
        self.vocabularies = [name for name in tables.names if tables.local_rows(name).numel()]
        dim = tables.dim
        # leaves that share the shards' storage: SparseAdam's in-place update writes the table's weights
        self.weights = {name: nn.Parameter(tables.local_rows(name).detach()[:, :dim]) for name in self.vocabularies}
        if not self.weights:  # a rank without any shard (more ranks than rows to share): one empty parameter
            self.weights = {"": nn.Parameter(torch.zeros(0, dim, device=device))}
        super().__init__(list(self.weights.values()), lr=lr)

    def read_anywhere(self) -> dict[str, bool]:
        """Per vocabulary, whether any rank's forward pass read the table this step (a collective)."""
        flags = torch.tensor([name in self.tables.read_vocabularies for name in self.tables.names], dtype=torch.int32)
        if dist.is_initialized():
            device = next(iter(self.weights.values())).device
            flags = flags.to(device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        return {name: bool(flag) for name, flag in zip(self.tables.names, flags.tolist())}

    @torch.no_grad()
    def take_gradients(self) -> None:
        """Set each shard's sparse gradient from its accumulator and counter, then zero them."""
        read = self.read_anywhere()
        dim = self.tables.dim
        for name, weight in self.weights.items():
            if not name or not read[name]:
                weight.grad = None
                continue
            rows = self.tables.local_rows(name)
            touched = (rows[:, 2 * dim] != 0).nonzero().squeeze(1)
            values = rows[touched, dim : 2 * dim] * -self.gradient_scale
            rows[touched, dim:] = 0
            weight.grad = torch.sparse_coo_tensor(touched.unsqueeze(0), values, weight.shape, check_invariants=False)  # rows in range

    @torch.no_grad()
    def step(self, closure=None):
        """Take the accumulated gradients (a collective: every rank calls it each step), then SparseAdam."""
        self.take_gradients()
        return super().step(closure)

    def load_table_states(self, states: dict[str, dict]) -> None:
        """``states[vocabulary]``: a one-process SparseAdam state of the whole table (``step``,
        ``exp_avg [V, E]``, ``exp_avg_sq [V, E]``); vocabularies without one start fresh."""
        for name, weight in self.weights.items():
            self.state.pop(weight, None)
            if name in states:
                start, count = self.row_starts[name], len(weight)
                full = states[name]
                self.state[weight] = {"step": full["step"], "exp_avg": full["exp_avg"][start : start + count].to(weight.device).clone(),
                                      "exp_avg_sq": full["exp_avg_sq"][start : start + count].to(weight.device).clone()}

    def table_states(self) -> dict[str, dict]:
        """This rank's rows of each table's state: ``{vocabulary: {step, exp_avg [rows, E], exp_avg_sq}}``
        (tables without a state yet, never read, are left out)."""
        return {name: dict(self.state[weight]) for name, weight in self.weights.items() if name and weight in self.state}
