"""The command line: build, inspect, train, evaluate on the tiny world; clear errors and exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from eventrec.cli import app

runner = CliRunner()


def test_build_inspect_train_evaluate(tiny_world, tmp_path):
    schema, data = tiny_world
    store = tmp_path / "store"
    result = runner.invoke(app, ["build", "--schema", str(schema), "--data", str(data), "--out", str(store)])
    assert result.exit_code == 0, result.output
    assert '"impressions": 7' in result.output
    result = runner.invoke(app, ["inspect", str(store)])
    assert result.exit_code == 0 and "click" in result.output and "history length" in result.output
    stats = json.loads(runner.invoke(app, ["inspect", str(store), "--json"]).output)
    assert stats["streams"]["click"]["events"] == 6
    config = tmp_path / "config.yaml"
    config.write_text("model: {model_dim: 16, num_heads: 2, attribute_dim: 4, mlp_dims: [8]}\ntrain: {epochs: 1, batch_size: 2}\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--store", str(store), "--model", "sequence", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    predictions = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["evaluate", "--store", str(store), "--checkpoint", str(run / "best"), "--split", "validation", "--predictions", str(predictions)])
    assert result.exit_code == 0, result.output
    assert predictions.exists() and '"split": "validation"' in result.output


def test_errors_are_clear(tiny_world, tmp_path):
    schema, data = tiny_world
    (data / "events.parquet").unlink()
    result = runner.invoke(app, ["build", "--schema", str(schema), "--data", str(data), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "events.parquet: no such file" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstreams: []\n")
    result = runner.invoke(app, ["build", "--schema", str(bad), "--data", str(data), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "bad.yaml" in result.output and "streams" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "not an event store" in result.output


def test_bad_model_config_names_the_field(tiny_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {model_dim: 30, num_heads: 4}\n")
    result = runner.invoke(app, ["train", "--store", str(tiny_store.path), "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "model_dim" in result.output


def test_train_refuses_experimental_sections_without_the_flag(tiny_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {model_dim: 16, num_heads: 2, attribute_dim: 4, mlp_dims: [8]}\n"
                      "train: {epochs: 1, batch_size: 4, experimental: {weight_average_decay: 0.5}}\n")
    command = ["train", "--store", str(tiny_store.path), "--config", str(config), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and "train.experimental" in result.output and "--experimental" in result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, [*command, "--experimental"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "best" / "checkpoint.json").read_text())["train_config"]["experimental"]["weight_average_decay"] == 0.5
    from types import SimpleNamespace

    from eventrec.cli import _experimental_sections
    from eventrec.training.trainer import TrainConfig

    # the model config's section (SequenceModelConfig.experimental) is refused the same way
    assert _experimental_sections(SimpleNamespace(experimental={"dot_term": True}), TrainConfig()) == ["model.experimental"]
    assert _experimental_sections(SimpleNamespace(experimental=None), TrainConfig()) == []


def test_train_reports_an_objective_the_store_cannot_train(tiny_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("train: {objectives: [{kind: bce, task_weights: [1.0, 1.0, 1.0]}]}\n")
    result = runner.invoke(app, ["train", "--store", str(tiny_store.path), "--config", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "objectives[0].task_weights" in result.output


def test_train_and_evaluate_report_bad_paths(tiny_store, tmp_path):
    result = runner.invoke(app, ["train", "--store", str(tmp_path / "absent"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not an event store" in result.output
    result = runner.invoke(app, ["evaluate", "--store", str(tiny_store.path), "--checkpoint", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "not a checkpoint" in result.output


def test_build_and_prepare_never_delete_what_they_did_not_create(tiny_world, tmp_path):
    schema, data = tiny_world
    before = sorted(p.name for p in data.iterdir())
    result = runner.invoke(app, ["build", "--schema", str(schema), "--data", str(data), "--out", str(data)])
    assert result.exit_code == 2 and "--data" in result.output
    others = tmp_path / "others"
    others.mkdir()
    (others / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["build", "--schema", str(schema), "--data", str(data), "--out", str(others)])
    assert result.exit_code == 2 and "not an eventrec store" in result.output
    for out in (data, others):
        result = runner.invoke(app, ["prepare", "ml100k", "--source", str(data), "--out", str(out)])
        assert result.exit_code == 2 and ("--source" in result.output or "not a prepared-logs folder" in result.output), result.output
    assert sorted(p.name for p in data.iterdir()) == before and (others / "keep.txt").read_text() == "mine"
