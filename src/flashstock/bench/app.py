"""The app the benchmarks serve: flashstock's own API plus bench-only routes.

``create_bench_app`` is :func:`flashstock.api.create_app` with, mounted only
here (never in the public API):

* ``POST /bench/bare``: a FastAPI route answering a constant reservation-sized
  body; the ceiling the reserve route is compared with.
* ``POST /bench/floor``: the same constant answered by a raw ASGI callable in
  front of the app, the floor of the server itself (uvicorn and httptools).
* ``POST /bench/pg/{approach}``: the PostgreSQL approaches users pick instead
  (:mod:`flashstock.bench.pgalt`), on ``FLASHSTOCK_BENCH_PG_URL``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from flashstock.api import create_app
from flashstock.settings import Settings

# A body the size and shape of a one-line reservation.
CONSTANT = orjson.dumps({
    "reservation_id": "0" * 32, "status": "active", "customer_id": None,
    "expires_at": "2026-01-01T00:00:00.000Z",
    "items": [{"sku": "HOT", "location": "default", "quantity": 1, "backordered": 0}],
})  # fmt: skip


class Floor:
    """Answers ``POST /bench/floor`` before anything else runs; passes every other request on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # app.state, app.openapi() … of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/floor":
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(CONSTANT)).encode())]})  # fmt: skip
            await send({"type": "http.response.body", "body": CONSTANT})
            return
        await self.app(scope, receive, send)


def create_bench_app(settings: Settings | None = None) -> Any:
    app: FastAPI = create_app(settings)

    @app.post("/bench/bare", status_code=201, include_in_schema=False)
    async def bare() -> Response:
        return Response(CONSTANT, status_code=201, media_type="application/json")

    pg_url = os.environ.get("FLASHSTOCK_BENCH_PG_URL")
    if pg_url:
        from flashstock.bench.pgalt import Approaches

        approaches = Approaches(
            pg_url, pool_size=int(os.environ.get("FLASHSTOCK_BENCH_PG_POOL", "16"))
        )

        @app.post("/bench/pg/{approach}", include_in_schema=False)
        async def pg(approach: str, request: Request) -> Response:
            body = orjson.loads(await request.body())
            line = body["items"][0]
            status, answer = await approaches.reserve(approach, line["sku"], line["quantity"])
            return Response(orjson.dumps(answer), status_code=status, media_type="application/json")

    return Floor(app)
