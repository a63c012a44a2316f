"""Typed model configurations, validated when built (errors name the bad field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SequenceModelConfig(_Config):
    """The event-sequence ranker: event model, jagged transformer, ad-keyed pooling, head."""

    kind: Literal["sequence"] = "sequence"
    attribute_dim: int = Field(16, ge=1, description="size of each attribute embedding")
    model_dim: int = Field(64, ge=8, description="D: event embedding and transformer width")
    num_layers: int = Field(2, ge=0)
    num_heads: int = Field(4, ge=1)
    ffn_multiplier: int = Field(2, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    causal: bool = True
    time_bias: bool = Field(True, description="learned [H, time_buckets] attention bias by time gap")
    time_buckets: int = Field(32, ge=1, le=64)
    timestamp_encoding: bool = Field(True, description="recency and order embeddings (ablation: off)")
    event_attributes: bool = Field(True, description="use attributes beyond each stream's id (ablation: off)")
    summary_token: bool = Field(True, description="a learned token at the start of every history")
    pooling: Literal["keyed_attention", "mean"] = "keyed_attention"
    pooling_slots: int = Field(4, ge=1, description="M query slots per candidate")
    match_attention: bool = Field(
        True, description="add to the pooling scores a learned, per-head weight of the cosine similarity between the "
        "candidate's and each event's embeddings in every vocabulary they share (target attention)")
    identity_match: bool = Field(
        False, description="with match_attention: beside each match vocabulary's learned embedding, a fixed pseudo-random "
        "code of the id (attribute_dim entries of ±1/√attribute_dim; eventrec.model.identity_codes), whose cosine is 1 only for "
        "the same id: an exact-identity channel of the target attention, with its own learned weight per head")
    transition_match: bool = Field(
        False, description="with match_attention: a directed item-to-item channel in the target attention. Each match "
        "vocabulary gets two more learned tables: a 'from' embedding on the event side and a 'to' embedding on the candidate "
        "side, whose cosine (learned weight per head) says how likely the candidate follows the event, which a symmetric "
        "similarity cannot say (the items of one basket, what comes after what)")
    max_history: int | None = Field(None, ge=1, description="cap on the merged timeline length (ablation)")
    cross_layers: int = Field(2, ge=0)
    cross_rank: int | None = Field(
        None, ge=1, description="None: full-rank cross layers (F x F weights on the head's F inputs); r: each weight is "
        "a product of [F, r] and [r, F] matrices (DCNv2's low-rank cross), 2·F·r instead of F² multiply-adds per "
        "candidate; the cross layers are most of the ranking time of a wide model (docs/models.md)")
    mlp_dims: list[int] = Field(default_factory=lambda: [128, 64])
    dot_term: bool = Field(
        False, description="add to each task's logit a factorised term <user vector, item vector>: the user vector from "
        "the last encoded position, the item vector from the candidate's attributes (cheap to score against many items, so "
        "it can be trained against every item of a batch: TrainConfig.in_batch_weight)")

    @model_validator(mode="after")
    def _heads_divide(self) -> "SequenceModelConfig":
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim ({self.model_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.transition_match and not (self.match_attention and self.pooling == "keyed_attention"):
            raise ValueError("transition_match: a channel of the match attention; it needs match_attention: true and pooling: keyed_attention")
        return self


class DlrmConfig(_Config):
    """The DLRM baseline over aggregated features (windows are those of DlrmFeatureBuilder)."""

    kind: Literal["dlrm"] = "dlrm"
    attribute_dim: int = Field(16, ge=1)
    bottom_mlp: list[int] = Field(default_factory=lambda: [64, 16])
    top_mlp: list[int] = Field(default_factory=lambda: [128, 64])
    windows: dict[str, int | None] = Field(default_factory=lambda: {"1d": 86_400, "7d": 604_800, "30d": 2_592_000, "all": None})

    @model_validator(mode="after")
    def _bottom_ends_at_attribute_dim(self) -> "DlrmConfig":
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.attribute_dim:
            raise ValueError(f"bottom_mlp must end at attribute_dim ({self.attribute_dim}) for the dot interaction")
        return self
