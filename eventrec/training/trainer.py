"""One training loop for both models.

AdamW, and SparseAdam for embedding tables with sparse gradients, linear warm-up then cosine decay,
gradient clipping, evaluation on the *validation* split after each epoch with early stopping on the
primary task's NE, its AUC, or a caller's validation score (the test split is never read here), deterministic seeds and data order, a tqdm
progress bar with the running loss, CSV logs, and checkpoints (safetensors + JSON): ``last/`` every
``checkpoint_every`` steps and at each epoch end (a killed run resumes from it, losing only the
steps since), ``best/`` with the best validation weights. With ``weight_average_decay`` the
validated and kept weights are an exponential moving average of the trained ones
(:mod:`eventrec.training.weight_average`).
"""

from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import DataLoader
from tqdm import tqdm

from eventrec.data.loader import BatchDataset
from eventrec.model.embeddings import FeatureSpec
from eventrec.data.gather import catalogue_items, catalogue_positions
from eventrec.model.heads import catalogue_softmax_loss, fit_platt, in_batch_softmax_loss, multitask_loss, request_softmax_loss
from eventrec.store.reader import EventStore
from eventrec.training.catalogue_sampling import sampled_catalogue_logit_loss
from eventrec.training.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from eventrec.evaluation.predict import metrics_by_task, predict
from eventrec.training.factory import ModelConfig, batch_function, build_model
from eventrec.training.resume_check import check_resume
from eventrec.training.weight_average import WeightAverage


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(512, ge=1)
    eval_batch_size: int = Field(4096, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(50, ge=0)
    clip_norm: float = Field(1.0, gt=0)
    patience: int = Field(1, ge=1, description="validations without improvement (of stop_on) before stopping")
    validations_per_epoch: int = Field(1, ge=1, description="validate (and maybe stop) this many times per epoch")
    calibrate: bool = Field(True, description="fit Platt scaling per task on the validation split after training")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    task_weights: list[float] | None = None
    loss: Literal["bce", "request_softmax"] = Field(
        "bce", description="bce: binary cross-entropy per impression; request_softmax: softmax cross-entropy over each "
        "request's candidates (listwise, e.g. a positive and sampled negatives; batches keep requests whole)")
    listwise_weight: float = Field(
        0.0, ge=0, description="with loss bce: add this weight times the request softmax loss (a listwise term that "
        "sharpens the order within each request while the bce term keeps the scores probabilities); needs request ids")
    in_batch_weight: float = Field(
        0.0, ge=0, description="with a model built with dot_term: add this weight times a softmax of the dot term against "
        "every item of the batch (in-batch negatives, far more than each request's own)")
    catalogue_weight: float = Field(
        0.0, ge=0, description="with a model built with dot_term: add this weight times a full softmax of the dot term over "
        "every distinct item of the train split's impressions (the catalogue; no sampling, as SASRec's loss). Each step scores "
        "all C items' dot vectors, cheap next to the keyed pooling; needs candidates without context attributes")
    catalogue_logit_weight: float = Field(
        0.0, ge=0, description="with a model built with dot_term and one task: add this weight times a full-catalogue softmax "
        "of the whole logit (pooling, heads and dot term), estimated from catalogue_logit_draws items per positive drawn from "
        "the dot term's softmax over the catalogue and scored by the whole model (eventrec.training.catalogue_sampling): it "
        "trains the heads against the items the dot term ranks high, which the logged negatives seldom are")
    catalogue_logit_draws: int = Field(
        32, ge=1, description="with catalogue_logit_weight: items drawn per positive (each costs one more candidate row)")
    logq_column: str | None = Field(
        None, description="with loss request_softmax: an extra column of the impressions (schema extra_columns) holding, per "
        "row, log of the expected count of its item under the negative sampler (log(K·q(item)) for K negatives drawn from q); "
        "subtracted from the logits inside the softmax only (the sampled-softmax correction: with negatives drawn by "
        "popularity the loss then estimates a softmax over the whole catalogue; scores and evaluation are unchanged)")
    weight_average_decay: float = Field(
        0.0, ge=0, lt=1, description="0: off; else validate, early-stop and keep as 'best' an exponential moving average of "
        "the weights with this decay per step (eventrec.training.weight_average; e.g. 0.99), while training the raw weights")
    stop_on: Literal["ne", "auc", "score"] = Field(
        "ne", description="early stopping on the first task's validation NE or AUC, or on `score`: the value returned by the "
        "`validation_score` function given to train() (higher is better, e.g. a full-catalogue hit rate)")
    impression_validation: bool = Field(
        True, description="at each validation, also score the validation split's impressions (NE, AUC, gAUC, logloss, "
        "calibration per task: eval_log.csv and the history). stop_on ne / auc select on them; with stop_on score they "
        "select nothing, and false skips that pass over the validation impressions (it changes no weight)")

    @model_validator(mode="after")
    def _softmax_needs_no_calibration(self) -> "TrainConfig":
        if self.loss == "request_softmax" and self.calibrate:
            raise ValueError("calibrate: Platt scaling assumes the bce loss; set calibrate: false with loss: request_softmax")
        if self.logq_column is not None and self.loss != "request_softmax":
            raise ValueError("logq_column: corrects the request softmax for the negative sampler; set loss: request_softmax")
        if self.loss == "request_softmax" and self.listwise_weight:
            raise ValueError("listwise_weight: adds the request softmax to the bce loss; with loss: request_softmax leave it 0")
        if not self.impression_validation and self.stop_on != "score":
            raise ValueError(f"impression_validation: stop_on {self.stop_on!r} selects on the validation impressions; keep it true, or stop_on: score")
        return self

    @property
    def needs_requests(self) -> bool:
        """Whether batches must keep requests whole (a listwise loss term)."""
        return self.loss == "request_softmax" or self.listwise_weight > 0


@dataclass
class TrainResult:
    best_validation: dict
    best_epoch: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _optimizers(model: torch.nn.Module, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    # embedding tables with sparse gradients go to SparseAdam (row-wise updates), the rest to AdamW
    sparse = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    sparse_ids = {id(p) for p in sparse}
    decay = [p for n, p in model.named_parameters() if id(p) not in sparse_ids and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if id(p) not in sparse_ids and p.dim() < 2]
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adamw": torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate,
        )
    }
    if sparse:
        optimizers["sparse_adam"] = torch.optim.SparseAdam(sparse, lr=config.learning_rate)
    return optimizers


@torch.no_grad()
def _calibrate_on_validation(model: torch.nn.Module, store: EventStore, validation: np.ndarray, batch_fn, batch_size: int) -> None:
    """Fit each task's logit scale and bias on the validation split (Platt scaling)."""
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


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _CsvLog:
    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(columns)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])


def train(
    store: EventStore,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: Path,
    show_progress: bool = True,
    validation_score: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train on the store's train split; returns the model with its best validation weights.

    ``validation_score(model)`` (needed by ``stop_on="score"``): called at each validation with the
    model in eval mode; returns metrics on validation data (never test), whose ``"score"`` entry
    (higher is better) selects the best weights and drives early stopping. All entries go to the
    history and to ``score_log.csv``."""
    for name in ("in_batch_weight", "catalogue_weight", "catalogue_logit_weight"):
        if getattr(config, name) and not getattr(model_config, "dot_term", False):
            raise ValueError(f"{name}: trains the dot term; build the model with dot_term: true")
    if config.stop_on == "score" and validation_score is None:
        raise ValueError("stop_on: 'score' needs a validation_score function passed to train()")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    spec = FeatureSpec.from_store(store)
    model = build_model(spec, model_config)
    if config.in_batch_weight and getattr(model, "item_key_attribute", None) is None:
        raise ValueError("in_batch_weight: the impressions have no categorical or hashed item attribute to tell items apart")
    optimizers = _optimizers(model, config)
    batch_fn = batch_function(model_config)
    groups = None
    if config.needs_requests:
        if store.request_ids is None or store.request_ids.dtype.kind not in "iu":
            raise ValueError("loss request_softmax (or listwise_weight > 0) needs integer request ids (impressions.request_column)")
        groups = store.request_ids[store.split_indices("train")]
    logq = None
    if config.logq_column is not None:
        if config.logq_column not in store.extras:
            raise ValueError(f"logq_column: {config.logq_column!r} is not an extra column of this store ({sorted(store.extras)})")
        logq = store.extras[config.logq_column]
        if not np.isfinite(logq[store.split_indices("train")]).all():
            raise ValueError(f"logq_column: {config.logq_column!r} has missing or non-finite values in the train split")
    if config.catalogue_logit_weight and len(store.label_names) != 1:
        raise ValueError(f"catalogue_logit_weight: draws items for one task; this store has {len(store.label_names)} ({store.label_names})")
    catalogue = None
    if config.catalogue_weight or config.catalogue_logit_weight:
        name = "catalogue_weight" if config.catalogue_weight else "catalogue_logit_weight"
        if store.schema.impressions.context_attributes:
            raise ValueError(f"{name}: the candidates have context attributes, so an item's dot vector depends on its request")
        train_rows = store.split_indices("train")
        ids = store.item_ids[train_rows]  # ints, or strings (numpy object arrays); null ids cannot be told apart
        if ids.dtype.kind not in "iuUO" or (ids.dtype.kind == "O" and any(v is None for v in ids)):
            raise ValueError(f"{name}: the impressions need an item column with an id on every row (impressions.item_column)")
        catalogue_ids, catalogue_item = catalogue_items(store, train_rows)
        catalogue = (catalogue_ids, {k: v.to(next(model.parameters()).device) for k, v in catalogue_item.items()})
    dataset = BatchDataset(store, "train", config.batch_size, shuffle=True, seed=config.seed, batch_fn=batch_fn, groups=groups)
    validation = store.split_indices("validation")
    steps_per_epoch = len(dataset) if config.max_steps_per_epoch is None else min(len(dataset), config.max_steps_per_epoch)
    total_steps = steps_per_epoch * config.epochs
    info_base = {"model_config": model_config.model_dump(mode="json"), "feature_spec": spec.to_json(), "train_config": config.model_dump(mode="json")}

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_ne": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "best_validation": {}}
    average = WeightAverage(model, config.weight_average_decay) if config.weight_average_decay else None
    last = run_dir / "last"
    if (last / "checkpoint.json").exists() or last.with_name(".last.old").exists():
        check_resume(read_checkpoint_info(last), config, model_config, str(last))
        info, extra = load_checkpoint(last, model, optimizers)
        state = info["state"]
        torch.set_rng_state(extra["rng.torch"])
        if average is not None:  # check_resume made sure the checkpoint was written with the same decay
            average.load(extra)
        print(f"resumed from {last} at epoch {state['epoch']}, batch {state['batch_in_epoch']} (step {state['step']})", file=sys.stderr)

    def checkpoint(directory: Path, with_optimizers: bool) -> None:
        extra = {"rng.torch": torch.get_rng_state()} | (average.tensors() if with_optimizers and average is not None else {})
        save_checkpoint(directory, model, info_base | {"state": state}, optimizers if with_optimizers else None, extra)

    def validate(epoch: int) -> bool:
        """Validation (never test) of the weights kept ("best"): the raw weights, or with
        ``weight_average_decay`` their average; True when early stopping says stop."""
        if average is None:
            return validate_weights(epoch)
        with average.applied():
            return validate_weights(epoch)

    def validate_weights(epoch: int) -> bool:
        metrics: dict = {}
        if config.impression_validation:
            probs = predict(model, store, validation, batch_fn, config.eval_batch_size)
            metrics = metrics_by_task(store, validation, probs)
        for task, m in metrics.items():
            eval_log.write({"step": state["step"], "epoch": epoch, "task": task, **m})
        custom = None
        if validation_score is not None:
            model.eval()
            with torch.no_grad():
                custom = {k: float(v) for k, v in validation_score(model).items()}
            if config.stop_on == "score" and not math.isfinite(custom.get("score", math.nan)):
                raise ValueError(f"validation_score must return a finite 'score' (got {custom})")
            score_log.write({"step": state["step"], "epoch": epoch, "score": custom.get("score", ""), "metrics": json.dumps(custom)})
        state["history"].append({"epoch": epoch, "step": state["step"], "validation": metrics} | ({"score": custom} if custom else {}))
        if show_progress:
            print(f"step {state['step']} (epoch {epoch + 1}): validation " + ", ".join(f"{t} NE {m['ne']:.4f} AUC {m['auc']:.4f}" for t, m in metrics.items() if m.get("count"))
                  + (f", score {custom}" if custom else ""), file=sys.stderr)
        model.train()
        # "best_ne" holds the stopping metric, sign-flipped when higher is better (AUC, score)
        if config.stop_on == "score":
            score = -custom["score"]
        else:
            primary = metrics[store.label_names[0]]
            score = primary["ne"] if config.stop_on == "ne" else -primary["auc"]
        if state["best_ne"] is None or score < state["best_ne"]:
            state.update(best_ne=score, best_epoch=epoch, bad_epochs=0, best_validation=metrics | ({"score": custom} if custom else {}))
            checkpoint(run_dir / "best", with_optimizers=False)
            return False
        state["bad_epochs"] += 1
        return state["bad_epochs"] >= config.patience

    validation_points = {round(steps_per_epoch * (k + 1) / config.validations_per_epoch) for k in range(config.validations_per_epoch)}

    train_log = _CsvLog(run_dir / "train_log.csv", ["step", "epoch", "loss", "learning_rate", *[f"loss_{n}" for n in store.label_names]])
    eval_log = _CsvLog(run_dir / "eval_log.csv", ["step", "epoch", "task", "ne", "auc", "gauc", "logloss", "calibration", "count"])
    score_log = _CsvLog(run_dir / "score_log.csv", ["step", "epoch", "score", "metrics"]) if validation_score is not None else None
    started = time.perf_counter()
    model.train()
    stopped = state.setdefault("stopped", False)
    while state["epoch"] < config.epochs and not stopped:
        epoch = state["epoch"]
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=None, sampler=range(state["batch_in_epoch"], steps_per_epoch),
                            num_workers=config.num_workers, collate_fn=lambda b: b)
        bar = tqdm(loader, total=steps_per_epoch, initial=state["batch_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
        running = None
        for batch in bar:
            lr = learning_rate(state["step"], total_steps, config)
            for optimizer in optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = lr
            if config.needs_requests and batch.request_ids is None:
                raise ValueError("loss request_softmax / listwise_weight: this model's batches carry no request ids")
            dot_parts: list = []
            if config.catalogue_logit_weight:  # the user side is needed again for the drawn items
                user = model.user_side(batch)
                logits = model.candidate_side(user, batch.item, batch.context, batch.history_index, dot_parts)
            else:
                logits = model(batch, dot_parts) if config.in_batch_weight or config.catalogue_weight else model(batch)
            if config.loss == "request_softmax":
                corrected = logits
                if logq is not None:  # sampled-softmax correction, inside the loss only
                    corrected = logits - torch.from_numpy(logq[batch.example_indices.cpu().numpy()]).to(logits.device, logits.dtype).unsqueeze(1)
                loss, per_task = request_softmax_loss(corrected, batch.labels, batch.request_ids)
            else:
                loss, per_task = multitask_loss(logits, batch.labels, config.task_weights)
                if config.listwise_weight:
                    loss = loss + config.listwise_weight * request_softmax_loss(logits, batch.labels, batch.request_ids)[0]
            if config.in_batch_weight:
                users, items = dot_parts
                loss = loss + config.in_batch_weight * in_batch_softmax_loss(
                    users, items, batch.labels, batch.history_index, batch.item[model.item_key_attribute])[0]
            if catalogue is not None:
                catalogue_ids, catalogue_item = catalogue
                positive_item = torch.from_numpy(catalogue_positions(catalogue_ids, store.item_ids[batch.example_indices.cpu().numpy()])).to(logits.device)
                catalogue_vectors = model.dot_item_vectors(catalogue_item)
                if config.catalogue_weight:
                    loss = loss + config.catalogue_weight * catalogue_softmax_loss(
                        dot_parts[0], catalogue_vectors, batch.labels, batch.history_index, positive_item)[0]
                if config.catalogue_logit_weight:
                    loss = loss + config.catalogue_logit_weight * sampled_catalogue_logit_loss(
                        model, user, batch, logits, dot_parts[0], catalogue_vectors, catalogue_item, positive_item, config.catalogue_logit_draws)
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dense = [p for group in optimizers["adamw"].param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(dense, config.clip_norm)
            for optimizer in optimizers.values():
                optimizer.step()
            if average is not None:
                average.update()
            state["step"] += 1
            state["batch_in_epoch"] += 1
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {state['step']}; lower the learning rate")
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}")
            train_log.write({"step": state["step"], "epoch": epoch, "loss": value, "learning_rate": lr,
                             **{f"loss_{n}": float(l) for n, l in zip(store.label_names, per_task)}})
            if state["batch_in_epoch"] in validation_points:
                stopped = state["stopped"] = validate(epoch)
                checkpoint(last, with_optimizers=True)
                if stopped:
                    break
            elif state["step"] % config.checkpoint_every == 0:
                checkpoint(last, with_optimizers=True)
        bar.close()
        if stopped:
            break
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
        checkpoint(last, with_optimizers=True)
    load_checkpoint(run_dir / "best", model)
    model.eval()
    if config.calibrate and not state.get("calibrated"):
        _calibrate_on_validation(model, store, validation, batch_fn, config.eval_batch_size)
        state["calibrated"] = True
        checkpoint(run_dir / "best", with_optimizers=False)
    result = TrainResult(state["best_validation"], state["best_epoch"], state["step"], time.perf_counter() - started, state["history"])
    (run_dir / "result.json").write_text(json.dumps(result.__dict__, indent=1, default=str))
    return model, result
