"""A quality variant file, validated, and the one place where benchmark options become configs.

A variant file (``bench/quality/variants/<table>/<name>.yaml``) names one row of a table of
``docs/results.md``::

    dataset: trivago                 # trivago | ml100k | amazon_grocery
    label: eventrec sequence model   # the row's name in the table
    seeds: 3                         # seeds 0 .. seeds-1
    baseline: false                  # trivago: a baseline row (the main row is compared against it)
    model: {kind: sequence}          # SequenceModelConfig / DlrmConfig fields
    train: {epochs: 1, batch_size: 512, validations_per_epoch: 4, patience: 2}   # TrainConfig fields (objectives, experimental, ...)
    protocol: {select: ne}           # the benchmark's own options (TrivagoProtocol / NextItemProtocol)

The folder (``<table>``) is the table the row belongs to, and the ``docs/results.md`` section the
runner rewrites. ``train:`` must not set the fields the protocol decides (:data:`DERIVED`): the seed,
early stopping and the validation passes (``protocol.select``). The run id is a
short hash of the resolved configs (model, train without the seed, protocol, dataset): the label and
the seed count are not part of it, so renaming a row or adding seeds reuses the finished runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from eventrec.model.config import DlrmConfig, SequenceModelConfig
from eventrec.training.factory import ModelConfig
from eventrec.training.config import TrainConfig

VARIANTS = Path(__file__).resolve().parent / "variants"
DERIVED = ("seed", "stop_on", "impression_validation")  # set from the protocol, never in train:
MODEL_KINDS = {"sequence": SequenceModelConfig, "dlrm": DlrmConfig}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrivagoProtocol(_Strict):
    """trivago clicks (``bench/quality/trivago.py``, ``protocol:`` of its variant files): the store's time split."""

    select: Literal["ne", "auc", "mrr"] = Field(
        "ne", description="early stopping and the kept weights: validation NE or AUC of the impressions, or the MRR of the "
        "clicked hotel within each validation clickout (TrainConfig.stop_on: score)")


class NextItemProtocol(_Strict):
    """Next item over the whole catalogue (``bench/quality/next_item.py``, ``protocol:`` of its variant files): leave-one-out by time per user."""

    ties: Literal["row", "shuffled"] = Field(
        "row", description="order of same-time interactions: file row, or one seeded shuffle shared by every model")
    negatives: int = Field(8, ge=1, description="sampled negatives per training / validation target")
    sampling: Literal["uniform", "popularity"] = Field("uniform", description="how negatives are drawn (popularity: counts ** 0.75)")
    negative_rounds: int = Field(
        1, ge=1, description="each training target is written as this many requests with their own negatives; train.epochs "
        "stays the number of passes over the targets (the trainer runs epochs / rounds passes over the requests)")
    history_negatives: int = Field(0, ge=0, description="each request also gets up to this many of the user's earlier items as negatives")
    item_ids: Literal["exact", "hashed"] = Field("exact", description="item ids as a vocabulary, or hashed into the schema's buckets")
    select: Literal["auc", "ndcg"] = Field(
        "auc", description="early stopping and model selection: AUC of the sampled validation requests, or the "
        "full-catalogue NDCG@10 of the validation items (TrainConfig.stop_on: score)")
    test_users: int = Field(0, ge=0, description="rank the test items of this many users drawn at random (0 = all)")
    validation_users: int = Field(0, ge=0, description="with select ndcg: users whose validation item is ranked (0 = all)")


class _Variant(_Strict):
    label: str = Field(min_length=1, description="the row's name in its table")
    seeds: int = Field(3, ge=1)
    baseline: bool = Field(False, description="trivago: a baseline the main row is compared against (not a variant of it)")
    model: ModelConfig
    train: TrainConfig

    @field_validator("model", mode="before")
    @classmethod
    def _model_kind(cls, value):
        if isinstance(value, dict):
            kind = value.get("kind", "sequence")
            if kind not in MODEL_KINDS:
                raise ValueError(f"kind: one of {sorted(MODEL_KINDS)}, got {kind!r}")
            return MODEL_KINDS[kind].model_validate(value)
        return value

    @field_validator("train", mode="after")
    @classmethod
    def _no_derived_fields(cls, value: TrainConfig) -> TrainConfig:
        derived = sorted(set(DERIVED) & value.model_fields_set)
        if derived:
            raise ValueError(f"{', '.join(derived)}: set by the runner (seed) and the protocol (select); remove from train:")
        return value

    def train_config(self, seed: int) -> TrainConfig:
        """The ``TrainConfig`` of one seed: ``train:`` plus what the protocol decides."""
        return TrainConfig.model_validate({**self.train.model_dump(exclude_unset=True), **self.derived_train_fields(), "seed": seed})

    def derived_train_fields(self) -> dict:
        raise NotImplementedError

    @property
    def run_id(self) -> str:
        """12 hex digits of the SHA-256 of the resolved configs (label, seeds and baseline excluded)."""
        resolved = {"dataset": self.dataset, "model": self.model.model_dump(mode="json"),  # type: ignore[attr-defined]
                    "train": self.train_config(0).model_dump(mode="json", exclude={"seed"}), "protocol": self.protocol.model_dump(mode="json")}  # type: ignore[attr-defined]
        return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]

    def resolved(self) -> dict:
        """What a run folder records: the label, the run id and every resolved config (seed 0's train config)."""
        return {"label": self.label, "run_id": self.run_id, "dataset": self.dataset, "model": self.model.model_dump(mode="json"),  # type: ignore[attr-defined]
                "train": self.train_config(0).model_dump(mode="json"), "protocol": self.protocol.model_dump(mode="json")}  # type: ignore[attr-defined]


class TrivagoVariant(_Variant):
    dataset: Literal["trivago"]
    protocol: TrivagoProtocol = TrivagoProtocol()

    def derived_train_fields(self) -> dict:
        return {"stop_on": {"ne": "ne", "auc": "auc", "mrr": "score"}[self.protocol.select]}


class NextItemVariant(_Variant):
    dataset: Literal["ml100k", "amazon_grocery"]
    protocol: NextItemProtocol = NextItemProtocol()

    @model_validator(mode="after")
    def _protocol_fits_training(self) -> "NextItemVariant":
        rounds = self.protocol.negative_rounds
        if self.train.epochs % rounds:
            raise ValueError(f"protocol.negative_rounds: must divide train.epochs ({self.train.epochs}), got {rounds}")
        return self

    def derived_train_fields(self) -> dict:
        rounds, select = self.protocol.negative_rounds, self.protocol.select
        return {  # one trainer epoch over the requests = `rounds` passes over the targets
            "epochs": self.train.epochs // rounds, "validations_per_epoch": self.train.validations_per_epoch * rounds,
            "stop_on": "auc" if select == "auc" else "score", "impression_validation": select != "ndcg",  # the sampled pass selects nothing then
        }


Variant = Annotated[Union[TrivagoVariant, NextItemVariant], Field(discriminator="dataset")]
_VARIANT = TypeAdapter(Variant)


def load_variant(path: Path) -> TrivagoVariant | NextItemVariant:
    """A variant file, validated (errors name the file and the field)."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a mapping with dataset, label, seeds, model, train, protocol expected")
    try:
        return _VARIANT.validate_python(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def variant_files(paths: list[Path]) -> list[Path]:
    """Files and folders (every ``*.yaml`` inside, ``main.yaml`` first then by name) → variant files."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(path.glob("*.yaml"), key=lambda p: (p.name != "main.yaml", p.name))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such variant file or folder")
    return out
