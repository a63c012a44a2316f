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


def test_users_sets_the_sample_of_sampled_datasets_only():
    """``bench/compare_models.py --users``: the adapter's ``max_users`` where it samples users (its default
    without ``--users``), refused for a dataset read whole or below 1."""
    import argparse

    from bench.compare_models import sample_options

    parser = argparse.ArgumentParser()
    assert sample_options("amazon_grocery_conversion", 4000, parser) == {"max_users": 4000}
    assert sample_options("trivago_views", None, parser) == {"max_users": 1000}
    assert sample_options("trivago", None, parser) == {}
    for dataset, users in (("trivago", 5), ("trivago_lists_small", 0)):
        with pytest.raises(SystemExit):
            sample_options(dataset, users, parser)


def test_gbdt_peer_reads_point_in_time_features_without_the_label(tiny_store):
    """``bench/gbdt_peer.py``: a row's features do not depend on the rows scored with it, the rule that
    counts a training row's own label is left out, and the tree count is chosen on validation."""
    import numpy as np

    from bench.gbdt_peer import LEAKY_RULES, feature_matrix, fit_and_score

    train = tiny_store.split_indices("train")
    together, names = feature_matrix(tiny_store, train, 0)
    assert together.shape == (len(train), len(names)) and np.isfinite(together).all()
    assert not set(LEAKY_RULES) & set(names)
    alone = np.concatenate([feature_matrix(tiny_store, train[i : i + 1], 0)[0] for i in range(len(train))])
    np.testing.assert_allclose(alone, together, rtol=1e-6)
    x = {split: feature_matrix(tiny_store, tiny_store.split_indices(split), 0)[0] for split in ("train", "validation", "test")}
    y = {split: np.nan_to_num(tiny_store.labels[tiny_store.split_indices(split), 0]) for split in x}
    probs, trees, _ = fit_and_score(x, y, seed=0, max_trees=5)
    assert probs.shape == (len(x["test"]),) and ((probs > 0) & (probs < 1)).all() and 1 <= trees <= 5


def test_stream_overrides_replace_fields_of_the_named_streams():
    """``bench/compare_models.py --stream NAME=JSON``: the built-in schema with the named stream's (or, for
    ``*``, every stream's) fields replaced in order, validated; unknown streams and bad values refused."""
    from bench.compare_models import schema_with_streams
    from eventrec.schema import SchemaError, builtin_schema_path, load_schema

    trivago = builtin_schema_path("trivago")
    value = '{"sampling": {"policy": "value", "attribute": "repeats", "recency_half_life": "1h"}}'
    schema = schema_with_streams(trivago, ['*={"max_length": 16}', f"item_interaction={value}"])
    assert {s.name: s.max_length for s in schema.streams} == {"item_interaction": 16, "clickout": 16, "search_filter": 16}
    assert [s.name for s in schema.streams if s.sampling != "most_recent"] == ["item_interaction"]
    assert schema_with_streams(trivago, []) == load_schema(trivago)
    for bad, message in (('nope={"max_length": 8}', "no stream 'nope'"), ("clickout={", "not JSON"),
                         ('clickout={"name": "x"}', "other than 'name'"), ('clickout={"max_length": 0}', "max_length")):
        with pytest.raises(SchemaError, match=message):
            schema_with_streams(trivago, [bad])
