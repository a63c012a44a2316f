"""Adapters: public datasets → eventrec's raw-log format, each with a ready schema.

Each adapter is ``prepare(source_dir, out_dir, ...) -> dict``: it reads the raw dataset from
``source_dir``, writes ``events.parquet``, ``impressions.parquet`` (and side tables, and
``summary.json``) into ``out_dir`` atomically and deterministically, and returns summary counts,
every dropped row counted. The schema named beside it (``eventrec/schemas/<name>.yaml``) describes
the output. See ``docs/datasets.md``.

>>> from eventrec.adapters import ADAPTERS, prepare_dataset
>>> prepare, schema_name = ADAPTERS["ml100k"]
>>> summary = prepare_dataset("ml100k", "runs/ml100k")        # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from eventrec.adapters import amazon_grocery, amazon_grocery_conversion, ml100k, ml100k_conversion, trivago, trivago_lists_small, trivago_views
from eventrec.adapters._common import AdapterError, describe

ADAPTERS: dict[str, tuple[Callable[..., dict], str]] = {
    "trivago": (trivago.prepare, trivago.SCHEMA),
    "trivago_views": (trivago_views.prepare, trivago_views.SCHEMA),
    "trivago_lists_small": (trivago_lists_small.prepare, trivago_lists_small.SCHEMA),
    "ml100k": (ml100k.prepare, ml100k.SCHEMA),
    "ml100k_conversion": (ml100k_conversion.prepare, ml100k_conversion.SCHEMA),
    "amazon_grocery": (amazon_grocery.prepare, amazon_grocery.SCHEMA),
    "amazon_grocery_conversion": (amazon_grocery_conversion.prepare, amazon_grocery_conversion.SCHEMA),
}

# Folder of each dataset under the shared data directory (see ../shared/data/README.md).
SOURCE_FOLDERS = {
    "trivago": "trivago",
    "trivago_views": "trivago",
    "trivago_lists_small": "trivago",
    "ml100k": "ml-100k",
    "ml100k_conversion": "ml-100k",
    "amazon_grocery": "amazon-grocery",
    "amazon_grocery_conversion": "amazon-grocery",
}
DATA_DIR_ENV = "EVENTREC_DATA_DIR"


def default_data_dir() -> Path:
    """``$EVENTREC_DATA_DIR`` if set, else ``../shared/data`` next to the project's root."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def prepare_dataset(name: str, out_dir: Path | str, source_dir: Path | str | None = None, **options) -> dict:
    """Run adapter ``name`` (reading from the shared data directory unless ``source_dir`` is given)."""
    if name not in ADAPTERS:
        raise KeyError(f"no adapter {name!r}; available: {sorted(ADAPTERS)}")
    prepare, _ = ADAPTERS[name]
    source = Path(source_dir) if source_dir is not None else default_data_dir() / SOURCE_FOLDERS[name]
    return prepare(source, Path(out_dir), **options)


__all__ = ["ADAPTERS", "SOURCE_FOLDERS", "AdapterError", "default_data_dir", "describe", "prepare_dataset"]
