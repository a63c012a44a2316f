"""The training configuration: optimisation, validation and the objectives, typed (errors name the field).

Research settings that have not become part of a production recipe sit under ``experimental``;
``eventrec train`` refuses a config that has that section unless given ``--experimental``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eventrec.training.objectives import (BceObjective, CatalogueSoftmaxObjective, ExperimentalObjective, Objective, ObjectiveConfig,
                                         SampledCatalogueLogitObjective)

EXPERIMENTAL_KINDS = tuple(c.model_fields["kind"].default for c in (CatalogueSoftmaxObjective, SampledCatalogueLogitObjective))


class ExperimentalTrainConfig(BaseModel):
    """Research objectives and settings: they helped one benchmark row (``docs/results.md``) but are
    not part of a production recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objectives: list[ExperimentalObjective] = Field(
        default_factory=list, description="added, with their weights, after TrainConfig.objectives (catalogue_softmax, "
        "sampled_catalogue_logit; both need a model built with dot_term)")
    weight_average_decay: float | None = Field(
        None, gt=0, lt=1, description="validate, early-stop and keep as 'best' an exponential moving average of the weights "
        "with this decay per step (eventrec.training.weight_average; e.g. 0.99), while training the raw weights")
    user_batches: bool = Field(
        False, description="train and validate on impressions grouped by user (eventrec.data.user_batches): a batch holds whole "
        "users (about batch_size impressions), each user's history is encoded once and each impression reads its prefix (the same "
        "logits as per-impression batches); needs candidate_search, an extendable encoder and every history within its stream's "
        "max_length")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(4096, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(50, ge=0)
    clip_norm: float = Field(1.0, gt=0)
    patience: int = Field(1, ge=1, description="validations without improvement (of stop_on) before stopping")
    validations_per_epoch: int = Field(1, ge=1, description="validate (and maybe stop) this many times per epoch")
    calibrate: bool = Field(True, description="fit Platt scaling per task on the validation split after training (needs a bce objective)")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    objectives: list[Objective] = Field(
        default_factory=lambda: [BceObjective()], min_length=1,
        description="the losses, summed with their weights in this order: {kind: bce, task_weights} (binary cross-entropy "
        "per impression), {kind: request_softmax} (softmax over each request's candidates; batches keep requests whole)")
    stop_on: Literal["ne", "auc", "score"] = Field(
        "ne", description="early stopping on the first task's validation NE or AUC, or on `score`: the value returned by the "
        "`validation_score` function given to train() (higher is better, e.g. a full-catalogue hit rate)")
    impression_validation: bool = Field(
        True, description="at each validation, also score the validation split's impressions (NE, AUC, gAUC, logloss, "
        "calibration per task: eval_log.csv and the history). stop_on ne / auc select on them; with stop_on score they "
        "select nothing, and false skips that pass over the validation impressions (it changes no weight)")
    experimental: ExperimentalTrainConfig | None = Field(
        None, description="research objectives and settings; `eventrec train` refuses them without --experimental")

    @model_validator(mode="before")
    @classmethod
    def _experimental_kinds_under_experimental(cls, data):
        objectives = data.get("objectives") if isinstance(data, dict) else None
        for i, objective in enumerate(objectives if isinstance(objectives, list) else []):
            kind = objective.get("kind") if isinstance(objective, dict) else getattr(objective, "kind", None)
            if kind in EXPERIMENTAL_KINDS:
                raise ValueError(f"objectives[{i}].kind: {kind!r} is experimental; list it under experimental.objectives")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        seen: dict[str, str] = {}
        for where, objective in self.all_objectives():
            kind = getattr(objective, "kind")
            if kind in seen:
                raise ValueError(f"{where}.kind: {kind!r} is already {seen[kind]}; list each objective once (its weight scales it)")
            seen[kind] = where
        if self.calibrate and "bce" not in seen:
            raise ValueError("calibrate: Platt scaling assumes a bce objective; set calibrate: false, or add {kind: bce} to objectives")
        if not self.impression_validation and self.stop_on != "score":
            raise ValueError(f"impression_validation: stop_on {self.stop_on!r} selects on the validation impressions; keep it true, or stop_on: score")
        return self

    def all_objectives(self) -> list[tuple[str, ObjectiveConfig]]:
        """(place in the config, objective) of every objective, in the order their losses are added."""
        out: list[tuple[str, ObjectiveConfig]] = [(f"objectives[{i}]", o) for i, o in enumerate(self.objectives)]
        if self.experimental is not None:
            out += [(f"experimental.objectives[{i}]", o) for i, o in enumerate(self.experimental.objectives)]
        return out

    @property
    def needs_requests(self) -> bool:
        """Whether batches must keep requests whole (a listwise objective)."""
        return any(o.needs_requests for _, o in self.all_objectives())

    @property
    def user_batches(self) -> bool:
        """Whether batches hold whole users (the experimental ``user_batches``)."""
        return self.experimental is not None and self.experimental.user_batches

    @property
    def weight_average_decay(self) -> float | None:
        """The experimental weight average's decay per step, or None (off)."""
        return None if self.experimental is None else self.experimental.weight_average_decay
