"""ASGI middleware: refuse request bodies above a size limit with HTTP 413, before anything parses them.

A ``Content-Length`` above the limit is answered at once (the body is not read); otherwise (no length:
a chunked body, or a length that lies) the body is read in chunks and counted, and the request is
answered 413 as soon as the count passes the limit. A body within the limit is handed to the app
unchanged (replayed from memory: at most ``max_bytes`` per request are held).
"""

from __future__ import annotations

import json
from typing import Any, Callable

DEFAULT_MAX_BODY_BYTES = 32 << 20


class BodyLimit:
    """Wraps an ASGI app; ``max_bytes``: the largest request body accepted."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        if max_bytes < 1:
            raise ValueError(f"max_body_bytes: must be >= 1, got {max_bytes}")
        self.app, self.max_bytes = app, int(max_bytes)

    async def _refuse(self, send: Callable, size: str) -> None:
        body = json.dumps({"detail": [{"loc": ["body"], "msg": f"request body of {size} bytes; the limit is {self.max_bytes}",
                                       "type": "BodyTooLarge"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        try:
            declared = int(lengths[0]) if lengths else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, str(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, f"more than {self.max_bytes}")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
