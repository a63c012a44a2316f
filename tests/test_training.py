"""The training loop: checkpoints are safetensors + JSON, a killed run resumes to the same weights,
early stopping reads the validation split only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eventrec.model.config import SequenceModelConfig
from eventrec.training import trainer as trainer_module
from eventrec.training.factory import load_trained_model
from eventrec.training.objectives import catalogue as catalogue_module
from eventrec.training.objectives import standard as standard_module
from eventrec.training.trainer import TrainConfig, train
from killed_training import train_killed_at_step_four

MODEL = SequenceModelConfig(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])
TRAIN = TrainConfig(epochs=3, batch_size=2, warmup_steps=1, checkpoint_every=1, patience=5)
LISTWISE = [{"kind": "request_softmax"}]


def _with_dot_term(config: SequenceModelConfig) -> SequenceModelConfig:
    """``config`` with the dot term (a research variant: under ``experimental``) and without the item
    counters (the sampled catalogue term scores drawn items without them, so it refuses them)."""
    return type(config).model_validate(config.model_dump() | {"experimental": {"dot_term": True}, "item_counters": None})


def _train_config(**fields) -> TrainConfig:
    """TRAIN with ``fields`` changed, validated (nested objectives and experimental sections parsed)."""
    return TrainConfig.model_validate(TRAIN.model_dump() | fields)


def _experimental(*objectives: dict, **fields) -> dict:
    return {"experimental": {"objectives": list(objectives), **fields}}


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_checkpoint_is_safetensors_and_json(tiny_store, tmp_path):
    model, result = train(tiny_store, MODEL, TRAIN, tmp_path / "run", show_progress=False)
    best = tmp_path / "run" / "best"
    assert sorted(p.name for p in best.iterdir()) == ["checkpoint.json", "model.safetensors", "optimizer.safetensors"]
    info = json.loads((best / "checkpoint.json").read_text())
    assert info["model_config"]["kind"] == "sequence"
    loaded, config, spec, _ = load_trained_model(best)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert result.steps == 6 and len(result.history) == 3


def _killed_at_step_four(store, run_dir, config, monkeypatch, model_config=MODEL) -> None:
    train_killed_at_step_four(store, model_config, config, run_dir, monkeypatch)


def test_killed_run_resumes_to_the_same_weights(tiny_store, tmp_path, monkeypatch):
    reference, _ = train(tiny_store, MODEL, TRAIN, tmp_path / "straight", show_progress=False)
    _killed_at_step_four(tiny_store, tmp_path / "killed", TRAIN, monkeypatch)
    info = json.loads((tmp_path / "killed" / "last" / "checkpoint.json").read_text())
    assert info["state"]["step"] == 3  # nothing lost but the step in flight
    resumed, result = train(tiny_store, MODEL, TRAIN, tmp_path / "killed", show_progress=False)
    assert result.steps == 6
    for key, value in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


def test_early_stopping_never_reads_the_test_split(tiny_store, tmp_path, monkeypatch):
    seen = []
    original = trainer_module.predict

    def spy(model, store, indices, *args, **kwargs):
        seen.append(set(store.splits[indices].tolist()))
        return original(model, store, indices, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "predict", spy)
    train(tiny_store, MODEL, TRAIN, tmp_path / "run", show_progress=False)
    assert seen and all(s == {1} for s in seen)  # 1 = validation


def test_validates_within_epochs_and_stops_early(tiny_store, tmp_path, monkeypatch):
    # validation predictions that never improve (the same constant every time), so that patience 1
    # stops at the second validation whatever the model learns
    original = trainer_module.predict
    monkeypatch.setattr(trainer_module, "predict", lambda *args, **kwargs: np.full_like(original(*args, **kwargs), 0.3))
    config = TRAIN.model_copy(update={"epochs": 4, "validations_per_epoch": 2, "patience": 1})
    _, result = train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False)
    steps = [h["step"] for h in result.history]
    assert steps == [1, 2]  # two validations per epoch of two batches; stopped at the first without improvement
    info = json.loads((tmp_path / "run" / "last" / "checkpoint.json").read_text())
    assert info["state"]["stopped"] is True
    _, again = train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False)  # resuming a stopped run trains no more
    assert again.steps == result.steps


def test_request_softmax_loss_equals_a_per_request_log_softmax():
    from eventrec.training.objectives.losses import request_softmax_loss

    torch.manual_seed(0)
    groups = torch.tensor([5, 5, 5, 9, 9, 2, 2, 2, 2])
    logits = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 0], [0, 1], [0, float("nan")], [0, 0], [1, 1], [0, 0], [1, 0], [1, 0], [0, 1]], dtype=torch.float64)
    loss, per_task = request_softmax_loss(logits, labels, groups)
    expected = []
    for t in range(2):
        terms = []
        for g in groups.unique():
            rows = (groups == g) & ~torch.isnan(labels[:, t])
            log_p = torch.log_softmax(logits[rows, t], 0)
            terms += [-v for v, y in zip(log_p, labels[rows, t]) if y == 1]
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(per_task, torch.stack(expected).detach())
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_grouped_batches_keep_requests_whole_and_cover_each_example_once(tiny_store):
    from eventrec.data.loader import BatchDataset

    train_rows = tiny_store.split_indices("train")
    groups = np.arange(len(train_rows)) // 3  # requests of 3
    dataset = BatchDataset(tiny_store, "train", batch_size=4, shuffle=True, seed=1, groups=groups, batch_fn=lambda store, index: index)
    group_of = dict(zip(train_rows.tolist(), groups.tolist()))
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batches = [dataset[i] for i in range(len(dataset))]
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == sorted(train_rows.tolist())
        for batch in batches:
            in_batch = [group_of[i] for i in batch.tolist()]
            for g in set(in_batch):
                assert in_batch.count(g) == int((groups == g).sum())  # whole request in this batch
        assert [b.tolist() for b in batches] == [dataset[i].tolist() for i in range(len(dataset))]  # deterministic


def test_trains_with_the_listwise_loss_and_stops_on_auc(tiny_store, tmp_path):
    with pytest.raises(ValueError, match="calibrate: Platt scaling assumes a bce objective"):
        TrainConfig(objectives=LISTWISE)
    config = _train_config(objectives=LISTWISE, stop_on="auc", calibrate=False, epochs=2)
    model, result = train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False)
    assert result.steps > 0 and result.best_validation


def test_stops_on_a_custom_validation_score(tiny_store, tmp_path):
    with pytest.raises(ValueError, match="validation_score"):
        train(tiny_store, MODEL, TRAIN.model_copy(update={"stop_on": "score"}), tmp_path / "none", show_progress=False)
    calls = []
    falling = iter([0.5, 0.4, 0.3, 0.2])  # best at the first validation, then patience runs out

    def score(model):
        assert not model.training and not torch.is_grad_enabled()
        calls.append(1)
        return {"score": next(falling), "hr@10": 0.1}

    config = TRAIN.model_copy(update={"stop_on": "score", "epochs": 4, "patience": 1})
    _, result = train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False, validation_score=score)
    assert len(calls) == 2 and result.best_epoch == 0  # stopped after one validation without improvement
    assert result.best_validation["score"] == {"score": 0.5, "hr@10": 0.1}
    assert [h["score"]["score"] for h in result.history] == [0.5, 0.4]
    assert (tmp_path / "run" / "score_log.csv").read_text().count("\n") == 3


def test_impression_validation_off_skips_that_pass_and_changes_no_weight(tiny_store, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="impression_validation"):
        TrainConfig(impression_validation=False, stop_on="auc")
    config = TRAIN.model_copy(update={"stop_on": "score"})
    runs = {}
    for on in (True, False):
        passes = []
        real_predict = trainer_module.predict
        monkeypatch.setattr(trainer_module, "predict", lambda *a, **k: passes.append(1) or real_predict(*a, **k))
        values = iter([0.1, 0.3, 0.2])
        model, result = train(tiny_store, MODEL, config.model_copy(update={"impression_validation": on}), tmp_path / f"run{on}",
                              show_progress=False, validation_score=lambda m: {"score": next(values)})
        runs[on] = (_weights(model), result, len(passes))
    (kept_on, result_on, passes_on), (kept_off, result_off, passes_off) = runs[True], runs[False]
    assert passes_on == 3 and passes_off == 0
    assert result_on.best_epoch == result_off.best_epoch == 1
    assert set(result_on.best_validation) == {*tiny_store.label_names, "score"}
    assert result_off.best_validation == {"score": {"score": 0.3}}
    assert (tmp_path / "runFalse" / "eval_log.csv").read_text().count("\n") == 1  # the header only
    for name in kept_on:
        torch.testing.assert_close(kept_off[name], kept_on[name], rtol=0, atol=0)


def test_a_weighted_request_softmax_adds_to_the_bce(tiny_store, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"objectives\[1\]\.kind: 'request_softmax' is already objectives\[0\]"):
        TrainConfig(objectives=[*LISTWISE, {"kind": "request_softmax", "weight": 0.5}], calibrate=False)
    seen = []
    pointwise, listwise = standard_module.multitask_loss, standard_module.request_softmax_loss

    def record_bce(*args, **kwargs):
        seen.append(("bce", float(pointwise(*args, **kwargs)[0].detach())))
        return pointwise(*args, **kwargs)

    def record_listwise(logits, labels, groups):
        # whole requests in the batch: every request id present has all its rows
        rows = tiny_store.request_ids[tiny_store.split_indices("train")]
        for g in torch.unique(groups).tolist():
            assert int((groups == g).sum()) == int((rows == g).sum())
        seen.append(("listwise", float(listwise(logits, labels, groups)[0].detach())))
        return listwise(logits, labels, groups)

    monkeypatch.setattr(standard_module, "multitask_loss", record_bce)
    monkeypatch.setattr(standard_module, "request_softmax_loss", record_listwise)
    config = _train_config(objectives=[{"kind": "bce"}, {"kind": "request_softmax", "weight": 0.5}], epochs=1)
    train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False)
    logged = [float(line.split(",")[2]) for line in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    assert len(seen) == 2 * len(logged)
    for step, value in enumerate(logged):
        (kind_a, bce), (kind_b, ls) = seen[2 * step], seen[2 * step + 1]
        assert (kind_a, kind_b) == ("bce", "listwise")
        assert value == pytest.approx(bce + 0.5 * ls, rel=1e-5)


def _scores_alike_with_and_without_the_dot_parts(model, store, model_config, best: Path) -> None:
    """The dot term is part of the logit; asking for its parts changes no score; the checkpoint scores alike."""
    from eventrec.training.factory import batch_function

    batch = batch_function(model_config)(store, store.split_indices("test"))
    parts: list = []
    with torch.no_grad():
        logits = model(batch, parts)
        users, items = parts
        torch.testing.assert_close(model(batch), logits)
        dot = (users[batch.history_index] * items.unsqueeze(1)).sum(-1)
        assert dot.abs().max() > 0  # the dot term is part of the logit
    loaded = load_trained_model(best)[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch), logits)


def test_each_objectives_errors_name_its_field(tiny_store, tmp_path, monkeypatch):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"objectives\.1\.request_softmax\.weight"):
        TrainConfig(objectives=[{"kind": "bce"}, {"kind": "request_softmax", "weight": 0}])
    with pytest.raises(ValidationError, match=r"experimental\.objectives\.0\.sampled_catalogue_logit\.draws"):
        TrainConfig(experimental={"objectives": [{"kind": "sampled_catalogue_logit", "draws": 0}]})
    with pytest.raises(ValidationError, match=r"experimental\.weight_average_decay"):
        TrainConfig(experimental={"weight_average_decay": 1.0})
    with pytest.raises(ValidationError, match=r"objectives\[0\]\.kind: 'catalogue_softmax' is experimental"):
        TrainConfig(objectives=[{"kind": "catalogue_softmax"}])
    with pytest.raises(ValidationError, match=r"objectives\.0\.bce\.task_weights"):
        TrainConfig(objectives=[{"kind": "bce", "task_weights": "heavy"}])
    # against the store and the model config, before anything is built or written
    two_tasks = len(tiny_store.label_names)
    config = _train_config(objectives=[{"kind": "bce", "task_weights": [1.0] * (two_tasks + 1)}])
    with pytest.raises(ValueError, match=rf"objectives\[0\]\.task_weights: {two_tasks + 1} weights for the store's {two_tasks} tasks"):
        train(tiny_store, MODEL, config, tmp_path / "weights", show_progress=False)
    monkeypatch.setattr(tiny_store, "request_ids", None)
    with pytest.raises(ValueError, match=r"objectives\[1\]\.kind: request_softmax needs integer request ids"):
        train(tiny_store, MODEL, _train_config(objectives=[{"kind": "bce"}, *LISTWISE]), tmp_path / "requests", show_progress=False)
    assert not (tmp_path / "weights").exists() and not (tmp_path / "requests").exists()


def test_the_objectives_sum_to_the_hand_computed_weighted_sum(tiny_store):
    import torch.nn.functional as F

    from eventrec.model.embeddings import FeatureSpec
    from eventrec.training.factory import batch_function, build_model
    from eventrec.training.objectives import BceObjective, RequestSoftmaxObjective, forward, total_loss

    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(tiny_store), MODEL)
    batch = batch_function(MODEL)(tiny_store, tiny_store.split_indices("train"))
    task_weights = [1.0, 0.25][: len(tiny_store.label_names)]
    objectives = [BceObjective(weight=0.7, task_weights=task_weights), RequestSoftmaxObjective(weight=0.3)]
    step = forward(model, batch, objectives, tiny_store, None)
    total, per_task = total_loss(objectives, step)
    logits, labels, requests = step.logits.detach(), batch.labels, batch.request_ids
    bce, listwise = [], []
    for t in range(labels.shape[1]):
        present = ~torch.isnan(labels[:, t])
        bce.append(F.binary_cross_entropy_with_logits(logits[present, t], labels[present, t]))
        terms = [-torch.log_softmax(logits[(requests == r) & present, t], 0)[labels[(requests == r) & present, t] > 0.5]
                 for r in requests.unique()]
        positives = torch.cat(terms)
        listwise.append(positives.mean() if len(positives) else torch.tensor(0.0))  # a task without a positive adds 0
    expected = 0.7 * sum(w * b for w, b in zip(task_weights, bce)) + 0.3 * sum(listwise)
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(per_task, torch.stack(bce))  # the first objective's per-task losses, for the log
    lone, _ = total_loss([BceObjective()], step)  # a lone objective of weight 1 is exactly its loss
    assert torch.equal(lone, standard_module.multitask_loss(step.logits, labels)[0])


def _record_calls(monkeypatch, name: str, keep) -> list:
    """Wrap the objectives' ``name`` (a loss function) so that each call appends ``keep(args, result)``
    to the returned list; the result is passed on unchanged."""
    seen: list = []
    module = catalogue_module if hasattr(catalogue_module, name) else standard_module
    original = getattr(module, name)

    def spy(*args):
        out = original(*args)
        seen.append(keep(args, out))
        return out

    monkeypatch.setattr(module, name, spy)
    return seen


def test_catalogue_softmax_matches_a_loop():
    from eventrec.training.objectives.losses import catalogue_softmax_loss

    g, b, t, c, d = 3, 8, 2, 6, 4
    users, catalogue = torch.randn(g, t, d, dtype=torch.float64), torch.randn(c, d, dtype=torch.float64)
    history = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    positive_item = torch.tensor([4, 0, 5, 2, 2, 1, 3, 0])
    labels = torch.zeros(b, t, dtype=torch.float64)
    labels[[0, 3, 5], 0] = 1
    labels[[4, 7], 1] = 1
    labels[1, 1] = float("nan")
    total, per_task = catalogue_softmax_loss(users, catalogue, labels, history, positive_item)
    expected = []
    for task in range(t):
        losses = []
        for p in range(b):
            if labels[p, task] == 1:
                s = torch.stack([users[history[p], task] @ catalogue[i] for i in range(c)])  # every item, none left out
                losses.append(torch.logsumexp(s, 0) - s[positive_item[p]])
        expected.append(torch.stack(losses).mean())
    torch.testing.assert_close(per_task, torch.stack(expected))
    torch.testing.assert_close(total, per_task.sum())


def test_catalogue_items_and_positions(tiny_store):
    from eventrec.data.gather import catalogue_items, catalogue_positions, make_batch

    train_rows = tiny_store.split_indices("train")
    ids, item = catalogue_items(tiny_store, train_rows)
    assert ids.tolist() == sorted(set(tiny_store.item_ids[train_rows].tolist()))
    positions = catalogue_positions(ids, tiny_store.item_ids[train_rows])
    np.testing.assert_array_equal(ids[positions], tiny_store.item_ids[train_rows])
    shown = make_batch(tiny_store, train_rows).item  # every row's attributes equal its catalogue entry's
    for name, values in item.items():
        torch.testing.assert_close(values[torch.from_numpy(positions)], shown[name])
    with pytest.raises(KeyError, match="not in the catalogue"):
        catalogue_positions(ids, np.array([ids[0], ids.max() + 1]))


def test_dot_term_trains_with_the_catalogue_softmax_and_scores_alike(tiny_world, tiny_store, tmp_path, monkeypatch):
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

    config = _train_config(**_experimental({"kind": "catalogue_softmax"}), batch_size=8, epochs=1)
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: catalogue_softmax trains the dot term"):
        train(tiny_store, MODEL, config, tmp_path / "no", show_progress=False)
    model_config = _with_dot_term(MODEL)
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: catalogue_softmax: the candidates have context attributes"):
        train(tiny_store, model_config, config, tmp_path / "context", show_progress=False)
    schema_path, data = tiny_world
    schema = load_schema(schema_path)
    schema = schema.model_copy(update={"impressions": schema.impressions.model_copy(update={"context_attributes": []})})
    build_store(schema, data, tmp_path / "no_context")
    store = EventStore.open(tmp_path / "no_context")
    seen = _record_calls(monkeypatch, "catalogue_softmax_loss", lambda args, out: (args[1].shape, out[0].item()))  # (catalogue shape, loss)
    bce_seen = _record_calls(monkeypatch, "multitask_loss", lambda args, out: out[0].item())
    model, result = train(store, model_config, config, tmp_path / "run", show_progress=False)
    distinct = len(np.unique(store.item_ids[store.split_indices("train")]))
    assert result.steps == len(seen) > 0
    assert all(shape == (distinct, MODEL.model_dim) for shape, _ in seen)  # the whole catalogue at every step
    logged = [float(line.split(",")[2]) for line in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    assert len(logged) == len(bce_seen) == len(seen)
    for total, plain, (_, part) in zip(logged, bce_seen, seen):  # the bce loss plus the catalogue term
        assert part > 0 and total == pytest.approx(plain + part, rel=1e-5)
    _scores_alike_with_and_without_the_dot_parts(model, store, model_config, tmp_path / "run" / "best")
    monkeypatch.setattr(store, "item_ids", store.item_ids.astype(str).astype(object))  # string ids, as Parquet gives them
    train(store, model_config, config, tmp_path / "strings", show_progress=False)
    monkeypatch.setattr(store, "item_ids", np.full(len(store.item_ids), None, dtype=object))
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: catalogue_softmax: the impressions need an item column"):
        train(store, model_config, config, tmp_path / "null_ids", show_progress=False)


def test_weight_average_follows_its_formula_and_swaps_back_exactly():
    from eventrec.training.weight_average import WeightAverage

    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = min(0.9, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        average.update()
    raw = [p.detach().clone() for p in model.parameters()]
    with average.applied():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.detach(), r)
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("validation failed")
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.detach(), r)  # restored on an error too
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_weight_average_is_what_validation_sees_and_what_is_kept(tiny_store, tmp_path, monkeypatch):
    from eventrec.training.weight_average import WeightAverage

    config = _train_config(experimental={"weight_average_decay": 0.5})
    seen = []
    original = trainer_module.predict

    def spy(model, *args, **kwargs):
        seen.append(_weights(model))
        return original(model, *args, **kwargs)

    averages = []
    original_update = WeightAverage.update

    def record(self):
        original_update(self)
        averages.append([a.clone() for a in self.average])

    monkeypatch.setattr(trainer_module, "predict", spy)
    monkeypatch.setattr(WeightAverage, "update", record)
    model, result = train(tiny_store, MODEL, config, tmp_path / "run", show_progress=False)
    assert len(seen) == 3 and len(averages) == 6  # one validation per epoch of two steps
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    for validation, step in zip(seen, (2, 4, 6)):  # validation reads the average after that step
        for name, avg in zip(names, averages[step - 1]):
            torch.testing.assert_close(validation[name], avg)
    raw, _ = train(tiny_store, MODEL, TRAIN, tmp_path / "raw", show_progress=False)  # same seed, no average
    assert any(not torch.equal(raw.state_dict()[n], model.state_dict()[n]) for n in names)


def test_killed_run_with_a_weight_average_resumes_to_the_same_weights(tiny_store, tmp_path, monkeypatch):
    config = _train_config(experimental={"weight_average_decay": 0.5})
    reference, _ = train(tiny_store, MODEL, config, tmp_path / "straight", show_progress=False)
    _killed_at_step_four(tiny_store, tmp_path / "killed", config, monkeypatch)
    resumed, _ = train(tiny_store, MODEL, config, tmp_path / "killed", show_progress=False)
    for key, value in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
    _killed_at_step_four(tiny_store, tmp_path / "raw", TRAIN, monkeypatch)  # a run written without an average cannot resume with one
    with pytest.raises(ValueError, match="weight_average_decay"):
        train(tiny_store, MODEL, config, tmp_path / "raw", show_progress=False)
    _killed_at_step_four(tiny_store, tmp_path / "averaged", config, monkeypatch)  # nor the other way round
    with pytest.raises(ValueError, match="weight_average_decay"):
        train(tiny_store, MODEL, TRAIN, tmp_path / "averaged", show_progress=False)


def test_resuming_with_another_configuration_is_refused_naming_each_field(tiny_store, tmp_path, monkeypatch):
    _killed_at_step_four(tiny_store, tmp_path / "killed", TRAIN, monkeypatch)
    changed_lr = TRAIN.model_copy(update={"learning_rate": 1e-2, "seed": 3})
    with pytest.raises(ValueError, match=r"train_config\.learning_rate: 0\.002 → 0\.01; train_config\.seed: 0 → 3"):
        train(tiny_store, MODEL, changed_lr, tmp_path / "killed", show_progress=False)
    with_dropout = MODEL.model_copy(update={"dropout": 0.2})  # same shapes: loading the weights alone would not notice
    with pytest.raises(ValueError, match=r"model_config\.dropout: 0\.0 → 0\.2"):
        train(tiny_store, with_dropout, TRAIN, tmp_path / "killed", show_progress=False)
    info = json.loads((tmp_path / "killed" / "last" / "checkpoint.json").read_text())
    assert info["state"]["step"] == 3  # the refused attempts wrote nothing
    # fields that cannot change a weight may differ; the resumed run still ends as a straight one
    neutral = TRAIN.model_copy(update={"checkpoint_every": 2, "eval_batch_size": 7, "num_workers": 0})
    resumed, result = train(tiny_store, MODEL, neutral, tmp_path / "killed", show_progress=False)
    reference, _ = train(tiny_store, MODEL, TRAIN, tmp_path / "straight", show_progress=False)
    assert result.steps == 6
    for key, value in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[key], value)


def test_a_field_missing_from_an_older_checkpoint_counts_as_its_default():
    from eventrec.training.resume_check import RETIRED_TRAIN_FIELDS, changed_fields

    saved = TRAIN.model_dump(mode="json")
    del saved["experimental"], saved["objectives"]  # written before the fields existed
    assert changed_fields(saved, TRAIN) == []
    averaged = _train_config(experimental={"weight_average_decay": 0.9})
    assert changed_fields(saved, averaged) == ["experimental: None → {'objectives': [], 'weight_average_decay': 0.9, 'user_batches': False}"]
    # a checkpoint of the old shape: its loss fields at their old defaults mean today's default objectives
    old = saved | {"loss": "bce", "listwise_weight": 0.0, "weight_average_decay": 0.0, "logq_column": None}
    assert changed_fields(old, TRAIN, retired=RETIRED_TRAIN_FIELDS) == []
    old["listwise_weight"] = 0.5  # trained with another objective: refused
    assert changed_fields(old, TRAIN, retired=RETIRED_TRAIN_FIELDS) == ["listwise_weight: 0.5 → (retired)"]


def test_dot_sampled_catalogue_loss_estimates_the_full_softmax():
    from eventrec.training.objectives.losses import dot_sampled_catalogue_loss

    generator = torch.Generator().manual_seed(0)
    catalogue, draws, positive = 40, 50_000, 7
    dot = 2 * torch.randn(catalogue, dtype=torch.float64, generator=generator)
    residual = torch.randn(catalogue, dtype=torch.float64, generator=generator)
    whole = residual + dot
    drawn = torch.multinomial(torch.softmax(dot, 0), draws, replacement=True, generator=generator)
    estimate = dot_sampled_catalogue_loss(whole[positive].view(1), torch.logsumexp(dot, 0).view(1), residual[drawn].view(1, draws),
                                          (drawn != positive).view(1, draws))
    assert estimate.item() == pytest.approx((torch.logsumexp(whole, 0) - whole[positive]).item(), rel=2e-3)
    # the exact formula on a few draws, against a loop
    drawn = drawn[:5].view(1, 5)
    kept = drawn != positive
    kept[0, 1] = False  # as if a draw of the positive
    terms = [whole[positive]] + [residual[c] + torch.logsumexp(dot, 0) - math.log(5) for j, c in enumerate(drawn[0]) if kept[0, j]]
    expected = torch.logsumexp(torch.stack(terms), 0) - whole[positive]
    got = dot_sampled_catalogue_loss(whole[positive].view(1), torch.logsumexp(dot, 0).view(1), residual[drawn], kept)
    torch.testing.assert_close(got, expected)
    nothing_kept = dot_sampled_catalogue_loss(whole[:1], dot[:1], residual[:3].view(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    assert nothing_kept.item() == 0.0  # only the positive is left in its own softmax


@pytest.fixture(scope="module")
def one_task_store(tmp_path_factory):
    """A small synthetic world's store with one task (click) and no context attributes (a catalogue)."""
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store
    from eventrec.synthetic import generate_world

    root = tmp_path_factory.mktemp("one_task")
    generate_world(root / "world", num_users=200, days=3, num_candidate_requests=10, seed=0)
    schema = load_schema(Path(__file__).resolve().parents[1] / "eventrec" / "schemas" / "synthetic.yaml")
    schema = schema.model_copy(update={"impressions": schema.impressions.model_copy(update={"context_attributes": [], "labels": ["click"]})})
    build_store(schema, root / "world", root / "store")
    return EventStore.open(root / "store")


def test_sampled_catalogue_logit_loss_estimates_the_whole_logits_full_softmax(one_task_store):
    from eventrec.data.gather import catalogue_items, catalogue_positions, make_batch
    from eventrec.model.embeddings import FeatureSpec
    from eventrec.training.objectives.catalogue import sampled_catalogue_logit_loss
    from eventrec.training.factory import build_model

    store = one_task_store
    torch.manual_seed(0)
    model = build_model(FeatureSpec.from_store(store), _with_dot_term(MODEL)).eval()
    rows = store.split_indices("train")
    ids, catalogue_item = catalogue_items(store, rows)
    rows = rows[np.isin(np.arange(len(rows)), np.flatnonzero(store.labels[rows, 0] > 0.5)[:3]) | (np.arange(len(rows)) < 20)]
    batch = make_batch(store, rows)
    assert len(ids) >= 20 and (batch.labels[:, 0] > 0.5).sum() >= 2  # several items and positives (several histories)
    positive_item = torch.from_numpy(catalogue_positions(ids, store.item_ids[rows]))
    with torch.no_grad():
        dot_parts: list = []
        user = model.user_side(batch)
        logits = model.candidate_side(user, batch.item, batch.context, batch.history_index, dot_parts)
        vectors = model.dot_item_vectors(catalogue_item)
        estimate = sampled_catalogue_logit_loss(model, user, batch, logits, dot_parts[0], vectors, catalogue_item, positive_item, 20_000)
        expected = []  # every catalogue item scored by the whole model, for each positive row's history
        for p in (batch.labels[:, 0] > 0.5).nonzero().squeeze(1).tolist():
            every = model.candidate_side(user, catalogue_item, {}, batch.history_index[p].repeat(len(ids)))[:, 0]
            expected.append(torch.logsumexp(every, 0) - logits[p, 0])
    assert estimate.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-2)


def test_whole_logit_trains_with_the_sampled_catalogue_softmax(tiny_store, one_task_store, tmp_path, monkeypatch):
    config = _train_config(**_experimental({"kind": "sampled_catalogue_logit", "draws": 4}), batch_size=32, epochs=1, max_steps_per_epoch=3)
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: sampled_catalogue_logit trains the dot term"):
        train(tiny_store, MODEL, config, tmp_path / "no", show_progress=False)
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: sampled_catalogue_logit scores drawn catalogue items"):
        train(one_task_store, _with_dot_term(MODEL).model_copy(update={"item_counters": [86_400]}), config, tmp_path / "counted", show_progress=False)
    model_config = _with_dot_term(MODEL)
    with pytest.raises(ValueError, match=r"experimental\.objectives\[0\]\.kind: sampled_catalogue_logit draws items for one task"):
        train(tiny_store, model_config, config, tmp_path / "two_tasks", show_progress=False)
    store = one_task_store
    seen = _record_calls(monkeypatch, "sampled_catalogue_logit_loss", lambda args, out: (args[8], args[5].shape[0], out.item()))  # (draws, C, loss)
    bce_seen = _record_calls(monkeypatch, "multitask_loss", lambda args, out: out[0].item())
    _, result = train(store, model_config, config, tmp_path / "run", show_progress=False)
    distinct = len(np.unique(store.item_ids[store.split_indices("train")]))
    assert result.steps == len(seen) > 0 and all(d == 4 and c == distinct for d, c, _ in seen)
    logged = [float(line.split(",")[2]) for line in (tmp_path / "run" / "train_log.csv").read_text().splitlines()[1:]]
    for total, plain, (_, _, part) in zip(logged, bce_seen, seen, strict=True):  # the bce loss plus the sampled term
        assert part >= 0 and total == pytest.approx(plain + part, rel=1e-5)
    assert any(part > 0 for _, _, part in seen)  # (a batch without a positive adds 0)


def test_a_killed_run_with_the_sampled_catalogue_term_resumes_to_the_same_weights(one_task_store, tmp_path, monkeypatch):
    """The draws come from torch's generator, whose state the checkpoints keep: the same draws after a resume."""
    model_config = _with_dot_term(MODEL)
    config = _train_config(**_experimental({"kind": "sampled_catalogue_logit", "draws": 4}), batch_size=32, epochs=2, max_steps_per_epoch=3)
    reference, _ = train(one_task_store, model_config, config, tmp_path / "straight", show_progress=False)
    _killed_at_step_four(one_task_store, tmp_path / "killed", config, monkeypatch, model_config)
    resumed, result = train(one_task_store, model_config, config, tmp_path / "killed", show_progress=False)
    assert result.steps == 6
    for key, value in _weights(reference).items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
