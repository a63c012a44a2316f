"""Content tables: side files of vectors (e.g. an item's text or image embedding) keyed by an id.

Each table is aligned once, at build time, with the encoded ids of every vocabulary whose attribute
looks it up (``EmbeddingAttribute(table=, key=)``): ``content__{table}__{vocabulary}.npy`` holds
``[num_embeddings, dim]`` float32, the mean of the table's vectors per encoded id (0 for ids with none,
for missing / out-of-vocabulary ids, and for non-finite vectors, which are counted as drops), kept at
the table's ``precision``: float16 ``[num_embeddings, dim]``, or int8 ``[num_embeddings, dim + 4]``
(codes then the row's scale; :mod:`eventrec.store.vector_precision`). :func:`read_content_table`
reads one back, checked against the schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from eventrec.schema import ContentTable, EmbeddingAttribute, Schema
from eventrec.schema.attributes import attribute_named
from eventrec.store.encoding import BuildReport
from eventrec.store.raw_logs import ROW, DataError, require_columns, scan_table
from eventrec.store.vector_precision import StoredVectors, from_stored, to_stored
from eventrec.store.vocab import Vocabulary


def write_content_tables(schema: Schema, data_dir: Path, vocabularies: dict[str, Vocabulary], report: BuildReport, out_dir: Path) -> dict[str, str]:
    """Write every content table's aligned matrices into ``out_dir``; returns ``{"table/vocabulary": file name}``."""
    imp = schema.impressions
    content_files: dict[str, str] = {}
    for table_spec in schema.content_tables:
        keys = sorted({(a.table, a.key, owner) for owner, a in schema.all_attributes() if isinstance(a, EmbeddingAttribute) and a.table == table_spec.name})
        vocab_names = set()
        for _, key, owner in keys:
            attrs = schema.stream(owner.split(".", 1)[1]).attributes if owner.startswith("streams.") else imp.item_attributes + imp.context_attributes
            vocab_names.add(attribute_named(attrs, key, owner).vocabulary_name)
        if not vocab_names:
            continue
        raw = scan_table(data_dir, table_spec.path)
        require_columns(raw, {table_spec.key_column: "id", table_spec.vector_column: "vector"})
        side = raw.collect(raw.frame.select(ROW, table_spec.key_column, table_spec.vector_column))
        lengths = side[table_spec.vector_column].list.len() if isinstance(side.schema[table_spec.vector_column], pl.List) else None
        if lengths is not None and (lengths != table_spec.dim).any():
            position = int(np.argmax((lengths != table_spec.dim).to_numpy()))
            raise DataError(f"{raw.path}: column {table_spec.vector_column!r}, row {position}: expected {table_spec.dim} floats")
        vectors = np.asarray(side[table_spec.vector_column].cast(pl.Array(pl.Float32, table_spec.dim)).to_numpy(), dtype=np.float64).reshape(-1, table_spec.dim)
        bad = ~np.isfinite(vectors).all(axis=1)
        report.drop(f"content_tables.{table_spec.name}.non_finite_vectors", int(bad.sum()))
        for vocab_name in sorted(vocab_names):
            vocabulary = vocabularies[vocab_name]
            ids = vocabulary.encode(side[table_spec.key_column]).to_numpy()
            keep = ~bad & (ids >= 2 if not vocabulary.hashed else ids >= 1)
            matrix = np.zeros((vocabulary.num_embeddings, table_spec.dim), dtype=np.float64)
            counts = np.bincount(ids[keep], minlength=vocabulary.num_embeddings)
            np.add.at(matrix, ids[keep], vectors[keep])
            matrix /= np.maximum(counts, 1)[:, None]
            report.counts[f"content_tables.{table_spec.name}.{vocab_name}.shared_slots"] = int((counts > 1).sum())
            name = f"content__{table_spec.name}__{vocab_name}.npy"
            np.save(out_dir / name, to_stored(matrix, table_spec.precision), allow_pickle=False)
            content_files[f"{table_spec.name}/{vocab_name}"] = name
    return content_files


def read_content_table(path: Path, table: ContentTable, key: str) -> np.ndarray | StoredVectors:
    """A written content matrix (``key``: its manifest key ``table/vocabulary``): float32 ``[ids, dim]``,
    or :class:`StoredVectors` at the table's lower precision. A file whose dtype or width is not the
    schema's ``content_tables.{name}.precision`` / ``dim`` raises a ValueError naming that field."""
    stored = np.load(path, allow_pickle=False)
    return from_stored(stored, table.precision, table.dim, f"content_tables.{table.name}.precision ({key}: {path.name})")
