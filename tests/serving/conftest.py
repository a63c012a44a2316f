from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_world import write_tiny_world  # noqa: E402

MODEL = dict(model_dim=16, num_heads=2, attribute_dim=4, pooling_slots=2, mlp_dims=[8])


def _train(tmp: Path, **overrides):
    from eventrec.model.config import SequenceModelConfig
    from eventrec.schema import load_schema
    from eventrec.store import EventStore
    from eventrec.store_builder import build_store
    from eventrec.training.trainer import TrainConfig, train

    data = tmp / "tiny"
    schema_path = write_tiny_world(data)
    if not (tmp / "store" / "manifest.json").exists():
        build_store(load_schema(schema_path), data, tmp / "store")
    store = EventStore.open(tmp / "store")
    name = "run_" + "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    train(store, SequenceModelConfig(**(MODEL | overrides)), TrainConfig(epochs=1, batch_size=2, warmup_steps=1), tmp / name, show_progress=False)
    return store, tmp / name / "best", data


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(store, checkpoint dir, raw data dir) of a tiny model with the default (time-reading) encoder."""
    return _train(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="session")
def served_invariant(tmp_path_factory):
    """The same, with an encoder that does not read the request time (exact incremental appends)."""
    return _train(tmp_path_factory.mktemp("serving_inv"), timestamp_encoding=False, time_bias=True, summary_token=False)


@pytest.fixture(scope="session")
def served_invariant_token(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("serving_inv_tok"), timestamp_encoding=False, time_bias=False, summary_token=True)


def start_redis(directory: Path):
    """A real ``redis-server`` on 127.0.0.1 on a free port, no persistence; (process, url).

    Absent ``redis-server``: the test fails when ``CI=true`` (CI installs it), else it is skipped."""
    import os
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server not found (Debian: apt-get install -y redis-server; `make test` installs it as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    import redis

    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # the free port may be taken between the probe and the bind: retry
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                    "--dir", str(directory), "--daemonize", "no", "--protected-mode", "yes"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
        deadline = time.time() + 10
        while time.time() < deadline and process.poll() is None:
            try:
                client.ping()
                client.close()
                return process, f"redis://127.0.0.1:{port}/0"
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    pytest.fail("redis-server did not start")


def stop_redis(process) -> None:
    process.terminate()
    try:
        process.wait(10)
    except Exception:  # noqa: BLE001
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of a real Redis server for the session (started here, stopped at the end)."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_redis(process)
