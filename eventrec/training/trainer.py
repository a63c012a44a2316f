"""One training loop for both models: the :class:`Trainer` and its public entry :func:`train`.

AdamW, and SparseAdam for embedding tables with sparse gradients, linear warm-up then cosine decay,
gradient clipping (:mod:`eventrec.training.optim`); the loss is the weighted sum of the config's
objectives (:mod:`eventrec.training.objectives`). Evaluation on the *validation* split (the test
split is never read here) ``validations_per_epoch`` times per epoch, with early stopping on the
primary task's NE, its AUC, or a caller's validation score; deterministic seeds and data order, a
tqdm progress bar with the running loss, CSV logs, and checkpoints (safetensors + JSON): ``last/``
every ``checkpoint_every`` steps, at each validation and at each epoch end (a killed run resumes
from it bit-identically, losing only the steps since), ``best/`` with the best validation weights.
Callbacks (:mod:`eventrec.training.callbacks`, e.g. the experimental weight average) choose the
weights that are validated and kept.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from eventrec.data.loader import BatchDataset
from eventrec.evaluation.predict import metrics_by_task, predict
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.sequence_ranker import SequenceRanker
from eventrec.store.reader import EventStore
from eventrec.training.calibration import calibrate_on_validation
from eventrec.training.callbacks import Callback
from eventrec.training.checkpoint import load_checkpoint, read_checkpoint_info, remove_stale_temporaries, save_checkpoint
from eventrec.training.config import ExperimentalTrainConfig, TrainConfig
from eventrec.training.factory import ModelConfig, batch_function, build_model
from eventrec.training.logs import CsvLog
from eventrec.training.objectives import Catalogue, forward, total_loss
from eventrec.training.optim import build_optimizers, learning_rate, optimizer_step
from eventrec.training.resume_check import check_resume
from eventrec.training.store_match import STORE_KEY, check_store, store_record
from eventrec.training.weight_average import WeightAverage

__all__ = ["ExperimentalTrainConfig", "TrainConfig", "TrainResult", "Trainer", "check_splits", "learning_rate", "seed_everything", "train"]

ValidationScore = Callable[[torch.nn.Module], dict[str, float]]


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


def check_splits(store: EventStore, config: TrainConfig) -> None:
    """Raise ``ValueError`` naming the split when the train split is empty, or when the validation
    split has no labelled impression of the first task although early stopping on NE / AUC or the
    calibration needs one (split boundaries beyond the data build such stores)."""
    fix = "rebuild the store with split boundaries inside the data's time range (schema splits: train_end, validation_end)"
    if len(store.split_indices("train")) == 0:
        raise ValueError(f"{store.path}: the train split is empty; {fix}")
    if config.stop_on in ("ne", "auc") or config.calibrate:
        primary = store.label_names[0]
        labelled = int((~np.isnan(store.labels[store.split_indices("validation"), 0])).sum())
        if labelled == 0:
            needs = " and ".join(([f"stop_on: {config.stop_on}"] if config.stop_on != "score" else []) + (["calibrate"] if config.calibrate else []))
            raise ValueError(f"{store.path}: the validation split has no impression labelled {primary!r}, which {needs} needs; {fix}")


class Trainer:
    """Trains a model of ``model_config`` on ``store``'s train split into ``run_dir`` (resuming the
    run there, if any). ``validation_score(model)`` (needed by ``stop_on="score"``): called at each
    validation with the model in eval mode; returns metrics on validation data (never test), whose
    ``"score"`` entry (higher is better) selects the best weights and drives early stopping."""

    def __init__(self, store: EventStore, model_config: ModelConfig, config: TrainConfig, run_dir: Path,
                 show_progress: bool = True, validation_score: ValidationScore | None = None):
        if config.stop_on == "score" and validation_score is None:
            raise ValueError("stop_on: 'score' needs a validation_score function passed to train()")
        for where, objective in config.all_objectives():
            objective.check(store, model_config, where)
        check_splits(store, config)
        self.store, self.model_config, self.config = store, model_config, config
        self.run_dir, self.show_progress, self.validation_score = Path(run_dir), show_progress, validation_score
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.run_dir)  # left by a run killed while writing
        self._build()
        self.resume()
        self._open_logs()

    def _open_logs(self) -> None:
        """The CSV logs of the run directory, without the rows of steps after the checkpoint resumed from."""
        names = self.store.label_names
        self.train_log = CsvLog(self.run_dir / "train_log.csv", ["step", "epoch", "loss", "learning_rate", *[f"loss_{n}" for n in names]])
        self.eval_log = CsvLog(self.run_dir / "eval_log.csv", ["step", "epoch", "task", "ne", "auc", "gauc", "logloss", "calibration", "count"])
        self.score_log = CsvLog(self.run_dir / "score_log.csv", ["step", "epoch", "score", "metrics"]) if self.validation_score else None
        for log in (self.train_log, self.eval_log, self.score_log):
            if log is not None:  # rows logged after the checkpoint resumed from are written again
                log.drop_after(self.state["step"])

    def _build(self) -> None:
        """The model, optimizers, objectives, data and a fresh state (seeded: the same on every run)."""
        config, store = self.config, self.store
        seed_everything(config.seed)
        self.spec = FeatureSpec.from_store(store)
        self.model = build_model(self.spec, self.model_config)
        self.optimizers = build_optimizers(self.model, config)
        self.batch_fn = batch_function(self.model_config)
        self.objectives = [objective for _, objective in config.all_objectives()]
        device = next(self.model.parameters()).device
        self.catalogue = Catalogue.of_train_split(store, device) if any(o.needs_catalogue for o in self.objectives) else None
        groups = store.request_ids[store.split_indices("train")] if config.needs_requests else None
        self.validation = store.split_indices("validation")
        if config.user_batches:  # whole users per batch (a request is within one user), validation by user too
            if not isinstance(self.model, SequenceRanker):
                raise ValueError("experimental.user_batches: only the sequence model reads user batches")
            self.model.check_prefix_batches()
            self.batch_fn = batch_function(self.model_config, user_batches=True)
            groups = store.user_rows[store.split_indices("train")]
            self.validation = self.validation[np.argsort(store.user_rows[self.validation], kind="stable")]  # a batch: few users
        self.dataset = BatchDataset(store, "train", config.batch_size, shuffle=True, seed=config.seed, batch_fn=self.batch_fn, groups=groups)
        self.steps_per_epoch = self.epoch_length()  # the first epoch's; grouped batches vary a little from epoch to epoch
        self.total_steps = self.steps_per_epoch * config.epochs
        self.info_base = {"model_config": self.model_config.model_dump(mode="json"), "feature_spec": self.spec.to_json(),
                          "train_config": config.model_dump(mode="json"), STORE_KEY: store_record(store)}
        self.state: dict = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_ne": None, "best_epoch": -1, "bad_epochs": 0,
                            "history": [], "best_validation": {}}
        decay = config.weight_average_decay
        self.callbacks: list[Callback] = [WeightAverage(self.model, decay)] if decay else []

    def epoch_length(self) -> int:
        """Batches in the dataset's current epoch (at most ``max_steps_per_epoch``). Batches of whole
        groups (users, requests) are packed from each epoch's shuffled group order, so their number
        can differ by a few from one epoch to the next."""
        full = len(self.dataset)
        return full if self.config.max_steps_per_epoch is None else min(full, self.config.max_steps_per_epoch)

    def validation_points(self, length: int) -> set[int]:
        """The batch counts within an epoch of ``length`` batches after which to validate (the last is its end)."""
        per_epoch = self.config.validations_per_epoch
        return {round(length * (k + 1) / per_epoch) for k in range(per_epoch)}

    @property
    def last(self) -> Path:
        return self.run_dir / "last"

    def resume(self) -> None:
        """Continue from ``last/`` when the run directory holds one (written with the same configuration)."""
        last = self.last
        if not ((last / "checkpoint.json").exists() or last.with_name(".last.old").exists()):
            return
        saved = read_checkpoint_info(last)
        check_resume(saved, self.config, self.model_config, str(last))
        check_store(saved, self.store, last)
        info, extra = load_checkpoint(last, self.model, self.optimizers)
        self.state = info["state"]
        torch.set_rng_state(extra["rng.torch"])
        for callback in self.callbacks:
            callback.load_state(extra)
        state = self.state
        print(f"resumed from {last} at epoch {state['epoch']}, batch {state['batch_in_epoch']} (step {state['step']})", file=sys.stderr)

    def checkpoint(self, directory: Path, with_optimizers: bool) -> None:
        """Write the model (and, for a resumable checkpoint, the optimizers and callbacks' state)."""
        extra = {"rng.torch": torch.get_rng_state()}
        if with_optimizers:
            for callback in self.callbacks:
                extra |= callback.state_tensors()
        save_checkpoint(directory, self.model, self.info_base | {"state": self.state}, self.optimizers if with_optimizers else None, extra)

    def step(self, batch) -> tuple[float, float]:
        """One optimizer step on ``batch``; returns (the loss, the learning rate)."""
        state = self.state
        lr = learning_rate(state["step"], self.total_steps, self.config)
        loss, per_task = self.loss(batch)
        optimizer_step(self.optimizers, loss, lr, self.config.clip_norm)
        for callback in self.callbacks:
            callback.after_step()
        state["step"] += 1
        state["batch_in_epoch"] += 1
        value = self.logged_loss(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {state['step']}; lower the learning rate")
        tasks = {} if per_task is None else {f"loss_{n}": float(v) for n, v in zip(self.store.label_names, per_task)}
        self.train_log.write({"step": state["step"], "epoch": state["epoch"], "loss": value, "learning_rate": lr, **tasks})
        return value, lr

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the loss to back-propagate for ``batch``, the first objective's per-task losses ``[T]`` or None)."""
        context = forward(self.model, batch, self.objectives, self.store, self.catalogue)
        return total_loss(self.objectives, context)

    def logged_loss(self, loss: torch.Tensor) -> float:
        """The step's loss as the training log records it."""
        return loss.item()

    def validate(self, epoch: int) -> bool:
        """Validation (never test) of the weights the callbacks choose (the raw ones without any);
        keeps them as ``best/`` when better. True when early stopping says stop."""
        with ExitStack() as stack:
            for callback in self.callbacks:
                stack.enter_context(callback.weights_for_validation())
            metrics, custom = self._measure(epoch)
            return self._select(epoch, metrics, custom)

    def _measure(self, epoch: int) -> tuple[dict, dict | None]:
        """The validation metrics per task (empty without ``impression_validation``) and the caller's
        score, logged and added to the history."""
        config, state = self.config, self.state
        metrics: dict = {}
        if config.impression_validation:
            probs = predict(self.model, self.store, self.validation, self.batch_fn, config.eval_batch_size)
            metrics = metrics_by_task(self.store, self.validation, probs)
        for task, m in metrics.items():
            self.eval_log.write({"step": state["step"], "epoch": epoch, "task": task, **m})
        custom = None
        if self.validation_score is not None:
            self.model.eval()
            with torch.no_grad():
                custom = {k: float(v) for k, v in self.validation_score(self.model).items()}
            if config.stop_on == "score" and not math.isfinite(custom.get("score", math.nan)):
                raise ValueError(f"validation_score must return a finite 'score' (got {custom})")
            self.score_log.write({"step": state["step"], "epoch": epoch, "score": custom.get("score", ""), "metrics": json.dumps(custom)})
        state["history"].append({"epoch": epoch, "step": state["step"], "validation": metrics} | ({"score": custom} if custom else {}))
        if self.show_progress:
            print(f"step {state['step']} (epoch {epoch + 1}): validation "
                  + ", ".join(f"{t} NE {m['ne']:.4f} AUC {m['auc']:.4f}" for t, m in metrics.items() if m.get("count"))
                  + (f", score {custom}" if custom else ""), file=sys.stderr)
        self.model.train()
        return metrics, custom

    def _select(self, epoch: int, metrics: dict, custom: dict | None) -> bool:
        """Keep the weights as ``best/`` when ``stop_on`` improved; True when patience ran out."""
        config, state = self.config, self.state
        # "best_ne" holds the stopping metric, sign-flipped when higher is better (AUC, score)
        if config.stop_on == "score":
            score = -custom["score"]
        else:
            primary = metrics[self.store.label_names[0]]
            score = primary["ne"] if config.stop_on == "ne" else -primary["auc"]
        if state["best_ne"] is None or score < state["best_ne"]:
            state.update(best_ne=score, best_epoch=epoch, bad_epochs=0, best_validation=metrics | ({"score": custom} if custom else {}))
            self.checkpoint(self.run_dir / "best", with_optimizers=False)
            return False
        state["bad_epochs"] += 1
        return state["bad_epochs"] >= config.patience

    def run_epoch(self) -> bool:
        """Train the rest of the current epoch (from ``batch_in_epoch``); True when early stopping stopped it."""
        config, state = self.config, self.state
        epoch = state["epoch"]
        self.dataset.set_epoch(epoch)
        length = self.epoch_length()
        validation_points = self.validation_points(length)
        loader = DataLoader(self.dataset, batch_size=None, sampler=range(state["batch_in_epoch"], length),
                            num_workers=config.num_workers, collate_fn=lambda b: b)
        bar = tqdm(loader, total=length, initial=state["batch_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not self.show_progress, file=sys.stderr, dynamic_ncols=True)
        running, stopped = None, False
        for batch in bar:
            value, lr = self.step(batch)
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}")
            if state["batch_in_epoch"] in validation_points:
                stopped = state["stopped"] = self.validate(epoch)
                self.checkpoint(self.last, with_optimizers=True)
                if stopped:
                    break
            elif state["step"] % config.checkpoint_every == 0:
                self.checkpoint(self.last, with_optimizers=True)
        bar.close()
        return stopped

    def fit(self) -> tuple[torch.nn.Module, TrainResult]:
        """Train to the end (or early stop), then load ``best/``, calibrate it and write ``result.json``."""
        started = time.perf_counter()
        self.train_epochs()
        return self.finish(started)

    def train_epochs(self) -> None:
        """Train the remaining epochs (until early stopping stops), checkpointing ``last/`` at each epoch end."""
        state = self.state
        self.model.train()
        stopped = state.setdefault("stopped", False)
        while state["epoch"] < self.config.epochs and not stopped:
            stopped = self.run_epoch()
            if stopped:
                break
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            self.checkpoint(self.last, with_optimizers=True)

    def finish(self, started: float) -> tuple[torch.nn.Module, TrainResult]:
        """Load ``best/``, calibrate it (once) and write ``result.json``; ``started``: the fit's start time."""
        state = self.state
        load_checkpoint(self.run_dir / "best", self.model)
        self.model.eval()
        if self.config.calibrate and not state.get("calibrated"):
            calibrate_on_validation(self.model, self.store, self.validation, self.batch_fn, self.config.eval_batch_size)
            state["calibrated"] = True
            self.checkpoint(self.run_dir / "best", with_optimizers=False)
        result = TrainResult(state["best_validation"], state["best_epoch"], state["step"], time.perf_counter() - started, state["history"])
        (self.run_dir / "result.json").write_text(json.dumps(result.__dict__, indent=1, default=str))
        return self.model, result


def train(
    store: EventStore,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: Path,
    show_progress: bool = True,
    validation_score: ValidationScore | None = None,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train on the store's train split; returns the model with its best validation weights
    (:class:`Trainer`; all entries of ``validation_score``'s dict go to the history and to
    ``score_log.csv``)."""
    return Trainer(store, model_config, config, run_dir, show_progress, validation_score).fit()
