"""The store's small files, written last by every engine: the content tables' matrices,
``vocabularies.json``, ``statistics.json`` and the manifest (returned; the caller writes it last)."""

from __future__ import annotations

from pathlib import Path

from eventrec.schema import Schema
from eventrec.store.columns import stream_layout
from eventrec.store.content_tables import write_content_tables
from eventrec.store.encoding import AttributeEncoder, BuildReport
from eventrec.store.layout import FORMAT_VERSION, schema_fingerprint, write_json


def finish_store(schema: Schema, data_dir: Path, encoder: AttributeEncoder, report: BuildReport, splits: tuple[int, int], out_dir: Path) -> dict:
    """Write the content tables, ``vocabularies.json`` and ``statistics.json`` into ``out_dir``;
    return the manifest (``report`` complete but for the content tables' counts, added here)."""
    content_files = write_content_tables(schema, data_dir, encoder.vocabularies, report, out_dir)
    write_json({name: v.to_json() for name, v in sorted(encoder.vocabularies.items())}, out_dir / "vocabularies.json")
    write_json({name: s.to_json() for name, s in sorted(encoder.statistics.items())}, out_dir / "statistics.json")
    return {
        "format_version": FORMAT_VERSION,
        "schema": schema.model_dump(mode="json"),
        "schema_fingerprint": schema_fingerprint(schema),
        "splits": {"train_end": splits[0], "validation_end": splits[1]},
        "equal_timestamp_rule": "events at the impression's timestamp or later are excluded",
        "streams": {stream.name: stream_layout(stream) for stream in schema.streams},
        "content_files": content_files,
        "counts": dict(sorted(report.counts.items())),
        "drops": dict(sorted(report.drops.items())),
        "nulls_encoded_as_missing": dict(sorted(report.nulls.items())),
    }
