"""The HTTP API (SPEC §3): ``create_app(settings)`` builds one app; nothing happens at import."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import Counter, Histogram
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from flashstock import __version__
from flashstock.api import health, orders, reservations, stock
from flashstock.api.deps import State, json_response
from flashstock.api.fastpath import FastReserve, FastReserveAPI
from flashstock.api.paths import EncodedSlashes
from flashstock.api.schema import install as install_openapi
from flashstock.auth import Authenticator, AuthMiddleware, load_keys
from flashstock.durability import prepare as prepare_durability
from flashstock.engine import Engine
from flashstock.errors import FlashstockError
from flashstock.limits import BodyLimit
from flashstock.redis_client import create_async, multiplexed
from flashstock.settings import Settings

REQUESTS = Counter(
    "flashstock_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "flashstock_http_request_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
REFUSALS = Counter("flashstock_refusals_total", "Requests refused, by error code", ["code"])


class Metrics:
    """Counts requests by route template and status; one timer per request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            REQUESTS.labels(scope["method"], path, status[0]).inc()
            LATENCY.labels(path).observe(time.perf_counter() - start)


def _validation_body(exc: RequestValidationError) -> dict[str, Any]:
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "message": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return {
            "error": "invalid_json",
            "message": "request body is not valid JSON",
            "errors": errors,
        }
    first = errors[0] if errors else {"loc": [], "message": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body")
    return {
        "error": "invalid_request",
        "message": f"{where}: {first['message']}" if where else first["message"],
        "errors": errors,
    }


# Metrics are Prometheus (/metrics). FastAPI's own OpenTelemetry hooks, where this FastAPI has
# them, would look up three providers in the environment on every request: off.
_NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. With no Redis or database URL, the embedded default is started."""
    settings = settings or Settings()
    # Keys are read once, here: a bad key file stops the server before it listens.
    keys = Authenticator(load_keys(settings.api_keys, settings.api_keys_file))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from flashstock import embedded
        from flashstock.db import make_engine

        s, emb = settings, None
        if s.redis_url is None or s.database_url is None:
            emb = embedded.start(s)
            s = emb.settings
        assert s.redis_url is not None and s.database_url is not None
        timeout = s.redis_timeout_seconds
        client = create_async(s.redis_url, "api", timeout=timeout)
        scripts = multiplexed(
            create_async(s.redis_url, "api", timeout=timeout), s.redis_url, "api", timeout
        )
        db = make_engine(s.database_url)
        engine = Engine(scripts, s)
        # Strict durability refuses to start on a Redis that cannot keep its promise.
        engine.durable = await prepare_durability(s, client)
        app.state.flashstock = State(s, engine, client, db)
        try:
            yield
        finally:
            await scripts.aclose()
            await client.aclose()
            db.dispose()
            if emb is not None:
                emb.stop()

    app = FastReserveAPI(
        title="flashstock",
        version=__version__,
        summary="Inventory reservations for flash sales: never oversells, every change persisted.",
        lifespan=lifespan,
        **_NO_OTEL,
    )
    for module in (reservations, orders, stock, health):
        app.include_router(module.router)

    @app.exception_handler(FlashstockError)
    async def refused(request: Request, exc: FlashstockError) -> Response:
        REFUSALS.labels(exc.code).inc()
        return json_response(exc.body(), exc.status, exc.headers())

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def unavailable(request: Request, exc: Exception) -> Response:
        # Never the exception's text: the client learns nothing about hosts or credentials.
        REFUSALS.labels("unavailable").inc()
        return json_response(
            {"error": "unavailable", "message": "Redis is unreachable; retry with the same id"},
            503,
            {"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        body = _validation_body(exc)
        kind = request.headers.get("content-type", "")
        if body["error"] == "invalid_request" and kind and "json" not in kind:
            if any(e["loc"] == ["body"] for e in body["errors"]):  # the body as a whole
                body["message"] = (
                    f"the body must be JSON (content-type: application/json), not {kind}"
                )
        REFUSALS.labels(body["error"]).inc()
        return json_response(body, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400:
            # FastAPI's only 400 here: a body it could not decode (not UTF-8, JSON nested too
            # deep), answered as the same 422 as any other body that is not JSON.
            body = {
                "error": "invalid_json",
                "message": "request body could not be read as JSON: not UTF-8, or nested too deep",
            }
            REFUSALS.labels("invalid_json").inc()
            return json_response(body, 422)
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return json_response({"error": code, "message": str(exc.detail)}, exc.status_code,
            headers=getattr(exc, "headers", None),
        )  # fmt: skip

    install_openapi(app, keys.enabled)
    # Outermost last: slashes, metrics (401s counted too), keys, then body size, before any read.
    app.add_middleware(BodyLimit, settings.max_body_bytes, settings.max_import_bytes)
    app.add_middleware(AuthMiddleware, keys)
    app.add_middleware(Metrics)
    app.add_middleware(EncodedSlashes)
    # Before all of it: well-formed reserves answered at once (api/fastpath.py).
    app.fast_reserve = FastReserve(app, keys, settings.max_body_bytes)
    return app
