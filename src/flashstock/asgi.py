"""Answers sent by the ASGI middlewares that run before the app (keys, body size, paths)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


async def send_error(
    send: Any, status: int, code: str, message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:  # fmt: skip
    """Answer with the API's error body ``{"error", "message"}``."""
    body = orjson.dumps({"error": code, "message": message})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers,
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
