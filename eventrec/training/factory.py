"""Build a model and its batch function from a typed config; load one back from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

import numpy as np
from pydantic import TypeAdapter
from torch import nn

from eventrec.data.gather import make_batch
from eventrec.data.dlrm_features import DlrmFeatureBuilder
from eventrec.model.config import DlrmConfig, SequenceModelConfig
from eventrec.model.dlrm import DlrmModel
from eventrec.model.embeddings import FeatureSpec
from eventrec.model.sequence_ranker import SequenceRanker

ModelConfig = Union[SequenceModelConfig, DlrmConfig]
_CONFIG = TypeAdapter(ModelConfig)


def parse_model_config(data: dict) -> ModelConfig:
    """A model config from a mapping with ``kind: sequence | dlrm`` (validated; errors name the field)."""
    return _CONFIG.validate_python(data)


def default_config(kind: str) -> ModelConfig:
    if kind == "sequence":
        return SequenceModelConfig()
    if kind == "dlrm":
        return DlrmConfig()
    raise ValueError(f"unknown model kind {kind!r}; expected 'sequence' or 'dlrm'")


def build_model(spec: FeatureSpec, config: ModelConfig) -> nn.Module:
    return SequenceRanker(spec, config) if isinstance(config, SequenceModelConfig) else DlrmModel(spec, config)


def batch_function(config: ModelConfig) -> Callable[[object, np.ndarray], object]:
    """``fn(store, example_indices)`` producing the batches this model reads."""
    if isinstance(config, SequenceModelConfig):
        return make_batch
    return DlrmFeatureBuilder(config.windows)


def load_trained_model(checkpoint: Path) -> tuple[nn.Module, ModelConfig, FeatureSpec, dict]:
    """Model with the checkpoint's weights (safetensors + JSON only), in eval mode."""
    from eventrec.training.checkpoint import load_checkpoint, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    config = parse_model_config(info["model_config"])
    spec = FeatureSpec.from_json(info["feature_spec"])
    model = build_model(spec, config)
    load_checkpoint(checkpoint, model)
    model.eval()
    return model, config, spec, info
