"""`eventrec train` killed with SIGKILL at several points, then rerun, ends with the same weights and
logs as an unkilled run (issue 21, kill test): a real child process, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dying_child import child_source

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """model: {model_dim: 16, num_heads: 2, attribute_dim: 4, pooling_slots: 2, mlp_dims: [8]}
train: {epochs: 3, batch_size: 2, warmup_steps: 1, patience: 5, checkpoint_every: 100}
"""
# the child: its n-th call of `module|attribute.path:n` kills the process with SIGKILL (tests/dying_child.py)
CHILD = child_source()
KILLS = [
    "eventrec.training.trainer|Trainer.step:4",           # mid epoch 2: last/ is at step 2, steps 3 logged
    "os|rename:2",                                         # between the two renames of a checkpoint swap
    "eventrec.training.checkpoint|save_file:2",           # while a checkpoint's temporary folder is written
    "eventrec.training.logs|CsvLog.write:3",              # while logging a step (after the optimizer step)
]


def _train(store: Path, config: Path, out: Path, kill: str = "") -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", CHILD, kill, "train", "--store", str(store), "--config", str(config), "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_train_killed_at_several_points_resumes_to_the_same_weights_and_logs(tiny_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    reference = _train(tiny_store.path, config, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    run = tmp_path / "killed"
    for kill in KILLS:
        result = _train(tiny_store.path, config, run, kill)
        assert result.returncode == -signal.SIGKILL, (kill, result.returncode, result.stderr[-2000:])
    result = _train(tiny_store.path, config, run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from" in result.stderr
    for checkpoint in ("best", "last"):
        expected, got = load_file(str(tmp_path / "reference" / checkpoint / "model.safetensors")), load_file(str(run / checkpoint / "model.safetensors"))
        assert expected.keys() == got.keys()
        for key, value in expected.items():
            assert torch.equal(value, got[key]), (checkpoint, key)
    for log in ("train_log.csv", "eval_log.csv"):
        assert (run / log).read_text() == (tmp_path / "reference" / log).read_text(), log
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())  # no leftovers
