"""Session fixtures of the adapter tests: each real dataset prepared once, on first use."""

from __future__ import annotations

from pathlib import Path

import pytest
from adapter_checks import source_dir

from eventrec.adapters import ADAPTERS


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """name → (output dir, summary), each dataset prepared once on first use."""
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"prepared_{name}") / "out"
            prepare, _ = ADAPTERS[name]
            cache[name] = (out, prepare(source_dir(name), out))
        return cache[name]

    return get
