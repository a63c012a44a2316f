"""Reading a built event store into flat arrays (see :mod:`eventrec.store.build` for the layout).

Each stream becomes flat numpy arrays over all users' events, sorted by (user row, time), with
``user_offsets [U+1]`` giving each user's segment: ``timestamps [E]``, per attribute ``[E]`` (ids
or normalised numbers) or ``[E, dim]`` (vectors: float32, or at the schema's lower ``precision`` a
:class:`~eventrec.store.vector_precision.StoredVectors` whose indexing dequantizes to float32, so that
batches are made alike), and multi-valued attributes as ``values [T]`` plus ``event_offsets [E+1]``. The examples are columns over impressions ``[I]``. Histories are stored once
per user; an example refers to its user row and a cut per stream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eventrec.store.point_in_time import SegmentedTimeIndex
from eventrec.schema import EmbeddingAttribute, Schema, SchemaError, parse_schema
from eventrec.schema.attributes import attribute_named
from eventrec.store.layout import FORMAT_VERSION, SPLIT_NAMES, Ragged, recover_interrupted_swap, schema_fingerprint
from eventrec.store.content_tables import read_content_table
from eventrec.store.sampling_values import value_column, value_sampling
from eventrec.store.vector_precision import StoredVectors, from_stored
from eventrec.store.vocab import Vocabulary


class StoreError(ValueError):
    """A store directory that is missing, incomplete or of another format version."""


def _list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list column → (``offsets [rows+1]`` int64 from 0, the flat child array)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    child = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return offsets - offsets[0], child


def _rows(child: pa.Array, field: str) -> np.ndarray:
    """A column of equal-length lists (fixed-size, or plain lists as Parquet gives them back) →
    ``[rows, width]`` in its own dtype (float32, float16, int8)."""
    if isinstance(child, pa.ChunkedArray):
        child = child.combine_chunks()
    if isinstance(child.type, pa.FixedSizeListType):
        width, flat = child.type.list_size, child.flatten()
    else:
        offsets, flat = _list_parts(child)
        lengths = np.diff(offsets)
        width = int(lengths[0]) if len(lengths) else 0
        if (lengths != width).any():
            raise StoreError(f"{field}: vectors of different lengths in the store")
    return np.asarray(flat.to_numpy(zero_copy_only=False)).reshape(-1, width) if width else np.zeros((len(child), 0), np.float32)


def _vectors(child: pa.Array, attribute: EmbeddingAttribute, field: str) -> np.ndarray | StoredVectors:
    """A stored vector column at its schema ``precision`` (:mod:`eventrec.store.vector_precision`),
    checked: a dtype or width not the schema's raises :class:`StoreError` naming ``field``."""
    try:
        return from_stored(_rows(child, field), attribute.precision, attribute.dim, f"{field}.precision")
    except ValueError as error:
        raise StoreError(str(error)) from None


def _numpy(child: pa.Array) -> np.ndarray:
    if isinstance(child.type, pa.FixedSizeListType):
        dim = child.type.list_size
        flat = child.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return child.to_numpy(zero_copy_only=False)


@dataclass
class StreamData:
    """One stream's events over all users, flat and sorted by (user row, time)."""

    name: str
    max_length: int
    sampling: Any  # the schema's declaration: a policy name, or a mapping form (ValueSampling)
    user_offsets: np.ndarray
    timestamps: np.ndarray
    attributes: dict[str, np.ndarray | StoredVectors | Ragged] = field(default_factory=dict)
    # table-looked-up embeddings: attribute name → (key attribute name, content matrix [V, dim]: an array or StoredVectors)
    looked_up: dict[str, tuple[str, np.ndarray | StoredVectors]] = field(default_factory=dict)
    # [E] float32 per-event values of a value policy (store/sampling_values.py); None for other policies
    sampling_values: np.ndarray | None = None

    @cached_property
    def time_index(self) -> SegmentedTimeIndex:
        return SegmentedTimeIndex(self.user_offsets, self.timestamps)

    @property
    def num_events(self) -> int:
        return len(self.timestamps)


class EventStore:
    """A built store, loaded into memory as flat arrays. ``EventStore.open(path)``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        recover_interrupted_swap(self.path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            raise StoreError(f"{self.path}: not an event store (no manifest.json); build one with `eventrec build`")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {self.manifest.get('format_version')}, this eventrec reads {FORMAT_VERSION}; rebuild it")
        try:
            self.schema: Schema = parse_schema(self.manifest["schema"], manifest_path)
        except SchemaError as error:
            raise StoreError(f"{self.path}: its embedded schema is not one this eventrec reads (built by another version?); rebuild it with `eventrec build`.\n{error}") from None
        vocabularies_text, statistics_text = (self.path / "vocabularies.json").read_text(), (self.path / "statistics.json").read_text()
        self.vocabularies = {name: Vocabulary.from_json(name, data) for name, data in json.loads(vocabularies_text).items()}
        self.statistics = json.loads(statistics_text)
        self._encoding_fingerprint = hashlib.sha256(
            "\0".join([self._precision_free_fingerprint(), vocabularies_text, statistics_text]).encode()).hexdigest()[:16]
        tables = {t.name: t for t in self.schema.content_tables}
        try:  # [ids, dim] float32, or StoredVectors at the table's precision
            self.content = {key: read_content_table(self.path / name, tables[key.split("/")[0]], key)
                            for key, name in self.manifest["content_files"].items()}
        except ValueError as error:
            raise StoreError(f"{self.path}: {error}") from None
        self._load_users()
        self._load_examples()

    def _precision_free_fingerprint(self) -> str:
        """The schema fingerprint the encoding fingerprint reads: the manifest's, or for a schema with
        vector precisions (``precision`` other than float32) that of the same schema at float32. Storage
        precision changes no id nor statistic: a model trained on the float32 store of some logs reads
        their float16 / int8 store (vectors within the precision's rounding)."""
        schema = json.loads(json.dumps(self.manifest["schema"]))  # a copy to edit
        imp = schema["impressions"]
        declarations = [a for s in schema["streams"] for a in s.get("attributes", [])] + imp["item_attributes"] + \
            imp.get("context_attributes", []) + schema.get("content_tables", [])
        if not any("precision" in d for d in declarations):
            return str(self.manifest.get("schema_fingerprint"))
        for declaration in declarations:
            declaration.pop("precision", None)
        return schema_fingerprint(parse_schema(schema, "<manifest>"))

    @classmethod
    def open(cls, path: Path | str) -> "EventStore":
        return cls(Path(path))

    # -- loading --------------------------------------------------------------------------------
    def _load_users(self) -> None:
        table = pq.read_table(self.path / "users.parquet")
        self.user_ids = table.column("user_id").to_numpy(zero_copy_only=False)
        self.streams: dict[str, StreamData] = {}
        for stream in self.schema.streams:
            user_offsets, times = _list_parts(table.column(f"{stream.name}__timestamp"))
            data = StreamData(stream.name, stream.max_length, stream.sampling, user_offsets, _numpy(times).astype(np.int64))
            if value_sampling(stream) is not None:
                _, values = _list_parts(table.column(value_column(stream.name)))
                data.sampling_values = _numpy(values).astype(np.float32)
            for attribute in stream.attributes:
                if isinstance(attribute, EmbeddingAttribute) and attribute.table is not None:
                    key = stream.attribute(attribute.key)
                    data.looked_up[attribute.name] = (attribute.key, self.content[f"{attribute.table}/{key.vocabulary_name}"])
                    continue
                _, child = _list_parts(table.column(f"{stream.name}__{attribute.name}"))
                if attribute.kind == "multi_categorical":
                    inner_offsets, inner = _list_parts(child)
                    data.attributes[attribute.name] = Ragged(_numpy(inner).astype(np.int64), inner_offsets)
                elif isinstance(attribute, EmbeddingAttribute):
                    data.attributes[attribute.name] = _vectors(child, attribute, f"{self.path}: streams.{stream.name}.{attribute.name}")
                else:
                    data.attributes[attribute.name] = _numpy(child)
            self.streams[stream.name] = data

    def _load_examples(self) -> None:
        table = pq.read_table(self.path / "examples.parquet")
        column = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
        self.user_rows = column("user_row").astype(np.int64)
        self.timestamps = column("timestamp").astype(np.int64)
        self.splits = column("split").astype(np.int8)
        self.request_ids = column("request_id") if "request_id" in table.column_names else None
        self.item_ids = column("item_id")
        self.cuts = {s.name: column(f"cut__{s.name}").astype(np.int64) for s in self.schema.streams}
        imp = self.schema.impressions
        self.item: dict[str, np.ndarray | Ragged] = {}
        self.context: dict[str, np.ndarray | Ragged] = {}
        self.item_looked_up: dict[str, tuple[str, np.ndarray | StoredVectors]] = {}
        for group, attributes, target in (("item", imp.item_attributes, self.item), ("context", imp.context_attributes, self.context)):
            for attribute in attributes:
                if isinstance(attribute, EmbeddingAttribute) and attribute.table is not None:
                    key = attribute_named(attributes, attribute.key, f"impressions.{group}")
                    self.item_looked_up[attribute.name] = (attribute.key, self.content[f"{attribute.table}/{key.vocabulary_name}"])
                    continue
                array = table.column(f"{group}__{attribute.name}").combine_chunks()
                if attribute.kind == "multi_categorical":
                    offsets, child = _list_parts(array)
                    target[attribute.name] = Ragged(_numpy(child).astype(np.int64), offsets)
                elif isinstance(attribute, EmbeddingAttribute):
                    target[attribute.name] = _vectors(array, attribute, f"{self.path}: impressions.{group}.{attribute.name}")
                else:
                    target[attribute.name] = _numpy(array)
        self.label_names = imp.all_labels
        self.labels = np.stack([column(f"label__{n}").astype(np.float32) for n in self.label_names], axis=1)
        self.extras = {c: column(f"extra__{c}").astype(np.float64) for c in imp.extra_columns}

    # -- queries ----------------------------------------------------------------------------------
    @property
    def encoding_fingerprint(self) -> str:
        """16 hex digits identifying how this store encodes raw values into ids and numbers: a hash of
        its schema fingerprint, ``vocabularies.json`` and ``statistics.json`` (as read at open). The
        same logs built with another split give another fingerprint (other vocabularies and
        statistics): a model trained on one store must not read the other's ids."""
        return self._encoding_fingerprint

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_examples(self) -> int:
        return len(self.user_rows)

    def split_indices(self, split: str) -> np.ndarray:
        """Example indices of a split (``train``, ``validation``, ``test``), in time order."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        return np.flatnonzero(self.splits == SPLIT_NAMES.index(split)).astype(np.int64)

    def history_bounds(self, stream: str, example_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global ``[start, end)`` of each example's full history (all events before the cut)."""
        data = self.streams[stream]
        rows = self.user_rows[example_indices]
        starts = data.user_offsets[rows]
        return starts, starts + self.cuts[stream][example_indices]

    def num_embeddings(self, vocabulary: str) -> int:
        return self.vocabularies[vocabulary].num_embeddings
