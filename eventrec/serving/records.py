"""Raw records in, model inputs out: candidates, contexts and appended events, validated and encoded
with the store's vocabularies (errors name the offending field)."""

from __future__ import annotations


import numpy as np
import polars as pl

from eventrec.data.gather import attribute_tensors
from eventrec.schema import EmbeddingAttribute
from eventrec.serving.errors import InvalidInput, OutOfOrderEvents
from eventrec.serving.state import UserEvents
from eventrec.store.encoding import AttributeEncoder
from eventrec.serving.values import check_column, check_value, column_valid, timestamp_seconds
from eventrec.store.raw_logs import DataError
from eventrec.store.reader import EventStore, Ragged
from eventrec.store.sampling_values import needs_event_type, sampling_values, value_sampling


class Records:
    """The store's schema and fitted attribute encoders, applied to one request's records."""

    def __init__(self, store: EventStore):
        self.store, self.schema = store, store.schema
        self.encoder = AttributeEncoder.fitted(self.schema, store.manifest["splits"]["train_end"], store.vocabularies, store.statistics)
        self.stream_index = {name: i for i, name in enumerate(store.streams)}
        imp = self.schema.impressions
        self.item_columns = [a.source_column for a in imp.item_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
        self.context_columns = [a.source_column for a in imp.context_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
        self.item_attributes = [a for a in imp.item_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
        self.context_attributes = [a for a in imp.context_attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]

    @staticmethod
    def check_record(attributes: list, record: dict, place: str) -> None:
        """Every attribute of ``record`` present and of a valid raw value (:mod:`eventrec.serving.values`);
        :class:`InvalidInput` naming ``{place}.{column}`` otherwise."""
        for a in attributes:
            if a.source_column not in record:
                raise InvalidInput(f"{place}: missing attribute {a.source_column!r}", f"{place}.{a.source_column}")
            check_value(a, record[a.source_column], f"{place}.{a.source_column}")

    def event_streams(self, events: list[dict]) -> dict[str, list[int]]:
        """Per stream the indices of the events it reads (by ``stream`` or the event type column)."""
        source = self.schema.events
        per_stream: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            name = event.get("stream")
            if name is not None and not isinstance(name, str):
                raise InvalidInput(f"event {i}: stream must be a string, got {type(name).__name__}", f"events[{i}].stream")
            if name is None:
                kind = event.get(source.type_column) if source and source.type_column else None
                name = next((s.name for s in self.schema.streams if s.event_types and kind is not None and str(kind) in s.event_types), None)
                if name is None:
                    raise InvalidInput(f"event {i}: no stream reads event type {kind!r}", f"events[{i}].{source.type_column if source else 'stream'}")
            elif name not in self.stream_index:
                raise InvalidInput(f"event {i}: unknown stream {name!r}", f"events[{i}].stream")
            per_stream.setdefault(name, []).append(i)
        return per_stream

    def appended(self, current: UserEvents, per_stream: dict[str, list[int]], events: list[dict], source, latest_seconds: int | None = None) -> UserEvents:
        """``current`` with the validated, encoded ``events`` appended (new objects; raises on bad input).
        Timestamps are range-checked like the build's and must not be later than ``latest_seconds``."""
        last = current.last_timestamp()
        updated = current
        for name, rows in per_stream.items():
            stream = next(s for s in self.schema.streams if s.name == name)
            src = stream.source or source
            ts_column = src.timestamp_column
            attributes = [a for a in stream.attributes if not (isinstance(a, EmbeddingAttribute) and a.table)]
            seconds = []
            for i in rows:
                if ts_column not in events[i]:
                    raise InvalidInput(f"event {i}: missing timestamp {ts_column!r}", f"events[{i}].{ts_column}")
                seconds.append(timestamp_seconds(events[i][ts_column], src.timestamp_unit, f"events[{i}].{ts_column}", latest_seconds))
                self.check_record(attributes, events[i], f"events[{i}]")
            types = self.event_types(stream, src, events, rows)
            try:
                frame = pl.DataFrame([{a.source_column: events[i][a.source_column] for a in attributes} for i in rows], infer_schema_length=None)
                times = np.array(seconds, dtype=np.int64)
                order = np.argsort(times, kind="stable")
                frame, times = frame[order.tolist()], times[order]
                encoded = self.encode(f"streams.{name}", stream.attributes, frame)
                values = self.sampling_values(stream, frame, None if types is None else [types[j] for j in order])
            except (DataError, pl.exceptions.PolarsError, TypeError, ValueError) as error:
                raise InvalidInput(f"events of stream {name!r}: {error}", "events") from error
            if last is not None and int(times[0]) < last:
                raise OutOfOrderEvents(f"event at {int(times[0])} is older than the user's last event ({last}); "
                                       "events must arrive in time order (equal times are accepted)", "events")
            updated = updated.appended(name, times, encoded, values)
        return updated

    @staticmethod
    def event_types(stream, source, events: list[dict], rows: list[int]) -> list[str] | None:
        """The raw types of a stream's events when its value policy values types (else None):
        each event must carry the type column, with a type the stream reads (InvalidInput otherwise)."""
        if not needs_event_type(stream):
            return None
        column = source.type_column
        types = []
        for i in rows:
            if events[i].get(column) is None:
                raise InvalidInput(f"event {i}: missing event type {column!r} (stream {stream.name!r} samples by value per event type)",
                                   f"events[{i}].{column}")
            kind = str(events[i][column])
            if kind not in (stream.event_types or []):
                raise InvalidInput(f"event {i}: stream {stream.name!r} does not read event type {kind!r} (its event_types: {stream.event_types})",
                                   f"events[{i}].{column}")
            types.append(kind)
        return types

    @staticmethod
    def sampling_values(stream, frame: pl.DataFrame, types: list[str] | None) -> np.ndarray | None:
        """``[n]`` float32 values of the stream's appended events (the build's own function), or None
        when the stream does not sample by value."""
        sampling = value_sampling(stream)
        if sampling is None:
            return None
        numbers = frame[stream.attribute(sampling.attribute).source_column] if sampling.attribute else None
        return sampling_values(stream, frame.height, None if types is None else pl.Series(types, dtype=pl.String), numbers)

    def encode(self, place: str, attributes: list, frame: pl.DataFrame) -> dict[str, np.ndarray | Ragged]:
        """Raw records encoded with the store's vocabularies and statistics (the build's own encoder)."""
        return self.encoder.encode_records(place, attributes, frame, "<request>")

    def group(self, attributes: list, frame: pl.DataFrame) -> dict:
        columns = self.encode("impressions", attributes, frame)
        lookups = {k: v for k, v in self.store.item_looked_up.items() if v[0] in columns}
        return attribute_tensors(columns, lookups, np.arange(frame.height))

    def candidate_frame(self, candidates: list[dict] | dict[str, list] | pl.DataFrame) -> pl.DataFrame:
        """The candidates' item columns as a frame, from records, columns (``{column: [values]}``, one
        list per item column, all of one length: cheaper to send and to parse than records) or a frame."""
        if isinstance(candidates, dict):
            missing = [c for c in self.item_columns if c not in candidates]
            if missing:
                raise InvalidInput(f"candidates: missing column(s) {missing}", f"candidates.{missing[0]}")
            lengths = {c: len(candidates[c]) if isinstance(candidates[c], list) else None for c in self.item_columns}
            for column, length in lengths.items():
                if length is None or length != lengths[self.item_columns[0]]:
                    raise InvalidInput(f"candidates.{column}: every column must be a list of the same length "
                                       f"({self.item_columns[0]}: {lengths[self.item_columns[0]]}, {column}: {length})", f"candidates.{column}")
            for a in self.item_attributes:
                check_column(a, candidates[a.source_column], f"candidates.{a.source_column}")
            return self._frame({c: candidates[c] for c in self.item_columns})
        if isinstance(candidates, pl.DataFrame):
            missing = [c for c in self.item_columns if c not in candidates.columns]
            if missing:
                raise InvalidInput(f"candidates: missing column(s) {missing}", f"candidates.{missing[0]}")
            return candidates.select(self.item_columns)
        try:  # records as columns, checked a column at a time where every value is plainly valid
            columns = {c: [record[c] for record in candidates] for c in self.item_columns}
            valid = all(column_valid(a, columns[a.source_column]) for a in self.item_attributes)
        except (KeyError, TypeError):
            valid = False
        if not valid:  # value by value: the first bad record's error
            for i, record in enumerate(candidates):
                self.check_record(self.item_attributes, record, f"candidates[{i}]")
            columns = {c: [record[c] for record in candidates] for c in self.item_columns}
        return self._frame(columns)

    @staticmethod
    def _frame(columns: dict[str, list]) -> pl.DataFrame:
        """Checked columns as a frame; a column of mixed types takes their supertype (ints and floats:
        Float64; ids given as integers and strings: String), whether they came as records or columns."""
        try:
            return pl.DataFrame(columns, strict=False)
        except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
            raise InvalidInput(f"candidates: {error}", "candidates") from error

