"""A uvicorn server in a thread on a free loopback port, for the HTTP tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


@contextmanager
def running(app, **client_options):
    """``app`` served by uvicorn on a free 127.0.0.1 port in a thread; yields an ``httpx.Client`` on it."""
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, **client_options) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
