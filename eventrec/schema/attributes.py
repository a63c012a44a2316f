"""Where raw events live, and the kinds of attribute an event or an impression carries: categorical,
hashed, multi-valued, numeric, content embedding (typed, validated; errors name the field)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
# how the store keeps a vector (an ``embedding`` attribute's per-event column, a content table): float32,
# float16, or int8 / int4 with a per-row scale (eventrec/store/vector_precision.py); batches get float32
VectorPrecision = Literal["float32", "float16", "int8", "int4"]


class SchemaError(ValueError):
    """A schema file that does not say what eventrec needs; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RawColumn:
    """An attribute read from the raw column ``column`` (default: its own name)."""

    @property
    def source_column(self) -> str:
        return self.column or self.name  # type: ignore[attr-defined]


class _VocabularyColumn(_RawColumn):
    """An id attribute encoded with the vocabulary ``vocabulary`` (default: its own name), which
    every attribute of the same vocabulary name shares."""

    @property
    def vocabulary_name(self) -> str:
        return self.vocabulary or self.name  # type: ignore[attr-defined]


class CategoricalAttribute(_VocabularyColumn, _Strict):
    """Ids mapped through a vocabulary built from the training period only.

    Encoded ids: 0 = missing (null), 1 = out of vocabulary, 2.. = known values by descending
    training count (ties broken by value). ``vocabulary`` names a table shared by every attribute
    that uses the same name (e.g. the ad id in several streams and in the impressions).
    """

    kind: Literal["categorical"]
    name: Name
    column: str | None = None
    vocabulary: Name | None = None
    min_count: int = Field(1, ge=1)
    max_size: int | None = Field(None, ge=1)


class HashedAttribute(_VocabularyColumn, _Strict):
    """Ids of huge cardinality hashed into ``buckets`` (ids 1..buckets; 0 = missing).

    Hashing keeps the identity of ids first seen after training (new ads), unlike a vocabulary.
    """

    kind: Literal["hashed"]
    name: Name
    column: str | None = None
    buckets: int = Field(..., ge=2, le=2**31 - 2)
    vocabulary: Name | None = None


class MultiCategoricalAttribute(_VocabularyColumn, _Strict):
    """A list of categorical values per event (e.g. a movie's genres); vocabulary as categorical."""

    kind: Literal["multi_categorical"]
    name: Name
    column: str | None = None
    vocabulary: Name | None = None
    min_count: int = Field(1, ge=1)
    max_size: int | None = Field(None, ge=1)


class NumericAttribute(_RawColumn, _Strict):
    """A number, optionally log1p-transformed, standardised with training-period mean and std.

    Nulls and NaNs become 0.0 after standardisation (the training mean) and are counted.
    """

    kind: Literal["numeric"]
    name: Name
    column: str | None = None
    transform: Literal["none", "log1p"] = "none"


def without_default_precision(data: dict) -> dict:
    """A dumped attribute or content table without ``precision: float32`` (the default): a schema that
    does not use precisions dumps (and fingerprints) exactly as before they existed."""
    if data.get("precision") == "float32":
        data.pop("precision")
    return data


class EmbeddingAttribute(_RawColumn, _Strict):
    """A fixed-size content vector per event.

    Either read from a list column of the raw rows (``column``), or looked up from a side table
    (``table``, one of the schema's ``content_tables``) by the value of a categorical attribute of
    the same stream (``key``). ``precision`` (column vectors only): how the store keeps them,
    ``float32`` (default), ``float16`` or ``int8`` (a per-row scale); a table's vectors have the
    table's ``precision``.
    """

    kind: Literal["embedding"]
    name: Name
    dim: int = Field(..., ge=1, le=4096)
    column: str | None = None
    table: Name | None = None
    key: Name | None = None
    precision: VectorPrecision = "float32"

    @model_serializer(mode="wrap")
    def _without_default_precision(self, handler: Any) -> dict:
        return without_default_precision(handler(self))

    @model_validator(mode="after")
    def _one_source(self) -> "EmbeddingAttribute":
        if self.table is not None and self.key is None:
            raise ValueError("an embedding looked up from a table needs 'key' (a categorical attribute)")
        if self.table is None and self.key is not None:
            raise ValueError("'key' is only meaningful with 'table'")
        if self.table is not None and self.column is not None:
            raise ValueError("give either 'column' or 'table', not both")
        if self.table is not None and self.precision != "float32":
            raise ValueError(f"precision: a vector looked up from table {self.table!r} is kept at the table's precision; "
                             f"set content_tables.{self.table}.precision instead")
        return self


Attribute = Annotated[
    Union[CategoricalAttribute, HashedAttribute, MultiCategoricalAttribute, NumericAttribute, EmbeddingAttribute],
    Field(discriminator="kind"),
]


def attribute_named(attributes: "list[Attribute]", name: str, where: str = "attributes") -> "Attribute":
    """The attribute called ``name`` among ``attributes``; a ``KeyError`` naming ``where`` and the names otherwise."""
    for attribute in attributes:
        if attribute.name == name:
            return attribute
    raise KeyError(f"{where}: no attribute named {name!r}; its attributes: {[a.name for a in attributes]}")


VOCABULARY_KINDS = ("categorical", "multi_categorical")
ID_KINDS = ("categorical", "hashed", "multi_categorical")


class EventsSource(_Strict):
    """Where raw events live: a Parquet or CSV file (or glob) relative to the data directory."""

    path: str
    user_column: str = "user_id"
    timestamp_column: str = "timestamp"
    type_column: str | None = "event_type"
    timestamp_unit: Literal["s", "ms", "us"] = "s"
