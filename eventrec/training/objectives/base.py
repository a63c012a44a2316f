"""What every training objective shares: its config base class, one step's forward outputs, and the
weighted sum of the objectives' losses.

An objective is a typed config entry (``kind`` picks the class, ``weight`` scales its loss) that
checks itself against the store and the model config before training (errors name its place in the
config, e.g. ``objectives[1].kind``), says what the forward pass must return (``needs_*``), and
computes its loss from a :class:`StepContext`. The trainer adds the losses with
:func:`total_loss` in config order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from eventrec.store.reader import EventStore


class ObjectiveConfig(BaseModel):
    """Base of every objective: ``weight`` times its loss is added to the training loss."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, gt=0, description="the factor of this objective's loss in the sum")

    needs_requests: ClassVar[bool] = False
    """Batches must keep requests whole (a softmax over each request's candidates)."""
    needs_dot_parts: ClassVar[bool] = False
    """The forward pass must return the dot term's user and item vectors (a model with ``dot_term``)."""
    needs_user_side: ClassVar[bool] = False
    """The forward pass must keep the user side, to score more candidates against it."""
    needs_catalogue: ClassVar[bool] = False
    """The step needs the train split's catalogue of items (:class:`~eventrec.training.objectives.catalogue.Catalogue`)."""

    def check(self, store: EventStore, model_config: Any, where: str) -> None:
        """Raise ``ValueError`` starting with ``where`` (e.g. ``"objectives[1]"``) and the field at fault
        when this objective cannot train on ``store`` with a model of ``model_config``."""

    def loss(self, step: "StepContext") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the scalar loss, before the weight; the per-task losses ``[T]`` detached, or None)."""
        raise NotImplementedError


@dataclass
class StepContext:
    """One training step's batch and forward outputs, shared by the objectives.

    ``logits [B, T]``; ``dot_parts``: ``[users [G, T, D], items [B, D]]`` when an objective needs
    them; ``user``: the model's user side when an objective needs it; ``catalogue``: the train
    split's catalogue when an objective needs it. The catalogue's dot vectors and the rows'
    catalogue positions are computed once per step, on first use (so that two catalogue objectives
    share one graph)."""

    model: torch.nn.Module
    store: EventStore
    batch: Any
    logits: torch.Tensor
    dot_parts: list = field(default_factory=list)
    user: Any = None
    catalogue: Any = None
    _cache: dict = field(default_factory=dict)

    def positive_item(self) -> torch.Tensor:
        """``[B]``: each row's position in the catalogue."""
        if "positive_item" not in self._cache:
            self._cache["positive_item"] = self.catalogue.positions(self.store, self.batch, self.logits.device)
        return self._cache["positive_item"]

    def catalogue_vectors(self) -> torch.Tensor:
        """``[C, D]``: every catalogue item's dot vector (in the graph: trained)."""
        if "catalogue_vectors" not in self._cache:
            self.positive_item()  # the order of the code this replaced (no effect on values)
            self._cache["catalogue_vectors"] = self.model.dot_item_vectors(self.catalogue.item)
        return self._cache["catalogue_vectors"]


def forward(model: torch.nn.Module, batch: Any, objectives: list[ObjectiveConfig], store: EventStore, catalogue: Any) -> StepContext:
    """Run the model on ``batch`` in the form the objectives need (the plain ``model(batch)`` unless
    one needs the dot term's parts or the user side)."""
    dot_parts: list = []
    user = None
    if any(o.needs_user_side for o in objectives):
        user = model.user_side(batch)
        logits = model.candidate_side(user, batch.item, batch.context, batch.history_index, dot_parts, batch.item_counts)
    elif any(o.needs_dot_parts for o in objectives):
        logits = model(batch, dot_parts)
    else:
        logits = model(batch)
    return StepContext(model, store, batch, logits, dot_parts, user, catalogue)


def total_loss(objectives: list[ObjectiveConfig], step: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Σ weight · loss`` over ``objectives`` in order, each loss computed just before it is added
    (the order of the float operations, and of the autograd graph, the single-loss code had). A
    weight of 1 adds its loss as it is, so a lone objective of weight 1 is exactly its loss. Returns
    (the total, the first objective's per-task losses ``[T]`` for the training log, or None)."""
    if not objectives:
        raise ValueError("objectives: at least one objective is needed")
    total: torch.Tensor | None = None
    per_task: torch.Tensor | None = None
    for index, objective in enumerate(objectives):
        value, tasks = objective.loss(step)
        per_task = tasks if index == 0 else per_task
        term = value if objective.weight == 1.0 else objective.weight * value
        total = term if total is None else total + term
    assert total is not None
    return total, per_task
