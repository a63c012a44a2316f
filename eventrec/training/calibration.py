"""Platt scaling of a trained model's task heads, fitted on the validation split."""

from __future__ import annotations

import numpy as np
import torch

from eventrec.model.heads import fit_platt
from eventrec.store.reader import EventStore


@torch.no_grad()
def calibrate_on_validation(model: torch.nn.Module, store: EventStore, validation: np.ndarray, batch_fn, batch_size: int) -> None:
    """Fit each task's logit scale and bias on the validation rows ``[N]`` (Platt scaling), in place."""
    logits = []
    for start in range(0, len(validation), batch_size):
        logits.append(model(batch_fn(store, validation[start : start + batch_size])))
    logits = torch.cat(logits)
    labels = torch.from_numpy(store.labels[validation])
    heads = model.heads
    old_scale, old_bias = heads.calibration_scale.clone(), heads.calibration_bias.clone()
    raw = (logits - old_bias) / old_scale
    for task in range(labels.shape[1]):
        with torch.enable_grad():
            scale, bias = fit_platt(raw[:, task], labels[:, task])
        heads.calibration_scale[task] = scale
        heads.calibration_bias[task] = bias
