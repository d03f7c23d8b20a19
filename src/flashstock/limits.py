"""Request body size limits, enforced before a body is parsed.

JSON bodies are small (a 100-line cart is a few KiB), so anything over
``max_body_bytes`` (64 KiB by default) is refused with ``413
payload_too_large``: at once when ``Content-Length`` says so, or as soon as a
streamed (chunked) body passes the limit. Stock file imports have their own,
larger cap (``max_import_bytes``).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

from flashstock.asgi import send_error

IMPORT_PATH = "/v1/stock/import"


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware capping request bodies (``413``); the import route gets its own cap."""

    def __init__(self, app: Any, max_body_bytes: int, max_import_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_import = max_import_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_import if scope["path"] == IMPORT_PATH else self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await send_error(send, 400, "invalid_request", "bad Content-Length")
                    return
                if declared > limit:
                    message = str(_too_large(limit).detail)
                    await send_error(send, 413, "payload_too_large", message)
                    return
                break
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, counted, send)
