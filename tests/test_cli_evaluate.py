"""`eventrec train` / `evaluate` as a new user meets them: the best epoch printed as result.json has
it, valid JSON, no one-impression segments, --threads, predictions with ids and labels written into a
folder that did not exist, and a warning when the model predicts worse than a constant."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from eventrec.cli import app

runner = CliRunner()


def _strict_json(text: str):
    """Parse the JSON document at the start of ``text``, refusing NaN / Infinity (not JSON)."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.JSONDecoder(parse_constant=refuse).raw_decode(text)[0]


@pytest.fixture()
def trained(tiny_store, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("model: {model_dim: 16, num_heads: 2, attribute_dim: 4, mlp_dims: [8]}\ntrain: {epochs: 2, batch_size: 2}\n")
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--store", str(tiny_store.path), "--config", str(config), "--out", str(run)])
    assert result.exit_code == 0, result.output
    return tiny_store, run, result.output


def test_train_prints_the_best_epoch_as_result_json_has_it_and_warns_when_ne_is_above_one(trained):
    store, run, output = trained
    saved = json.loads((run / "result.json").read_text())
    assert f"best_epoch {saved['best_epoch']} (counted from 0" in output
    ne = saved["best_validation"][store.label_names[0]]["ne"]
    assert ("worse than a constant" in output) == (ne > 1), output


def test_evaluate_prints_valid_json_writes_ids_and_labels_into_a_new_folder(trained, tmp_path):
    store, run, _ = trained
    predictions = tmp_path / "absent" / "deeper" / "scores.parquet"
    result = runner.invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(run / "best"), "--split", "train",
                                 "--threads", "1", "--predictions", str(predictions)])
    assert result.exit_code == 0, result.output
    report = _strict_json(result.output)  # NaN (one-class AUC) printed as null, not NaN
    # the tiny store's segments hold a few impressions each: listed as too small, never measured
    assert report["segments"] == {} and report["segments_too_small"]
    assert all(s["count"] < 100 for s in report["segments_too_small"].values())
    frame = pl.read_parquet(predictions)
    indices = store.split_indices("train")
    assert {"user_id", "item_id", "timestamp", "example"} <= set(frame.columns)
    assert frame["item_id"].to_list() == store.item_ids[indices].tolist()
    if store.request_ids is not None:
        assert frame["request_id"].to_list() == store.request_ids[indices].tolist()
    for t, name in enumerate(store.label_names):
        labels = store.labels[indices, t]
        assert frame[f"label_{name}"].null_count() == int((labels != labels).sum())
        assert frame[f"score_{name}"].len() == len(indices)


def test_evaluate_refuses_an_uncreatable_predictions_folder_before_scoring(trained, tmp_path):
    store, run, _ = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(run / "best"),
                                 "--predictions", str(blocker / "scores.parquet")])
    assert result.exit_code == 2 and "cannot create its folder" in result.output
    assert '"tasks"' not in result.output  # refused before computing


def test_evaluate_warns_when_the_checkpoints_validation_ne_is_above_one(trained, monkeypatch):
    store, run, _ = trained
    import eventrec.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_warn", lambda message, where: seen.append((message, where)))
    result = runner.invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(run / "best"), "--split", "validation"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "result.json").read_text())["best_validation"][store.label_names[0]]["ne"]
    checkpoint_warning = next(m for m, where in seen if where.startswith("validation of this checkpoint"))
    assert (checkpoint_warning is not None) == (saved > 1)


def test_evaluate_reports_the_rules_beside_the_model(trained):
    store, run, _ = trained
    result = runner.invoke(app, ["evaluate", "--store", str(store.path), "--checkpoint", str(run / "best"), "--split", "test"])
    assert result.exit_code == 0, result.output
    report = _strict_json(result.output)
    rules = report["rules"]
    assert {"count of ad_id in history", "recency of ad_id", "user's earlier positive rate", "item popularity in training"} <= set(rules["metrics"])
    for task in store.label_names:
        assert rules["best_on_validation"][task] in rules["metrics"]
        assert f"{task}: model AUC" in result.output and "best rule (" in result.output
