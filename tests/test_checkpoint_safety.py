"""Checkpoints refuse what they cannot safely use (issue 21, items 2, 7, 9, 10): another store's
encodings, damaged or crafted files, an empty validation split, NaN weights; resumed logs hold each
step once."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from eventrec.cli import app
from eventrec.model.config import SequenceModelConfig
from eventrec.schema import load_schema
from eventrec.serving import RankingService
from eventrec.store.build import build_store
from eventrec.store.reader import EventStore
from eventrec.training import trainer as trainer_module
from eventrec.training.checkpoint import CheckpointError
from eventrec.training.factory import load_trained_model
from eventrec.training.store_match import StoreMismatch
from killed_training import train_killed_at_step_four
from eventrec.training.trainer import TrainConfig, train

MODEL = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])
TRAIN = TrainConfig(epochs=3, batch_size=2, warmup_steps=1, checkpoint_every=1, patience=5)
runner = CliRunner()


def _store_with_splits(tiny_world, directory: Path, **splits) -> EventStore:
    """The tiny logs built with other split boundaries."""
    schema_path, data = tiny_world
    schema = yaml.safe_load(schema_path.read_text())
    schema["splits"] = splits
    other = directory / "schema.yaml"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_text(yaml.safe_dump(schema))
    build_store(load_schema(other), data, directory / "store")
    return EventStore.open(directory / "store")


@pytest.fixture()
def best(tiny_store, tmp_path) -> Path:
    train(tiny_store, MODEL, TRAIN, tmp_path / "run", show_progress=False)
    return tmp_path / "run" / "best"


def test_a_checkpoint_refuses_a_store_with_other_encodings(tiny_world, tiny_store, best, tmp_path):
    other = _store_with_splits(tiny_world, tmp_path / "other", train_end=60, validation_end=200)
    assert other.encoding_fingerprint != tiny_store.encoding_fingerprint
    same = _store_with_splits(tiny_world, tmp_path / "same", train_end=100, validation_end=200)
    assert same.encoding_fingerprint == tiny_store.encoding_fingerprint  # a rebuild with the same split is the same store
    load_trained_model(best, same)
    with pytest.raises(StoreMismatch) as error:
        load_trained_model(best, other)
    for part in (tiny_store.encoding_fingerprint, other.encoding_fingerprint, str(tiny_store.path.resolve()), str(other.path.resolve())):
        assert part in str(error.value)
    with pytest.raises(StoreMismatch):
        RankingService.load(best, other)
    with pytest.warns(UserWarning, match="allow_store_mismatch"):
        RankingService.load(best, other, allow_store_mismatch=True)
    store_args = ["evaluate", "--store", str(other.path), "--checkpoint", str(best), "--split", "validation"]
    result = runner.invoke(app, store_args)
    assert result.exit_code == 2 and "encoding fingerprint" in result.output, result.output
    assert runner.invoke(app, [*store_args, "--allow-store-mismatch"]).exit_code == 0


def test_a_checkpoint_without_the_fingerprint_loads_with_a_warning(tiny_store, best):
    path = best / "checkpoint.json"
    info = json.loads(path.read_text())
    del info["store"]
    path.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="predates store fingerprints"):
        load_trained_model(best, tiny_store)


def test_resuming_on_another_store_is_refused(tiny_world, tiny_store, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: None)  # build and checkpoint only
    trainer = trainer_module.Trainer(tiny_store, MODEL, TRAIN, tmp_path / "run", show_progress=False)
    trainer.checkpoint(trainer.last, with_optimizers=True)
    other = _store_with_splits(tiny_world, tmp_path / "other", train_end=60, validation_end=200)
    with pytest.raises(StoreMismatch):
        trainer_module.Trainer(other, MODEL, TRAIN, tmp_path / "run", show_progress=False)


def test_a_crafted_model_dim_is_refused_before_allocating(best):
    path = best / "checkpoint.json"
    info = json.loads(path.read_text())
    info["model_config"]["model_dim"] = 1 << 20  # ~5.6e13 parameters: 224 TB of float32
    path.write_text(json.dumps(info))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="nothing was allocated"):
        load_trained_model(best)
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("damage", ["header", "truncated", "json", "shape"])
def test_a_damaged_checkpoint_gives_a_clear_error_naming_the_file(best, tiny_store, tmp_path, damage):
    weights = best / "model.safetensors"
    if damage == "header":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "json":
        (best / "checkpoint.json").write_text("{broken")
    else:
        tensors = load_file(str(weights))
        name = next(iter(tensors))
        tensors[name] = torch.zeros(3, 3)
        save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=str(best)):
        load_trained_model(best)
    result = runner.invoke(app, ["evaluate", "--store", str(tiny_store.path), "--checkpoint", str(best)])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output, result.output


def test_evaluating_nan_weights_is_an_error_naming_the_rows(best, tiny_store):
    weights = best / "model.safetensors"
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    result = runner.invoke(app, ["evaluate", "--store", str(tiny_store.path), "--checkpoint", str(best), "--split", "validation"])
    assert result.exit_code == 2, result.output
    rows = tiny_store.split_indices("validation").tolist()
    assert f"{len(rows)} of {len(rows)} predictions are not finite" in result.output and str(rows) in result.output


def test_an_empty_validation_split_is_a_clear_error_at_train_start(tiny_store, tmp_path):
    """Split boundaries beyond the data gave an empty validation split and `KeyError: 'ne'` at the
    first validation (issue 21, item 7)."""
    examples = tiny_store.path / "examples.parquet"
    table = pq.read_table(examples)
    split = table.column("split")
    table = table.set_column(table.column_names.index("split"), "split",
                             pc.if_else(pc.equal(split, 1), pc.cast(2, split.type), split))  # validation rows → test
    pq.write_table(table, examples)
    store = EventStore.open(tiny_store.path)
    assert len(store.split_indices("validation")) == 0
    with pytest.raises(ValueError, match="the validation split has no impression labelled 'click'"):
        train(store, MODEL, TRAIN, tmp_path / "run", show_progress=False)
    config = tmp_path / "config.yaml"
    config.write_text("model: {model_dim: 16, num_heads: 2, attribute_dim: 4, mlp_dims: [8]}\ntrain: {epochs: 1, batch_size: 2}\n")
    result = runner.invoke(app, ["train", "--store", str(store.path), "--config", str(config), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "validation split" in result.output, result.output


def _log_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_train_log_holds_each_step_once_after_a_resume(tiny_store, tmp_path, monkeypatch):
    """A run killed after its last checkpoint logged steps that the resumed run writes again."""
    config = TRAIN.model_copy(update={"checkpoint_every": 100})  # last/ only at validations: steps 2, 4, 6
    train(tiny_store, MODEL, config, tmp_path / "straight", show_progress=False)
    train_killed_at_step_four(tiny_store, MODEL, config, tmp_path / "killed", monkeypatch)
    assert [r[0] for r in _log_rows(tmp_path / "killed" / "train_log.csv")[1:]] == ["1", "2", "3"]  # last/ is at step 2
    train(tiny_store, MODEL, config, tmp_path / "killed", show_progress=False)
    for name in ("train_log.csv", "eval_log.csv"):
        assert _log_rows(tmp_path / "killed" / name) == _log_rows(tmp_path / "straight" / name), name
