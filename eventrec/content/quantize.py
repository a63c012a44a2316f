"""Quantize a content table's vectors into residual-VQ codes and attach them to the raw logs.

``quantize_table`` fits the codebooks on the training period's items only
(:mod:`eventrec.content.training_items`), encodes every item of the vector table (cold ones too) and
writes, into ``out_dir``:

- ``{name}_vq_codes.parquet``: ``key, {name}_vq0, ..., {name}_vq{L-1}`` (Int16 codes in ``[0, codes)``);
- ``{name}_vq_codebooks.npz``: the codebooks ``[L, codes, dim]`` and the fit's metadata;
- ``{name}_vq{l}_codebook.parquet`` per level: ``{name}_vq{l}, vector`` (the code and its codeword,
  ``list[float32]``): a content table a schema can look each level's codeword up in by the event's
  code, so that the model reads the reconstruction's parts while events still carry only codes;
- ``{name}_vq.json``: the report (items fitted, cold items, reconstruction error per level, bytes);
- per ``attach`` entry ``FILE[:COLUMN]`` (a raw log relative to ``data_dir``): ``{stem}_{name}_vq.parquet``,
  the file's rows in their order with the code columns joined on ``COLUMN`` (default: the key);
  a row whose id has no vector gets null codes (counted; the store encodes them as missing).

A schema then reads the codes as categorical attributes, the same vocabulary on the events and on
the candidates (``{name: text_vq0, kind: categorical, vocabulary: text_vq0}`` in the stream and in
``item_attributes``), so the model's tables and match attention see them as shared ids. Every file
is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import polars as pl

from eventrec.content.files import read_keyed, vectors_of, write_parquet_atomic
from eventrec.content.residual_vq import fit_residual_vq
from eventrec.content.training_items import training_items
from eventrec.schema import Schema
from eventrec.store.raw_logs import DataError, scan_table


def code_columns(name: str, levels: int) -> list[str]:
    """The attribute names of the codes: ``{name}_vq0`` ... ``{name}_vq{levels-1}``."""
    return [f"{name}_vq{level}" for level in range(levels)]


def code_bytes(codes: int) -> int:
    """Bytes one code needs at the least (1 for up to 256 codes)."""
    return max(1, math.ceil(math.log2(max(codes, 2)) / 8))


def _attach(data_dir: Path, spec: str, key: str, codes_frame: pl.DataFrame, out_dir: Path, name: str) -> dict:
    """Join the codes onto one raw log (``FILE[:COLUMN]``); returns its line of the report."""
    file, _, column = spec.partition(":")
    column = column or key
    table = scan_table(data_dir, file)
    if len(table.files) != 1 or table.files[0].suffix != ".parquet":
        raise DataError(f"attach {spec!r}: expected one Parquet file relative to --data, found {[str(f) for f in table.files]}")
    raw = pl.read_parquet(table.files[0])
    if column not in raw.columns:
        raise DataError(f"{table.files[0]}: missing column {column!r} (the id to attach codes by); columns: {raw.columns}")
    taken = sorted(set(codes_frame.columns[1:]) & set(raw.columns))
    if taken:
        raise DataError(f"{table.files[0]}: already has the code column(s) {taken}; attach to the file without codes")
    right = codes_frame.rename({key: column}) if column != key else codes_frame
    if right.schema[column] != raw.schema[column]:
        raise DataError(f"{table.files[0]}: column {column!r} is {raw.schema[column]}, the vector table's key {key!r} is {right.schema[column]}")
    joined = raw.join(right, on=column, how="left", maintain_order="left")
    out = out_dir / f"{Path(file).stem}_{name}_vq.parquet"
    write_parquet_atomic(joined, out)
    missing = int(joined[codes_frame.columns[1]].is_null().sum())
    return {"file": str(out.name), "rows": joined.height, "rows_without_code": missing}


def quantize_table(schema: Schema, data_dir: Path, vectors_path: Path, key: str, name: str, levels: int = 3, codes: int = 256,
                   seed: int = 0, vector_column: str = "vector", attach: list[str] | None = None, out_dir: Path | None = None,
                   max_iterations: int = 100) -> dict:
    """Fit, encode, write (see the module doc); returns the report (also ``{name}_vq.json``)."""
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else data_dir
    items = training_items(schema, data_dir, key)
    frame = read_keyed(Path(vectors_path), key, vector_column, "vector")
    vectors = vectors_of(frame, vector_column, Path(vectors_path))
    keys = frame[key]
    ids = items.ids if items.ids.dtype == keys.dtype else items.ids.cast(pl.String)
    seen = (keys if items.ids.dtype == keys.dtype else keys.cast(pl.String)).is_in(ids.implode()).to_numpy()
    if not seen.any():
        raise DataError(f"{vectors_path}: none of its {len(keys)} keys {key!r} appears in the training period (before {items.train_end}); "
                        "is --key the item attribute the vectors describe?")
    quantizer = fit_residual_vq(vectors[seen], levels, codes, seed, max_iterations)
    all_codes = quantizer.encode(vectors)
    columns = code_columns(name, levels)
    codes_frame = pl.DataFrame({key: keys, **{c: pl.Series(c, all_codes[:, level], dtype=pl.Int16) for level, c in enumerate(columns)}})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(codes_frame, out_dir / f"{name}_vq_codes.parquet")
    fit = {"key": key, "name": name, "levels": levels, "codes": codes, "seed": seed, "max_iterations": max_iterations,
           "train_end": items.train_end, "vectors": str(vectors_path), "fitted_items": int(seen.sum())}
    quantizer.save(out_dir / f"{name}_vq_codebooks.npz", fit)
    for level, column in enumerate(columns):
        book = quantizer.codebooks[level].astype(np.float32)
        write_parquet_atomic(pl.DataFrame({column: pl.Series(column, np.arange(codes), dtype=pl.Int16),
                                           "vector": pl.Series("vector", book, dtype=pl.Array(pl.Float32, book.shape[1])).cast(pl.List(pl.Float32))}),
                             out_dir / f"{column}_codebook.parquet")
    cold = ~seen
    report = {
        **fit,
        "validation_end": items.validation_end,
        "items_with_vector": len(keys),
        "training_items": items.ids.len(),
        "training_items_by_place": items.places,
        "training_items_without_vector": items.ids.len() - int(seen.sum()),
        "items_not_in_training": int(cold.sum()),
        "codes_used_by_training_items": [int(len(np.unique(all_codes[seen, level]))) for level in range(levels)],
        "mse_by_levels": {"training_items": quantizer.reconstruction_errors(vectors[seen]),
                          **({"other_items": quantizer.reconstruction_errors(vectors[cold])} if cold.any() else {})},
        "bytes_per_item": {"float32_vector": 4 * vectors.shape[1], "codes": levels * code_bytes(codes)},
        "attached": [_attach(data_dir, spec, key, codes_frame, out_dir, name) for spec in attach or []],
    }
    tmp = out_dir / f".{name}_vq.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / f"{name}_vq.json")
    return report
