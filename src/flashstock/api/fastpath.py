"""``POST /v1/reservations`` without the framework's per-request machinery.

The busiest route of a flash sale is answered by the app class itself
(:class:`FastReserveAPI`), before the framework's and our middleware run: API key check (the same :class:`Authenticator`,
before the body is read), body size cap, the body parsed by orjson and
checked by hand against the rules of ``ReservationIn``, one engine call, the
script's JSON sent as it came, and the same metrics. Anything it does not
take for certain (a missing or refused key, another content type, a body
``ReservationIn`` would refuse or that orjson reads differently) goes to the
FastAPI route unchanged, body included, so every refusal and every 422 is the
route's own. The route stays declared, and with it the OpenAPI schema.

Why: on a bare FastAPI route, dependency resolution, body validation and the
middleware stack cost more than the Redis call the request is for (see
docs/benchmarks.md for the profile).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashstock.auth import Authenticator, _token
from flashstock.errors import FlashstockError
from flashstock.settings import MAX_LINES_CEILING, MAX_QUANTITY_CEILING, MAX_TTL_CEILING

PATH = "/v1/reservations"
MAX_ID = 128
_FIELDS = frozenset(("reservation_id", "customer_id", "ttl_seconds", "split", "items"))
_LINE = frozenset(("sku", "quantity", "location"))
_JSON = [(b"content-type", b"application/json")]
UNAVAILABLE = b'{"error":"unavailable","message":"Redis is unreachable; retry with the same id"}'

Parsed = tuple[list[tuple[str, int, str | None]], str | None, str | None, int | None, bool]


def _id(v: Any) -> bool:
    return type(v) is str and 0 < len(v) <= MAX_ID


def parse_reservation(raw: bytes) -> Parsed | None:
    """``(lines, reservation_id, customer_id, ttl_seconds, split)``, or None when the body is
    not one ``ReservationIn`` would take as it is (then the route answers it)."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or not d.keys() <= _FIELDS:
        return None
    items = d.get("items")
    if type(items) is not list or not 0 < len(items) <= MAX_LINES_CEILING:
        return None
    lines = []
    for it in items:
        if type(it) is not dict or not it.keys() <= _LINE:
            return None
        sku, q, loc = it.get("sku"), it.get("quantity"), it.get("location")
        if not _id(sku) or type(q) is not int or not 0 < q <= MAX_QUANTITY_CEILING:
            return None
        if loc is not None and not _id(loc):
            return None
        lines.append((sku, q, loc))
    rid, cust, ttl = d.get("reservation_id"), d.get("customer_id"), d.get("ttl_seconds")
    split = d.get("split", True)
    if (rid is not None and not _id(rid)) or (cust is not None and not _id(cust)):
        return None
    if ttl is not None and (type(ttl) is not int or not 0 < ttl <= MAX_TTL_CEILING):
        return None
    if type(split) is not bool:
        return None
    return lines, rid, cust, ttl, split


def _json_type(value: bytes) -> bool:
    return value.split(b";", 1)[0].strip().lower() == b"application/json"


class FastReserveAPI(FastAPI):
    """The app: ``POST /v1/reservations`` goes to :attr:`fast_reserve` when it is set."""

    fast_reserve: FastReserve | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        fast = self.fast_reserve
        if fast is not None and scope["type"] == "http" and scope["path"] == PATH:
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class FastReserve:
    """Answers well-formed reserves of ``owner`` itself; see the module docstring."""

    def __init__(self, owner: FastReserveAPI, auth: Authenticator, max_body: int) -> None:
        from flashstock.api.app import LATENCY, REFUSALS, REQUESTS

        self.owner = owner
        self.app = partial(FastAPI.__call__, owner)  # everything not answered here
        self.auth = auth
        self.max_body = max_body
        self.handled = 0  # requests answered here (tests, operators)
        self._requests = REQUESTS
        self._refusals = REFUSALS
        self._latency = LATENCY.labels(PATH)
        self._counted: dict[int, Any] = {}
        self._refused: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        key_id = None
        if self.auth.enabled:
            got = self.auth.check(_token(scope["headers"]), "checkout")
            if isinstance(got, tuple):
                await self.app(scope, receive, send)  # the route's middleware answers 401/403
                return
            key_id = got.id
        length = -1
        json_type = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"content-type":
                json_type = _json_type(value)
        if not json_type or not 0 < length <= self.max_body:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        parsed = parse_reservation(raw) if len(raw) == length else None
        if parsed is None:
            await self.app(scope, _replay(raw, receive), send)
            return
        lines, rid, cust, ttl, split = parsed
        engine = self.owner.state.flashstock.engine
        headers = _JSON
        try:
            r = await engine.reserve(
                lines, reservation_id=rid, customer_id=cust, ttl_seconds=ttl, split=split,
                key_id=key_id,
            )  # fmt: skip
            status, body = (201 if r.created else 200), r.raw
        except (RedisConnectionError, RedisTimeoutError):
            # As the app's handler: 503, and never the exception's text (hosts, credentials).
            self._refusals.labels("unavailable").inc()
            status, body = 503, UNAVAILABLE
            headers = _JSON + [(b"retry-after", b"1")]
        except FlashstockError as exc:
            refused = self._refused.get(exc.code)
            if refused is None:
                refused = self._refused[exc.code] = self._refusals.labels(exc.code)
            refused.inc()
            status, body = exc.status, orjson.dumps(exc.body())
            if extra := exc.headers():
                headers = _JSON + [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        except Exception:
            self._count(500, start)  # as the metrics middleware counts it; the server answers 500
            raise
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", b"%d" % len(body))]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        self.handled += 1
        self._count(status, start)

    def _count(self, status: int, start: float) -> None:
        counter = self._counted.get(status)
        if counter is None:
            counter = self._counted[status] = self._requests.labels("POST", PATH, status)
        counter.inc()
        self._latency.observe(time.perf_counter() - start)


def _replay(raw: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the already-read body on first, then the real channel."""
    sent = False

    async def again() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return again
