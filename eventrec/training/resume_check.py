"""Refuse to resume a run with a configuration other than the one it was trained with.

A killed run resumes from ``last/`` (:mod:`eventrec.training.trainer`). Its weights, optimizer
states and schedule were produced by the ``TrainConfig`` and model config saved in that
checkpoint; continuing them under another learning rate, loss, seed or model would give weights
that no single configuration produces, silently. So every field must match, except the few that
cannot change the trained weights (:data:`RESULT_NEUTRAL_FIELDS`).
"""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from eventrec.model.config import as_recorded

RESULT_NEUTRAL_FIELDS = frozenset({"num_workers", "checkpoint_every", "eval_batch_size", "impression_validation"})
"""TrainConfig fields a run may resume with changed: how data is loaded, how often ``last/`` is
written, the batch size of the validation pass and whether it scores the validation impressions
(allowed off only when they select nothing). None of them changes a weight."""


RETIRED_TRAIN_FIELDS: dict[str, object] = {
    "loss": "bce", "task_weights": None, "listwise_weight": 0.0, "in_batch_weight": 0.0, "catalogue_weight": 0.0,
    "catalogue_logit_weight": 0.0, "catalogue_logit_draws": 32, "logq_column": None, "weight_average_decay": 0.0,
}
"""TrainConfig fields of checkpoints written before the objectives became a list, with the values
that mean what the current defaults mean (``objectives: [bce]``, no ``experimental`` section). A
checkpoint holding another value was trained with another objective: resuming it is refused."""


def changed_fields(saved: dict, current: BaseModel, neutral: frozenset[str] = frozenset(),
                   retired: dict[str, object] | None = None) -> list[str]:
    """``"field: saved → current"`` for each field of ``current`` whose value differs from the
    checkpoint's JSON dump ``saved``, skipping ``neutral`` ones. A field missing from ``saved`` (a
    checkpoint written before the field existed) counts as its default; a ``retired`` field present
    in ``saved`` with another value than its listed one is a change (``→ (retired)``)."""
    now = current.model_dump(mode="json")
    changes = [f"{name}: {saved[name]!r} → (retired)" for name, value in (retired or {}).items()
               if name in saved and name not in now and saved[name] != value]
    for name, field in type(current).model_fields.items():
        if name in neutral:
            continue
        before = saved[name] if name in saved else to_jsonable_python(field.get_default(call_default_factory=True))
        if before != now[name]:
            changes.append(f"{name}: {before!r} → {now[name]!r}")
    return changes


def check_resume(saved_info: dict, train_config: BaseModel, model_config: BaseModel, checkpoint: str) -> None:
    """Raise ``ValueError`` naming every changed field when the checkpoint's ``train_config`` or
    ``model_config`` differs from the ones given (result-neutral TrainConfig fields excepted)."""
    changes = [f"train_config.{c}" for c in changed_fields(saved_info.get("train_config", {}), train_config, RESULT_NEUTRAL_FIELDS, RETIRED_TRAIN_FIELDS)]
    changes += [f"model_config.{c}" for c in changed_fields(as_recorded(saved_info.get("model_config", {})), model_config)]
    if changes:
        raise ValueError(f"cannot resume {checkpoint}: it was trained with another configuration ({'; '.join(changes)}); "
                         "resume with the same configuration, or train into a new run directory")
