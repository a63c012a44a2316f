"""The two production objectives: binary cross-entropy per impression, and the softmax over each
request's candidates (listwise)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from eventrec.store.reader import EventStore
from eventrec.training.objectives.base import ObjectiveConfig, StepContext
from eventrec.training.objectives.losses import multitask_loss, request_softmax_loss


class BceObjective(ObjectiveConfig):
    """Binary cross-entropy per impression and task (the scores stay probabilities: Platt
    calibration assumes it). ``task_weights``: one factor per task (None: all 1)."""

    kind: Literal["bce"] = "bce"
    task_weights: list[float] | None = Field(None, description="a factor per task of the store's labels (None: 1 each)")

    def check(self, store: EventStore, model_config: Any, where: str) -> None:
        if self.task_weights is not None and len(self.task_weights) != len(store.label_names):
            raise ValueError(f"{where}.task_weights: {len(self.task_weights)} weights for the store's "
                             f"{len(store.label_names)} tasks ({store.label_names})")

    def loss(self, step: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        return multitask_loss(step.logits, step.batch.labels, self.task_weights)


class RequestSoftmaxObjective(ObjectiveConfig):
    """Softmax cross-entropy over each request's candidates, per task (e.g. a positive and sampled
    negatives; batches keep requests whole). Alone it trains a ranking (set ``calibrate: false``);
    beside ``bce`` it sharpens the order within each request while the bce keeps probabilities."""

    kind: Literal["request_softmax"] = "request_softmax"
    needs_requests = True

    def check(self, store: EventStore, model_config: Any, where: str) -> None:
        if store.request_ids is None or store.request_ids.dtype.kind not in "iu":
            raise ValueError(f"{where}.kind: request_softmax needs integer request ids (the schema's impressions.request_column)")

    def loss(self, step: StepContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if step.batch.request_ids is None:
            raise ValueError("request_softmax: this model's batches carry no request ids")
        return request_softmax_loss(step.logits, step.batch.labels, step.batch.request_ids)
