"""Experimental objectives against the whole catalogue of items (``TrainConfig.experimental``).

A model with ``dot_term`` scores ``z = r + d``: ``d = <user, item>`` factorised (cheap over every
catalogue item), ``r`` the keyed pooling, cross network and heads (one full pass per candidate).

* ``catalogue_softmax`` trains ``d`` alone with a full softmax over every distinct item of the train
  split's impressions (SASRec's loss, no sampling).
* ``sampled_catalogue_logit`` trains the whole logit ``z`` against the whole catalogue: it draws S
  items per positive from the softmax of ``d`` over the catalogue, scores them with the whole model,
  and corrects for the draw (:func:`~eventrec.training.objectives.losses.dot_sampled_catalogue_loss`),
  so that its expectation is the whole logit's full-catalogue softmax loss. It trains ``r`` where a
  full-catalogue ranking needs it: among the items the dot term already ranks high, which the logged
  negatives seldom are.

Both were part of the best Amazon grocery next-item row (``docs/results.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from eventrec.data.gather import catalogue_items, catalogue_positions
from eventrec.data.jagged import JaggedTensor
from eventrec.store.reader import EventStore
from eventrec.training.objectives.base import ObjectiveConfig, StepContext
from eventrec.training.objectives.losses import catalogue_softmax_loss, dot_sampled_catalogue_loss


@dataclass
class Catalogue:
    """Every distinct item of the train split's impressions: ``ids [C]`` (sorted raw item ids) and
    ``item``, their attribute tensors ``[C]`` on the model's device."""

    ids: np.ndarray
    item: dict

    @classmethod
    def of_train_split(cls, store: EventStore, device: torch.device) -> "Catalogue":
        ids, item = catalogue_items(store, store.split_indices("train"))
        return cls(ids, {k: v.to(device) for k, v in item.items()})

    def positions(self, store: EventStore, batch: Any, device: torch.device) -> torch.Tensor:
        """``[B]``: the catalogue position of each row's item."""
        return torch.from_numpy(catalogue_positions(self.ids, store.item_ids[batch.example_indices.cpu().numpy()])).to(device)


class _CatalogueObjective(ObjectiveConfig):
    needs_dot_parts = True
    needs_catalogue = True

    def check(self, store: EventStore, model_config: Any, where: str) -> None:
        self._check_dot_term(model_config, where)
        self._check_catalogue(store, where)

    def _check_dot_term(self, model_config: Any, where: str) -> None:
        if not getattr(model_config, "dot_term", False):
            raise ValueError(f"{where}.kind: {getattr(self, 'kind')} trains the dot term; build the model with dot_term: true")

    def _check_catalogue(self, store: EventStore, where: str) -> None:
        """The train split's items make a catalogue: told apart by id, each with one dot vector."""
        kind = getattr(self, "kind")
        if store.schema.impressions.context_attributes:
            raise ValueError(f"{where}.kind: {kind}: the candidates have context attributes, so an item's dot vector depends on its request")
        ids = store.item_ids[store.split_indices("train")]  # ints, or strings (numpy object arrays); null ids cannot be told apart
        if ids.dtype.kind not in "iuUO" or (ids.dtype.kind == "O" and any(v is None for v in ids)):
            raise ValueError(f"{where}.kind: {kind}: the impressions need an item column with an id on every row (impressions.item_column)")


class CatalogueSoftmaxObjective(_CatalogueObjective):
    """A full softmax of the dot term over the catalogue. Each step scores all C items' dot vectors,
    cheap next to the keyed pooling."""

    kind: Literal["catalogue_softmax"] = "catalogue_softmax"

    def loss(self, step: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        return catalogue_softmax_loss(step.dot_parts[0], step.catalogue_vectors(), step.batch.labels, step.batch.history_index,
                                      step.positive_item())


class SampledCatalogueLogitObjective(_CatalogueObjective):
    """A full-catalogue softmax of the whole logit, estimated from ``draws`` items per positive drawn
    from the dot term's softmax (one task only)."""

    kind: Literal["sampled_catalogue_logit"] = "sampled_catalogue_logit"
    draws: int = Field(32, ge=1, description="items drawn per positive (each costs one more candidate row)")
    needs_user_side = True

    def check(self, store: EventStore, model_config: Any, where: str) -> None:
        self._check_dot_term(model_config, where)
        if getattr(model_config, "item_counter_windows", None) is not None:
            raise ValueError(f"{where}.kind: sampled_catalogue_logit scores drawn catalogue items, whose item counters at each "
                             "request time it does not compute; set the model's item_counters: null")
        if len(store.label_names) != 1:
            raise ValueError(f"{where}.kind: sampled_catalogue_logit draws items for one task; this store has "
                             f"{len(store.label_names)} ({store.label_names})")
        self._check_catalogue(store, where)

    def loss(self, step: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        value = sampled_catalogue_logit_loss(step.model, step.user, step.batch, step.logits, step.dot_parts[0],
                                             step.catalogue_vectors(), step.catalogue.item, step.positive_item(), self.draws)
        return value, None


def sampled_catalogue_logit_loss(model, user, batch, logits: torch.Tensor, dot_users: torch.Tensor, catalogue_vectors: torch.Tensor,
                                 catalogue_item: dict, positive_item: torch.Tensor, draws: int) -> torch.Tensor:
    """The sampled full-catalogue softmax loss of the whole logit, for the first (only) task.

    ``model``: a ``SequenceRanker`` with ``dot_term``; ``user``: its ``user_side(batch)``;
    ``logits [B, 1]``: its logits of the batch's rows; ``dot_users [G, 1, D]``: the histories' dot
    vectors; ``catalogue_vectors [C, D]``: every catalogue item's dot vector; ``catalogue_item``:
    their attribute tensors ``[C]``; ``positive_item [B]``: each row's catalogue position. Draws
    ``draws`` items per positive row (with replacement, torch's global generator) from
    ``softmax_c <dot_users[g], catalogue_vectors[c]>``. Returns a scalar (0 without positives)."""
    labels = batch.labels[:, 0]
    rows = ((~torch.isnan(labels)) & (labels > 0.5)).nonzero().squeeze(1)  # [P]
    if not rows.numel():
        return logits.sum() * 0.0
    histories = batch.history_index[rows]
    scores = dot_users[histories, 0] @ catalogue_vectors.T  # [P, C]
    with torch.no_grad():
        drawn = torch.multinomial(torch.softmax(scores.float(), dim=1), draws, replacement=True)  # [P, S]
    flat = drawn.reshape(-1)
    drawn_item = {name: values.select_rows(flat) if isinstance(values, JaggedTensor) else values[flat]  # multi-valued: jagged
                  for name, values in catalogue_item.items()}
    drawn_logits = model.candidate_side(user, drawn_item, {}, histories.repeat_interleave(draws))[:, 0].view(len(rows), draws)
    residuals = drawn_logits - scores.gather(1, drawn)  # z - d of each drawn item
    kept = drawn != positive_item[rows].unsqueeze(1)
    return dot_sampled_catalogue_loss(logits[rows, 0], torch.logsumexp(scores, dim=1), residuals, kept)
