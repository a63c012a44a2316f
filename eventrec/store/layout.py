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
from eventrec.store.raw_logs import DataError

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


def check_replaceable(out_dir: Path, inputs: dict[str, Path]) -> None:
    """Refuse to build into ``out_dir`` unless it is absent, empty or a previous store (its
    ``manifest.json`` names a ``format_version``), and refuse an ``out_dir`` equal to, inside or
    holding one of ``inputs`` (option name → folder; symlinks resolved): a build replaces ``out_dir``
    whole, so nothing it did not create may live there."""
    resolved = out_dir.resolve()
    for option, path in inputs.items():
        source = Path(path).resolve()
        if resolved == source or source in resolved.parents or resolved in source.parents:
            raise DataError(f"--out {out_dir}: is, is inside or holds {option} {path}; give the store its own folder")
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a folder; not replacing it")
    if any(out_dir.iterdir()) and not _is_store(out_dir):
        raise DataError(f"--out {out_dir}: a non-empty folder that is not an eventrec store (no manifest.json); "
                         "not replacing it: remove it yourself or choose another folder")


def _is_store(directory: Path) -> bool:
    try:
        return "format_version" in json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def remove_stale_temporaries(directory: Path, pattern: str, own_process_stale: bool = True) -> list[Path]:
    """Remove the entries of ``directory`` matching ``pattern`` (``...tmp-PID``: half-written folders
    or files) whose process is no longer running, i.e. was killed mid-write; returns them. With
    ``own_process_stale`` an entry of this very process counts as left over from an earlier call."""
    removed = []
    for path in Path(directory).glob(pattern):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or (int(pid) == os.getpid() and not own_process_stale) or (int(pid) != os.getpid() and process_alive(int(pid))):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted_swap(out_dir: Path) -> None:
    """If a build was killed between its two renames, put the previous store back."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists() and not out_dir.exists():
        os.rename(old, out_dir)
