"""A build killed with SIGKILL at several points (issue 21): the previous store stays intact or the new
one is complete, and the rerun leaves no stale temporary folder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from eventrec.store.reader import EventStore


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _bigger_world(data: Path, copies: int) -> None:
    """The tiny world's events repeated over many users, so that a build lasts about a second."""
    events = pl.read_parquet(data / "events.parquet")
    pl.concat([events.with_columns(pl.col("user_id") + 10 * k) for k in range(copies)]).write_parquet(data / "events.parquet")


def _command(schema: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "eventrec.cli", "build", "--schema", str(schema), "--data", str(data), "--out", str(out)]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
@pytest.mark.parametrize("after_s", [0.2, 0.5, 1.0, "writing"])
def test_killed_build_then_rerun(tiny_world, tmp_path, after_s):
    """``after_s``: seconds after the start, or "writing": as soon as its temporary folder appears."""
    schema, data = tiny_world
    out = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    subprocess.run(_command(schema, data, out), check=True, capture_output=True, env=env)
    previous = _digest(out)
    _bigger_world(data, 3_000)  # the next build makes a different, larger store
    child = subprocess.Popen(_command(schema, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if after_s == "writing":
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".store.tmp-*")) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert child.poll() is None, "the build ended before it wrote anything: make the world bigger"
    else:
        time.sleep(after_s)
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = EventStore.open(out)  # repairs a kill between the two renames
    now = _digest(out)
    assert now == previous or store.manifest["counts"]["streams.click.events"] == 6 * 3_000, "neither the old store nor a complete new one"
    subprocess.run(_command(schema, data, out), check=True, capture_output=True, env=env)
    assert EventStore.open(out).manifest["counts"]["streams.click.events"] == 6 * 3_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".store")] == [], "a stale temporary folder is left"
