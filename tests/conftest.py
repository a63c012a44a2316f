from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_world import write_tiny_world  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture()
def tiny_world(tmp_path: Path) -> tuple[Path, Path]:
    """(schema path, data dir) of the tiny hand-written world."""
    data = tmp_path / "tiny"
    return write_tiny_world(data), data


@pytest.fixture()
def tiny_store(tiny_world, tmp_path: Path):
    from eventrec.schema import load_schema
    from eventrec.store.reader import EventStore
    from eventrec.store.build import build_store

    schema_path, data = tiny_world
    build_store(load_schema(schema_path), data, tmp_path / "store")
    return EventStore.open(tmp_path / "store")
