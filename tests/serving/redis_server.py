"""Start and stop a real ``redis-server`` for the tests (see ``conftest.redis_url``)."""

from __future__ import annotations

from pathlib import Path

import pytest


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
