"""The declarative schema of a dataset's event streams and impressions, loaded from YAML.

A schema says which raw rows form each event stream, each stream's maximum length and sampling
policy, the attributes of every event (categorical, hashed, multi-valued, numeric, content
embedding), the impressions table (user, item, timestamp, labels, item and context attributes) and
the time-based train / validation / test boundaries.

Every validation error names the file, the field (as a dotted path) and what was expected::

    schema.yaml: streams.0.attributes.1.kind: Input should be 'categorical', 'hashed', ... (got 'categ')

Example (see ``eventrec/schemas/`` for complete ones)::

    name: synthetic_ads
    events: {path: events.parquet, user_column: user_id, timestamp_column: timestamp,
             type_column: event_type}
    streams:
      - name: ad_click
        event_types: [ad_click]
        max_length: 128
        attributes:
          - {name: ad_id, kind: categorical, vocabulary: ad_id}
          - {name: price, kind: numeric, transform: log1p}
    impressions:
      path: impressions.parquet
      user_column: user_id
      item_column: ad_id
      timestamp_column: timestamp
      labels: [click, conversion]
      item_attributes: [{name: ad_id, kind: categorical, vocabulary: ad_id}]
    splits: {train_end: 2026-01-20, validation_end: 2026-01-25}
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_serializer, model_validator

from eventrec.data.sampling import SAMPLING_POLICIES
from eventrec.schema.attributes import (ID_KINDS, NAME_PATTERN, VOCABULARY_KINDS, Attribute, CategoricalAttribute, EmbeddingAttribute,
                                        EventsSource, HashedAttribute, MultiCategoricalAttribute, Name, NumericAttribute, SchemaError,
                                        VectorPrecision, _Strict, attribute_named, without_default_precision)
from eventrec.schema.derived_labels import WINDOW_UNITS, DerivedLabel, MatchColumn, window_seconds

__all__ = [
    "ID_KINDS", "NAME_PATTERN", "VOCABULARY_KINDS", "WINDOW_UNITS", "Attribute", "Boundary", "CategoricalAttribute", "ContentTable",
    "DerivedLabel", "EmbeddingAttribute", "EventsSource", "HashedAttribute", "Impressions", "MatchColumn", "MultiCategoricalAttribute",
    "Name", "NumericAttribute", "Schema", "SchemaError", "Splits", "Stream", "ValueSampling", "VectorPrecision", "boundary_to_seconds",
    "builtin_schema_path", "load_schema", "parse_schema", "window_seconds",
]


class ValueSampling(_Strict):
    """``sampling: {policy: value, ...}``: keep a stream's most valuable events, not only the latest.

    Among the events before the cut, the ``max_length`` of highest ``value · 2^(-age / half_life)``
    are kept (ties: the more recent), returned in time order (:func:`eventrec.data.sampling.value_based`).
    An event's **value** is derived from its own raw row at build time (and from the record when
    serving appends it; :func:`eventrec.store.sampling_values.sampling_values`)::

        value = event_type_values[type] × (1 + max(0, transform(x)))

    * ``event_type_values``: per event type of the stream (its ``event_types``), a positive value;
      the stream's types left out get **1.0** (so ``{purchase: 3.0}`` means "a purchase is worth three
      of anything else"). A type the stream does not read is an error.
    * ``attribute`` (optional): a numeric attribute of the stream (e.g. ``dwell_seconds``, ``price``);
      its raw value ``x`` **multiplies** the type's value by ``1 + max(0, transform(x))``, with the
      attribute's own ``transform`` (``log1p`` gives diminishing returns; ``none`` is linear). A
      missing (null, NaN) or non-positive ``x`` multiplies by 1: no evidence, no bonus.
    * ``recency_half_life``: seconds, or a number with unit ``s``, ``m``, ``h``, ``d`` (``"7d"``):
      an event loses half its score per half-life of age (positive).

    With every value equal the policy keeps exactly what ``most_recent`` keeps.
    """

    policy: Literal["value"]
    event_type_values: dict[str, float] = Field(default_factory=dict)
    attribute: Name | None = None
    recency_half_life: int | str

    @field_validator("event_type_values")
    @classmethod
    def _positive_values(cls, values: dict[str, float]) -> dict[str, float]:
        for event_type, value in values.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"event type {event_type!r}: the value must be a positive, finite number, got {value!r}")
        return values

    @field_validator("recency_half_life")
    @classmethod
    def _positive_half_life(cls, value: int | str) -> int | str:
        try:
            window_seconds(value)
        except ValueError:
            raise ValueError("must be a positive number of seconds or a positive number with unit s, m, h or d (e.g. '7d')") from None
        return value

    @property
    def half_life_seconds(self) -> int:
        return window_seconds(self.recency_half_life)

    def type_value(self, event_type: str | None) -> float:
        """The declared value of an event type (1.0 when not listed)."""
        return float(self.event_type_values.get(event_type, 1.0)) if event_type is not None else 1.0


# a stream's ``sampling``: a registered policy name, or a mapping whose ``policy`` picks its parameters'
# model. The tags' ``x[y]`` form is dropped from error locations by _format_error, so that errors read
# ``streams.0.sampling.recency_half_life`` like the YAML path.
_SAMPLING_FORMS = {"value": ValueSampling}
Sampling = Annotated[
    Union[Annotated[str, Tag("name[str]")], Annotated[ValueSampling, Tag("policy[value]")]],
    Discriminator(lambda v: "name[str]" if isinstance(v, str) or not isinstance(v, (dict, ValueSampling)) else "policy[value]"),
]


class Stream(_Strict):
    """One event stream: the raw rows of the given event types (or a file of its own)."""

    name: Name
    event_types: list[str] | None = None
    source: EventsSource | None = None
    max_length: int = Field(..., ge=1, le=1_000_000)
    sampling: Sampling = "most_recent"
    attributes: list[Attribute] = Field(default_factory=list)
    dlrm_ids: list[Name] | None = None

    def attribute(self, name: str) -> Attribute:
        """The stream's attribute called ``name`` (a ``KeyError`` naming the stream otherwise)."""
        return attribute_named(self.attributes, name, f"streams.{self.name}")

    @field_validator("sampling")
    @classmethod
    def _known_policy(cls, value: str | ValueSampling) -> str | ValueSampling:
        if isinstance(value, str) and value in _SAMPLING_FORMS:
            raise ValueError(f"sampling policy {value!r} takes parameters; write it as a mapping, "
                             "e.g. {policy: value, event_type_values: {purchase: 3.0}, recency_half_life: 7d}")
        if isinstance(value, str) and value not in SAMPLING_POLICIES:
            raise ValueError(f"unknown sampling policy {value!r}; expected one of {sorted(SAMPLING_POLICIES)}")
        return value

    @model_validator(mode="after")
    def _checks(self) -> "Stream":
        names = [a.name for a in self.attributes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"attribute names must be unique within a stream; repeated: {duplicates}")
        if "timestamp" in names:
            raise ValueError("'timestamp' is implicit in every stream; do not declare it as an attribute")
        for attribute in self.attributes:
            if isinstance(attribute, EmbeddingAttribute) and attribute.key is not None:
                key = next((a for a in self.attributes if a.name == attribute.key), None)
                if key is None or key.kind not in ("categorical", "hashed"):
                    raise ValueError(
                        f"attribute {attribute.name!r}: key {attribute.key!r} must be a categorical or hashed attribute of this stream"
                    )
        if self.dlrm_ids is not None:
            kinds = {a.name: a.kind for a in self.attributes}
            for name in self.dlrm_ids:
                if kinds.get(name) not in ID_KINDS:
                    raise ValueError(f"dlrm_ids: {name!r} must name a categorical, hashed or multi_categorical attribute of this stream")
        if isinstance(self.sampling, ValueSampling):
            self._check_value_sampling(self.sampling)
        return self

    def _check_value_sampling(self, sampling: ValueSampling) -> None:
        if sampling.attribute is not None:
            numeric = [a.name for a in self.attributes if a.kind == "numeric"]
            if sampling.attribute not in numeric:
                raise ValueError(f"sampling.attribute: {sampling.attribute!r} must name a numeric attribute of this stream; "
                                 f"its numeric attributes: {numeric}")
        if sampling.event_type_values and not self.event_types:
            raise ValueError("sampling.event_type_values: this stream has no event_types (every row of its source is one "
                             "event kind); drop event_type_values or list the stream's event_types")
        unknown = sorted(set(sampling.event_type_values) - set(self.event_types or []))
        if unknown:
            raise ValueError(f"sampling.event_type_values: unknown event type(s) {unknown}; this stream reads event_types {self.event_types}")

    @property
    def id_attribute(self) -> str | None:
        """The stream's primary id: the first categorical, hashed or multi-categorical attribute."""
        return next((a.name for a in self.attributes if a.kind in ID_KINDS), None)

    @property
    def aggregated_ids(self) -> list[str]:
        """The attributes whose distinct values and counts the DLRM aggregates use (default: all ids)."""
        if self.dlrm_ids is not None:
            return list(self.dlrm_ids)
        return [a.name for a in self.attributes if a.kind in ID_KINDS]


class Impressions(_Strict):
    """The impressions to rank: one row per (user, item, timestamp) with labels (nullable).

    ``derived_labels`` are labels computed from later events (:class:`DerivedLabel`); they follow
    ``labels`` in :attr:`all_labels` and behave like any label downstream.
    """

    path: str
    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: str = "timestamp"
    timestamp_unit: Literal["s", "ms", "us"] = "s"
    labels: list[Name] = Field(default_factory=list)
    item_attributes: list[Attribute] = Field(..., min_length=1)
    context_attributes: list[Attribute] = Field(default_factory=list)
    request_column: str | None = None
    extra_columns: list[str] = Field(default_factory=list)
    derived_labels: list[DerivedLabel] = Field(default_factory=list)

    def item_attribute(self, name: str) -> Attribute:
        """The item attribute called ``name`` (a ``KeyError`` otherwise)."""
        return attribute_named(self.item_attributes, name, "impressions.item_attributes")

    @model_serializer(mode="wrap")
    def _without_empty_derived(self, handler: Any) -> dict:
        # a schema without derived labels dumps (and fingerprints) exactly as before they existed
        data = handler(self)
        if not self.derived_labels:
            data.pop("derived_labels", None)
        return data

    @model_validator(mode="after")
    def _some_label(self) -> "Impressions":
        if not self.labels and not self.derived_labels:
            raise ValueError("labels: at least one label column, or a derived label (derived_labels)")
        return self

    @property
    def all_labels(self) -> list[str]:
        """The label names in store order: ``labels``, then ``derived_labels``."""
        return list(self.labels) + [d.name for d in self.derived_labels]

    @model_validator(mode="after")
    def _unique(self) -> "Impressions":
        names = [a.name for a in self.item_attributes + self.context_attributes] + self.all_labels
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"item/context attribute and label names must be unique; repeated: {duplicates}")
        return self


class ContentTable(_Strict):
    """A side table of fixed-size vectors keyed by an id (e.g. an ad's content embedding).

    ``precision``: how the store keeps the table's vectors: ``float32`` (default), ``float16``, or
    ``int8`` / ``int4`` with a per-row scale (``eventrec/store/vector_precision.py``); batches read float32."""

    name: Name
    path: str
    key_column: str
    vector_column: str
    dim: int = Field(..., ge=1, le=4096)
    precision: VectorPrecision = "float32"

    @model_serializer(mode="wrap")
    def _without_default_precision(self, handler: Any) -> dict:
        return without_default_precision(handler(self))


Boundary = Union[int, dt.date, dt.datetime]


class Splits(_Strict):
    """Time-based splits over impressions: train < train_end <= validation < validation_end <= test.

    Give both boundaries as timestamps (ints in the events' unit, or ISO dates/datetimes in UTC), or
    as fractions of the impressions' time-ordered rows (``train_fraction``, ``validation_fraction``),
    resolved to timestamps at build time and recorded in the store's manifest.
    """

    train_end: Boundary | None = None
    validation_end: Boundary | None = None
    train_fraction: float | None = Field(None, gt=0, lt=1)
    validation_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_way(self) -> "Splits":
        by_time = self.train_end is not None or self.validation_end is not None
        by_fraction = self.train_fraction is not None or self.validation_fraction is not None
        if by_time == by_fraction:
            raise ValueError("give either train_end and validation_end, or train_fraction and validation_fraction")
        if by_time and (self.train_end is None or self.validation_end is None):
            raise ValueError("both train_end and validation_end are required")
        if by_fraction:
            if self.train_fraction is None or self.validation_fraction is None:
                raise ValueError("both train_fraction and validation_fraction are required")
            if self.train_fraction + self.validation_fraction >= 1:
                raise ValueError("train_fraction + validation_fraction must leave a test split (< 1)")
        return self


def boundary_to_seconds(value: Boundary) -> int:
    """An ISO date/datetime (UTC) or an int to integer seconds since the epoch."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp())
    return int(value)


class Schema(_Strict):
    """A whole dataset: raw events split into streams, the impressions, content tables, splits."""

    name: Name
    events: EventsSource | None = None
    streams: list[Stream] = Field(..., min_length=1)
    impressions: Impressions
    content_tables: list[ContentTable] = Field(default_factory=list)
    splits: Splits
    equal_timestamp_rule: Literal["exclude"] = "exclude"

    @model_validator(mode="after")
    def _cross_checks(self) -> "Schema":
        names = [s.name for s in self.streams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stream names must be unique; repeated: {duplicates}")
        for stream in self.streams:
            if stream.source is None and self.events is None:
                raise ValueError(f"stream {stream.name!r} has no 'source' and the schema has no 'events' section")
            if stream.source is None and self.events is not None and self.events.type_column and not stream.event_types:
                raise ValueError(f"stream {stream.name!r} reads the shared events file and needs 'event_types'")
            source = stream.source or self.events
            if isinstance(stream.sampling, ValueSampling) and stream.sampling.event_type_values and (source is None or not source.type_column):
                raise ValueError(f"streams.{stream.name}.sampling.event_type_values: the stream's events have no type column "
                                 "('type_column' of its 'source' or of 'events'); an event's type cannot be read")
        for derived in self.impressions.derived_labels:
            source = derived.source or self.events
            if source is None or not source.type_column:
                raise ValueError(
                    f"impressions.derived_labels.{derived.name}: needs events with a type column "
                    "(its own 'source' or the schema's 'events' section, with 'type_column')"
                )
        tables = {t.name for t in self.content_tables}
        kinds: dict[str, tuple[str, str]] = {}
        for owner, attribute in self.all_attributes():
            if isinstance(attribute, EmbeddingAttribute) and attribute.table is not None and attribute.table not in tables:
                raise ValueError(f"{owner}.{attribute.name}: unknown content table {attribute.table!r}; declared: {sorted(tables)}")
            if attribute.kind in ID_KINDS:
                vocab = attribute.vocabulary_name  # type: ignore[union-attr]
                family = "hashed" if attribute.kind == "hashed" else "vocabulary"
                if vocab in kinds and kinds[vocab][0] != family:
                    raise ValueError(
                        f"{owner}.{attribute.name}: vocabulary {vocab!r} is hashed in {kinds[vocab][1]} but not here; "
                        "attributes that share a vocabulary must share its kind"
                    )
                kinds.setdefault(vocab, (family, f"{owner}.{attribute.name}"))
        return self

    def all_attributes(self) -> list[tuple[str, Any]]:
        """Every attribute with the place that declares it (``streams.NAME``, ``impressions``)."""
        out: list[tuple[str, Any]] = []
        for stream in self.streams:
            out += [(f"streams.{stream.name}", a) for a in stream.attributes]
        out += [("impressions", a) for a in self.impressions.item_attributes + self.impressions.context_attributes]
        return out

    def stream(self, name: str) -> Stream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"no stream named {name!r}; streams: {[s.name for s in self.streams]}")

    def hash_buckets(self, vocabulary: str) -> int | None:
        """Bucket count of a hashed vocabulary (the largest declared), or None if not hashed."""
        counts = [a.buckets for _, a in self.all_attributes() if a.kind == "hashed" and a.vocabulary_name == vocabulary]
        return max(counts) if counts else None


def _format_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid schema ({error.error_count()} problem(s))"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"] if not re.fullmatch(r"[a-z_]+\[.*\]|function-after.*", str(part)))
        given = item.get("input")
        shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
        lines.append(f"  {path.name}: {location or '<root>'}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_schema(data: Any, path: Path | str = "<schema>") -> Schema:
    """Validate an already-parsed mapping; errors name ``path`` and the field."""
    path = Path(path)
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Schema.model_validate(data)
    except ValidationError as error:
        raise SchemaError(_format_error(path, error)) from None


def load_schema(path: Path | str) -> Schema:
    """Read and validate a YAML schema file."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: schema file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SchemaError(f"{path}: not valid YAML: {error}") from None
    return parse_schema(data, path)


def builtin_schema_path(name: str) -> Path:
    """Path of a schema shipped with eventrec (``synthetic``, ``trivago``, ``ml100k``, ``amazon_grocery``)."""
    path = Path(__file__).parents[1] / "schemas" / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SchemaError(f"no built-in schema {name!r}; available: {available}")
    return path
