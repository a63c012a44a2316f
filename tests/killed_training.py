"""Test helper: a training run that dies part-way, as a killed process would."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventrec.training import trainer as trainer_module
from eventrec.training.trainer import train


def train_killed_at_step_four(store, model_config, config, run_dir: Path, monkeypatch) -> None:
    """Train until the loss of step 4 is computed, then die (KeyboardInterrupt)."""
    calls = {"n": 0}
    original = trainer_module.total_loss

    def dies_at_step_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "total_loss", dies_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        train(store, model_config, config, run_dir, show_progress=False)
    monkeypatch.setattr(trainer_module, "total_loss", original)
