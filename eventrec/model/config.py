"""Typed model configurations, validated when built (errors name the bad field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExperimentalModelConfig(_Config):
    """Model variants kept for research: off by default, not shown to beat noise in docs/results.md.
    ``eventrec train`` takes a config with this section only when asked to explicitly."""

    identity_match: bool = Field(
        False, description="with match_attention: beside each match vocabulary's learned embedding, a fixed pseudo-random "
        "code of the id (attribute_dim entries of ±1/√attribute_dim; eventrec.model.identity_codes), whose cosine is 1 only for "
        "the same id: an exact-identity channel of the target attention, with its own learned weight per head")
    dot_term: bool = Field(
        False, description="add to each task's logit a factorised term <user vector, item vector>: the user vector from "
        "the last encoded position, the item vector from the candidate's attributes (cheap to score against many items, so "
        "it can be trained against the whole catalogue: TrainConfig.experimental.objectives, catalogue_softmax)")
    match_count: bool = Field(
        False, description="with match_attention: a count-preserving path beside the keyed pooling (whose softmax returns "
        "a weighted average, blind to how often the candidate occurs): per match block, log1p of the soft count "
        "sum_e sigmoid(a (cos(c, e) - b)) of the history's events matching the candidate (a, b learned), into the heads")
    match_windows: list[int] = Field(
        default_factory=list, description="with match_features: per match vocabulary, one more feature per window (seconds, "
        "increasing): log1p of the matching events within the window before the request (e.g. [86400, 604800, 2592000], "
        "the engineered DLRM's 1d / 7d / 30d)")

    @model_validator(mode="after")
    def _windows_increase(self) -> "ExperimentalModelConfig":
        _check_windows("match_windows", self.match_windows)
        return self


def _check_windows(name: str, windows: list[int] | None) -> None:
    """A ValueError naming ``name`` unless ``windows`` (None: none) are positive seconds, increasing."""
    seconds = windows or []
    if any(w <= 0 for w in seconds) or any(b <= a for a, b in zip(seconds, seconds[1:])):
        raise ValueError(f"{name}: positive seconds in increasing order, got {windows}")


_EXPERIMENTAL_FIELDS = tuple(ExperimentalModelConfig.model_fields)
_PROMOTED = ("match_features", "item_counters")  # experimental fields that became production fields (a recorded experimental value wins)
_REMOVED = {"transition_match": False, "pooling": "keyed_attention"}  # removed variants: their default is all that is accepted


def _promote(data: dict, drop_defaults: bool = False) -> dict:
    """``data`` with the :data:`_PROMOTED` fields of its ``experimental`` section moved to the top level
    (the rest of the section stays; none when empty, or with ``drop_defaults`` when all at its defaults)."""
    experimental = data.get("experimental")
    if not (isinstance(experimental, dict) and any(name in experimental for name in _PROMOTED)):
        return data
    rest = {k: v for k, v in experimental.items() if k not in _PROMOTED}
    defaults = ExperimentalModelConfig().model_dump(mode="json") if drop_defaults else {}
    empty = not rest or (drop_defaults and all(defaults.get(k) == v for k, v in rest.items()))
    return {**data, **{name: experimental[name] for name in _PROMOTED if name in experimental}, "experimental": None if empty else rest}


def _move_legacy_fields(data: dict) -> dict:
    """A config written before ``experimental`` existed (a checkpoint's ``config.json``, an older
    YAML): ``identity_match`` / ``dot_term`` at the top level move into ``experimental``; the removed
    variants' fields are dropped at their default and refused otherwise."""
    data = dict(data)
    for name, default in _REMOVED.items():
        if name in data and data.pop(name) != default:
            raise ValueError(f"{name}: this variant was removed (it showed no gain, docs/results.md); only {default!r} is accepted")
    data = _promote(data)
    legacy = {name: data.pop(name) for name in _EXPERIMENTAL_FIELDS if name in data}
    if any(legacy.values()):
        experimental = data.get("experimental") or {}
        experimental = experimental.model_dump() if isinstance(experimental, BaseModel) else dict(experimental)
        data["experimental"] = {**experimental, **{k: v for k, v in legacy.items() if v}}
    return data


class CandidateSearchConfig(_Config):
    """Which events each candidate's keyed pooling reads (eventrec/model/candidate_search.py): the
    summary token, the ``recent`` most recent events, and per match vocabulary the ``per_match`` most
    recent events with the candidate's id in it. Ranking then costs O(recent + V·per_match) per
    candidate, whatever the history's length (SIM's search, then exact attention)."""

    recent: int = Field(64, ge=0, description="the most recent events every candidate reads")
    per_match: int = Field(64, ge=1, description="per match vocabulary, the most recent events with the candidate's id in it")


RECORDED_BEFORE_FIELDS = {"recency": "encoder", "match_features": False, "item_counters": None}
"""Sequence-model fields added since whose default differs from what models recorded before them
trained with: a recorded config (``checkpoint.json``, a comparison's ``run.json``: complete dumps)
without the field means this value (:func:`as_recorded`)."""


def as_recorded(data: dict) -> dict:
    """A model config as a checkpoint or run recorded it, with :data:`RECORDED_BEFORE_FIELDS` filled in
    where it predates them, its promoted experimental fields at the top level, and an ``experimental``
    section left at every default written as none (what it means; a DLRM's config is returned as it is)."""
    if not data:
        return data
    if data.get("kind", "sequence") != "sequence":  # before item_counters, engineered features had none; id bags never do
        return {"item_counters": False if data.get("features", "engineered") == "engineered" else None, **data}
    return {**RECORDED_BEFORE_FIELDS, **_promote(data, drop_defaults=True)}


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
    encoder: Literal["softmax", "linear"] = Field(
        "softmax", description="the sequence encoder's layers: 'softmax' = attention over all earlier events (O(N^2) "
        "per history; serving caches keys/values that grow with N); 'linear' = causal gated linear attention "
        "(eventrec.model.linear_encoder: O(N) per history, each head's [d, d] state decays by a learned per-event gate "
        "and, with time_bias, by a learned half-life of the time gap to the previous event; serving caches that "
        "[H, d, d] state per layer, whatever N; needs causal)")
    time_bias: bool = Field(True, description="learned [H, time_buckets] attention bias by time gap")
    time_buckets: int = Field(32, ge=1, le=64)
    timestamp_encoding: bool = Field(True, description="recency and order embeddings (ablation: off)")
    recency: Literal["encoder", "pooling"] = Field(
        "pooling", description="where the recency bucket(T - t_i) of each event to the request time T enters (with "
        "timestamp_encoding): 'encoder' = a recency embedding added to the event embeddings, with an order embedding "
        "counted from the most recent event and the summary token at time T (the encoded events depend on T: a cached "
        "user side is recomputed when a bucket changes); 'pooling' = learned recency embeddings added to the keyed "
        "pooling's keys and values per request, an order embedding counted from the history's first event and the "
        "summary token at time 0 (the encoder never reads T: with causal, a cached user side grows exactly by the "
        "appended events, SequenceRanker.extend_user)")
    event_attributes: bool = Field(True, description="use attributes beyond each stream's id (ablation: off)")
    summary_token: bool = Field(True, description="a learned token at the start of every history")
    pooling_slots: int = Field(4, ge=1, description="M query slots per candidate")
    match_attention: bool = Field(
        True, description="add to the pooling scores a learned, per-head weight of the cosine similarity between the "
        "candidate's and each event's embeddings in every vocabulary they share (target attention)")
    match_features: bool = Field(
        True, description="with match_attention: exact candidate-match features into the heads, per match vocabulary "
        "(eventrec.model.match_features): log1p of the number of the history's events with the candidate's id, whether "
        "there is one, and the log age of the most recent one at the request time (what the candidate-count and recency "
        "rules read, which the softmax pooling's weighted average cannot count); O((N + C) log N) per user")
    item_counters: list[int] | None = Field(
        default_factory=lambda: [86_400, 604_800, 2_592_000], description="item-side counters into the heads "
        "(eventrec.data.item_counters): per stream and vocabulary the candidate shares with it, log1p of the events of "
        "all users with the candidate's id before the request, over the whole history and each window listed (seconds, "
        "increasing; [] for the whole history only); what the item-popularity rules read, which one user's history "
        "cannot carry. None: off")
    max_history: int | None = Field(None, ge=1, description="cap on the merged timeline length (ablation)")
    candidate_search: CandidateSearchConfig | None = Field(
        None, description="None: every candidate's pooling reads the whole history; else only the events a search by the "
        "candidate's ids picks (needs match_attention and a vocabulary the candidates share with the events)")
    cross_layers: int = Field(2, ge=0)
    cross_rank: int | None = Field(
        None, ge=1, description="None: full-rank cross layers (F x F weights on the head's F inputs); r: each weight is "
        "a product of [F, r] and [r, F] matrices (DCNv2's low-rank cross), 2·F·r instead of F² multiply-adds per "
        "candidate; the cross layers are most of the ranking time of a wide model (docs/models.md)")
    mlp_dims: list[int] = Field(default_factory=lambda: [128, 64])
    experimental: ExperimentalModelConfig | None = Field(
        None, description="research variants (identity_match, dot_term); None: the production model")

    @model_validator(mode="before")
    @classmethod
    def _legacy_fields(cls, data):
        return _move_legacy_fields(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _heads_divide(self) -> "SequenceModelConfig":
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim ({self.model_dim}) must be divisible by num_heads ({self.num_heads})")
        return self

    @model_validator(mode="after")
    def _linear_encoder_is_causal(self) -> "SequenceModelConfig":
        if self.encoder == "linear" and not self.causal:
            raise ValueError("encoder: 'linear' is causal only; set causal: true or encoder: 'softmax'")
        return self

    @property
    def identity_match(self) -> bool:
        """``experimental.identity_match`` (False without an experimental section)."""
        return self.experimental is not None and self.experimental.identity_match

    @property
    def match_count(self) -> bool:
        """``experimental.match_count`` (False without an experimental section)."""
        return self.experimental is not None and self.experimental.match_count

    @property
    def dot_term(self) -> bool:
        """``experimental.dot_term`` (False without an experimental section)."""
        return self.experimental is not None and self.experimental.dot_term

    @property
    def match_windows(self) -> tuple[int, ...]:
        """``experimental.match_windows`` (none without an experimental section)."""
        return () if self.experimental is None else tuple(self.experimental.match_windows)

    @property
    def item_counter_windows(self) -> tuple[int, ...] | None:
        """``item_counters``: the windows of the item counters (None: not read)."""
        return None if self.item_counters is None else tuple(self.item_counters)

    @model_validator(mode="after")
    def _item_counter_windows_increase(self) -> "SequenceModelConfig":
        _check_windows("item_counters", self.item_counters)
        return self

    @model_validator(mode="after")
    def _windows_need_features(self) -> "SequenceModelConfig":
        if self.match_windows and not self.match_features:
            raise ValueError("experimental.match_windows: windowed counts are match features; set match_features: true")
        return self


class DlrmConfig(_Config):
    """The DLRM baseline over aggregated features (windows are those of DlrmFeatureBuilder).

    ``features``: ``engineered`` (default) = id bags and counts plus the features an engineer
    hand-crafts (candidate-match counts and recency per stream and window, numeric aggregates);
    ``id_bags`` = the earlier baseline, id bags and counts only."""

    kind: Literal["dlrm"] = "dlrm"
    features: Literal["engineered", "id_bags"] = "engineered"
    attribute_dim: int = Field(16, ge=1)
    bottom_mlp: list[int] = Field(default_factory=lambda: [64, 16])
    top_mlp: list[int] = Field(default_factory=lambda: [128, 64])
    windows: dict[str, int | None] = Field(default_factory=lambda: {"1d": 86_400, "7d": 604_800, "30d": 2_592_000, "all": None})
    item_counters: bool | None = Field(
        None, description="per candidate-match pair and window, log1p of the events of all users with the candidate's id before "
        "the request (eventrec.data.item_counters); None: with the engineered features, not with the id bags")

    @model_validator(mode="after")
    def _bottom_ends_at_attribute_dim(self) -> "DlrmConfig":
        if not self.bottom_mlp or self.bottom_mlp[-1] != self.attribute_dim:
            raise ValueError(f"bottom_mlp must end at attribute_dim ({self.attribute_dim}) for the dot interaction")
        return self

    @model_validator(mode="after")
    def _item_counters_are_engineered(self) -> "DlrmConfig":
        if self.item_counters and self.features != "engineered":
            raise ValueError("item_counters: an engineered feature; set features: engineered")
        return self

    @property
    def reads_item_counters(self) -> bool:
        """Whether the features hold the item counters (``item_counters``, by default with ``engineered``)."""
        return self.features == "engineered" if self.item_counters is None else self.item_counters
