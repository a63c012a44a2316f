"""The seed comparison (what the demo and bench/compare_models.py run): resumable runs checked
against their config, and the table with several baselines and the best rule."""

from __future__ import annotations

import json

import pytest

from eventrec.evaluation.experiment import format_table, run_comparison, summarize
from eventrec.evaluation.rules import rule_metrics
from eventrec.training.factory import default_config
from eventrec.training.trainer import TrainConfig

TINY_DLRM = {"attribute_dim": 4, "bottom_mlp": [4], "top_mlp": [8]}


def test_comparison_table_with_baselines_and_rule(tiny_store, tmp_path):
    models = {"dlrm": default_config("dlrm", TINY_DLRM), "dlrm_id_bags": default_config("dlrm_id_bags", TINY_DLRM)}
    train = TrainConfig(epochs=1, batch_size=2)
    runs = run_comparison(tiny_store, models, train, [0, 1], tmp_path / "runs", show_progress=False)
    assert [(r.model, r.seed) for r in runs] == [("dlrm", 0), ("dlrm", 1), ("dlrm_id_bags", 0), ("dlrm_id_bags", 1)]
    assert json.loads((tmp_path / "runs" / "dlrm_seed0" / "run.json").read_text())["config"]["features"] == "engineered"
    rules = {split: rule_metrics(tiny_store, split) for split in ("validation", "test")}
    table = format_table(summarize(runs), baseline=["dlrm_id_bags"], rules=rules)
    assert "| best rule on validation: " in table
    assert "- dlrm vs dlrm_id_bags, click: ΔAUC" in table
    assert "- dlrm vs the best rule (" in table and "- dlrm_id_bags vs the best rule (" in table
    # a finished run is reused, not retrained; one of another config is refused, nothing deleted
    again = run_comparison(tiny_store, models, train, [0], tmp_path / "runs", show_progress=False)
    assert json.dumps(again[0].test, default=float) == json.dumps(runs[0].test, default=float)
    other = {"dlrm": default_config("dlrm_id_bags", TINY_DLRM)}
    with pytest.raises(ValueError, match="another 'dlrm' config"):
        run_comparison(tiny_store, other, train, [0], tmp_path / "runs", show_progress=False)
    assert (tmp_path / "runs" / "dlrm_seed0" / "run.json").exists()


def test_finished_runs_of_another_work_directory_are_copied_once(tmp_path):
    """``bench/compare_models.py --runs-from``: finished runs are copied (not moved), unfinished ones and
    runs already present are left alone, and a copy left half-done by a killed run is redone."""
    from bench.compare_models import copy_finished_runs

    source, target = tmp_path / "a" / "runs", tmp_path / "b" / "runs"
    (source / "dlrm_seed0").mkdir(parents=True)
    (source / "dlrm_seed0" / "run.json").write_text("{}")
    (source / "dlrm_seed1").mkdir()  # killed: no run.json
    (target / ".dlrm_seed0.copying").mkdir(parents=True)  # a killed copy
    copy_finished_runs(source, target, ["dlrm_seed0", "dlrm_seed1", "dlrm_seed2"])
    assert sorted(p.name for p in target.iterdir()) == ["dlrm_seed0"]
    assert (source / "dlrm_seed0" / "run.json").exists() and (target / "dlrm_seed0" / "run.json").read_text() == "{}"
    (target / "dlrm_seed0" / "run.json").write_text('{"kept": 1}')
    copy_finished_runs(source, target, ["dlrm_seed0"])
    assert (target / "dlrm_seed0" / "run.json").read_text() == '{"kept": 1}'
