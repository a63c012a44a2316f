"""The on-disk layout of a built store: its format version, split names, the reserved column names
of the build, multi-valued columns, and atomic writes (a new store replaces the old one by two
renames, so that a kill at any point leaves the previous store readable).

Both the builder (:mod:`eventrec.store.build`) and the reader (:mod:`eventrec.store.reader`) import
this module; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from eventrec.schema import Schema

FORMAT_VERSION = 1
USER = "_user"
TIME = "_t"
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Ragged:
    """Multi-valued rows: ``values [T]`` and ``offsets [rows+1]`` (int64, from 0)."""

    values: np.ndarray
    offsets: np.ndarray


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd", row_group_size=65_536, write_statistics=True, store_schema=False)


def write_json(data: Any, path: Path) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def schema_fingerprint(schema: Schema) -> str:
    return hashlib.sha256(json.dumps(schema.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Atomically replace ``out_dir`` by ``tmp`` (the previous store survives a kill at any point)."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)


def recover_interrupted_swap(out_dir: Path) -> None:
    """If a build was killed between its two renames, put the previous store back."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists() and not out_dir.exists():
        os.rename(old, out_dir)
