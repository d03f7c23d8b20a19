"""Ids with a ``/`` in them, in URL paths.

SPEC allows any printable character in a sku, location or id, ``/``
included, but servers decode ``%2F`` before routing, so ``/v1/stock/A%2FB``
would never reach the stock route. When the raw path has an encoded slash,
:class:`EncodedSlashes` decodes it segment by segment, standing a private-use
character in for each slash inside a segment; path parameters declared as
``{name:seg}`` turn it back into ``/``.

A path whose percent-escapes are not UTF-8 (``%FF``, a lone surrogate
``%ED%A0%80``) is refused with ``422 invalid_request``: servers decode it with
U+FFFD in place of each bad byte, which would name another id silently.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

from flashstock.asgi import send_error

SLASH = "\ue000"


class Segment(Convertor[str]):
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return value.replace(SLASH, "/")

    def to_string(self, value: str) -> str:
        return value.replace("/", SLASH)


register_url_convertor("seg", Segment())


class EncodedSlashes:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or b""
            if "\ufffd" in scope["path"] and not _utf8(raw.split(b"?", 1)[0]):
                message = "the URL path is not valid UTF-8 once percent-decoded"
                await send_error(send, 422, "invalid_request", message)
                return
            if b"%2f" in raw.lower() or SLASH in scope["path"]:
                path = raw.split(b"?", 1)[0].decode("ascii", "replace")
                segments = [unquote(s) for s in path.split("/")]
                if any(SLASH in s for s in segments):  # the stand-in itself, sent literally
                    message = "the URL path holds U+E000, which no sku, location or id may contain"
                    await send_error(send, 422, "invalid_request", message)
                    return
                scope = dict(scope, path="/".join(s.replace("/", SLASH) for s in segments))
        await self.app(scope, receive, send)


def _utf8(raw_path: bytes) -> bool:
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
