"""Build a model and its batch function from a typed config; load one back from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError
from torch import nn

from eventrec.data.gather import make_batch
from eventrec.data.item_counters import WithItemCounts
from eventrec.data.user_batches import make_user_batch
from eventrec.data.dlrm_features import DlrmFeatureBuilder
from eventrec.model.config import DlrmConfig, SequenceModelConfig, as_recorded
from eventrec.model.dlrm import DlrmModel
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.sequence_ranker import SequenceRanker
from eventrec.store.reader import EventStore
from eventrec.training.store_match import check_store

ModelConfig = Union[SequenceModelConfig, DlrmConfig]
_CONFIG = TypeAdapter(ModelConfig)


def parse_model_config(data: dict) -> ModelConfig:
    """A model config from a mapping with ``kind: sequence | dlrm`` (validated; errors name the field)."""
    return _CONFIG.validate_python(data)


# Model names accepted by `eventrec train --model` and the comparisons: each a kind with defaults.
NAMED_MODELS: dict[str, dict] = {
    "sequence": {"kind": "sequence"},
    "dlrm": {"kind": "dlrm"},  # the engineered baseline (candidate-match counts, recency, numeric aggregates)
    "dlrm_id_bags": {"kind": "dlrm", "features": "id_bags"},  # the baseline before them: id bags and counts
}

# What the demo and the comparisons train: the sequence model, then its baselines.
COMPARED_MODELS = ("sequence", "dlrm", "dlrm_id_bags")


def default_config(name: str, overrides: dict | None = None) -> ModelConfig:
    """The config of a named model (:data:`NAMED_MODELS`), with ``overrides`` (a YAML's ``model:``) on top."""
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(NAMED_MODELS)}")
    return parse_model_config({**NAMED_MODELS[name], **(overrides or {})})


def build_model(spec: FeatureSpec, config: ModelConfig) -> nn.Module:
    return SequenceRanker(spec, config) if isinstance(config, SequenceModelConfig) else DlrmModel(spec, config)


def batch_function(config: ModelConfig, user_batches: bool = False) -> Callable[[object, np.ndarray], object]:
    """``fn(store, example_indices)`` producing the batches this model reads (``user_batches``: the
    sequence model's batches of whole users, :func:`~eventrec.data.user_batches.make_user_batch`)."""
    if isinstance(config, SequenceModelConfig):
        batches = make_user_batch if user_batches else make_batch
        windows = config.item_counter_windows
        return batches if windows is None else WithItemCounts(batches, windows)
    if user_batches:
        raise ValueError("user batches: only the sequence model reads them")
    return DlrmFeatureBuilder(config.windows, engineered=config.features == "engineered", item_counters=config.reads_item_counters)


def load_trained_model(checkpoint: Path, store: EventStore | None = None,
                       allow_store_mismatch: bool = False) -> tuple[nn.Module, ModelConfig, FeatureSpec, dict]:
    """Model with the checkpoint's weights (safetensors + JSON only), in eval mode. Given the
    ``store`` it will read, a store of other encodings than the training store's is refused
    (:func:`~eventrec.training.store_match.check_store`; ``allow_store_mismatch`` only warns). The model is
    first built on the ``meta`` device (nothing allocated) and its tensors' names and shapes compared
    with the weights file's header: a damaged or crafted checkpoint raises
    :class:`~eventrec.training.checkpoint.CheckpointError` naming it, before any allocation."""
    from eventrec.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, require_shapes

    info = read_checkpoint_info(checkpoint)
    if store is not None:
        check_store(info, store, checkpoint, allow_store_mismatch)
    try:
        config = parse_model_config(as_recorded(info["model_config"]))
        spec = FeatureSpec.from_json(info["feature_spec"])
        with torch.device("meta"):
            skeleton = build_model(spec, config)
    except (KeyError, TypeError, ValueError, ValidationError, RuntimeError) as error:
        raise CheckpointError(f"{Path(checkpoint) / 'checkpoint.json'}: not a model this eventrec builds ({type(error).__name__}: {error})") from None
    require_shapes(Path(checkpoint) / "model.safetensors", {k: v.shape for k, v in skeleton.state_dict().items()})
    model = build_model(spec, config)
    load_checkpoint(checkpoint, model)
    model.eval()
    return model, config, spec, info
