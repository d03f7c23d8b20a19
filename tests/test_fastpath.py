"""The reserve fast path: the same answers as the FastAPI route, for less work.

``parse_reservation`` must accept exactly what ``ReservationIn`` accepts, with
the same values; whatever it does not accept goes to the FastAPI route, whose
422 bodies tests/test_api.py pins. Over HTTP, a reserve taken by the fast
path answers what the route answers, counts in the metrics, and honours API
keys the way the middleware does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import REDIS_URL, need_redis, unique_prefix

from flashstock.api import create_app
from flashstock.api.fastpath import FastReserve, parse_reservation
from flashstock.api.models import ReservationIn
from flashstock.auth import new_key
from flashstock.settings import Settings


def pydantic_view(raw: bytes):  # type: ignore[no-untyped-def]
    """What the FastAPI route gets from a body: the validated fields, or None for a 422."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    try:
        m = ReservationIn.model_validate(data)
    except ValidationError:
        return None
    return (
        [(i.sku, i.quantity, i.location) for i in m.items],
        m.reservation_id, m.customer_id, m.ttl_seconds, m.split,
    )  # fmt: skip


CORPUS = [
    {"items": [{"sku": "HOT", "quantity": 1}]},
    {"items": [{"sku": "HOT", "quantity": 1, "location": "east"}], "split": False},
    {"items": [{"sku": "HOT", "quantity": 1, "location": None}], "reservation_id": None},
    {
        "reservation_id": "r",
        "customer_id": "c",
        "ttl_seconds": 604_800,
        "items": [{"sku": "x" * 128, "quantity": 1_000_000}],
    },
    {"items": [{"sku": "HOT", "quantity": 1}] * 100},
    {"items": [{"sku": "HOT", "quantity": 1}] * 101},
    {"items": []},
    {"items": None},
    {"items": {}},
    {},
    [],
    "items",
    {"items": [{"sku": "HOT", "quantity": 1.5}]},
    {"items": [{"sku": "HOT", "quantity": 2.0}]},
    {"items": [{"sku": "HOT", "quantity": "3"}]},
    {"items": [{"sku": "HOT", "quantity": True}]},
    {"items": [{"sku": "HOT", "quantity": 0}]},
    {"items": [{"sku": "HOT", "quantity": 1_000_001}]},
    {"items": [{"sku": "HOT", "quantity": 10**30}]},
    {"items": [{"sku": "", "quantity": 1}]},
    {"items": [{"sku": "x" * 129, "quantity": 1}]},
    {"items": [{"sku": 5, "quantity": 1}]},
    {"items": [{"sku": "HOT"}]},
    {"items": [{"quantity": 1}]},
    {"items": [{"sku": "HOT", "quantity": 1, "colour": "red"}]},
    {"items": [{"sku": "HOT", "quantity": 1, "location": ""}]},
    {"items": [{"sku": "HOT", "quantity": 1}], "extra": 1},
    {"items": [{"sku": "HOT", "quantity": 1}], "split": None},
    {"items": [{"sku": "HOT", "quantity": 1}], "split": 1},
    {"items": [{"sku": "HOT", "quantity": 1}], "ttl_seconds": 0},
    {"items": [{"sku": "HOT", "quantity": 1}], "ttl_seconds": 604_801},
    {"items": [{"sku": "HOT", "quantity": 1}], "ttl_seconds": None},
    {"items": [{"sku": "HOT", "quantity": 1}], "reservation_id": ""},
    {"items": [{"sku": "HOT", "quantity": 1}], "customer_id": 7},
    {"items": [{"sku": "HO\u0000T", "quantity": 1}]},
    {"items": [{"sku": "\U0001f600" * 128, "quantity": 1}]},
    {"items": [{"sku": "\U0001f600" * 129, "quantity": 1}]},
]
RAW = [b"", b"{", b'{"items": [', b"null", b"NaN", b'{"items":[{"sku":"A","quantity":1}]} x',
       b'{"items":[{"sku":"A","quantity":1}],"items":[]}', b'\xef\xbb\xbf{"items":[]}',
       '{"items":[{"sku":"A","quantity":1}]}'.encode("utf-16"),
       b'{"items":[{"sku":"\\ud800","quantity":1}]}', b'{"items":[{"sku":"A","quantity":1e0}]}',
       b'{"items":[{"sku":"A","quantity":-0}]}', b'{"items":[{"sku":"A","quantity":01}]}']  # fmt: skip


@pytest.mark.parametrize("raw", [json.dumps(c).encode() for c in CORPUS])
def test_the_fast_parser_accepts_what_the_model_accepts(raw: bytes) -> None:
    assert parse_reservation(raw) == pydantic_view(raw)


@pytest.mark.parametrize("raw", RAW)
def test_odd_bodies_are_left_to_the_route_or_read_alike(raw: bytes) -> None:
    """Encodings and JSON oddities the fast parser does not take go to the route."""
    got = parse_reservation(raw)
    assert got is None or got == pydantic_view(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2_000_000) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
lines = st.fixed_dictionaries(
    {"sku": st.one_of(st.text(max_size=3), json_values), "quantity": st.one_of(st.integers(-1, 3), json_values)},
    optional={"location": st.one_of(st.none(), st.text(max_size=3), json_values), "x": json_values},
)  # fmt: skip
bodies = st.fixed_dictionaries(
    {},
    optional={
        "items": st.one_of(st.lists(lines, max_size=3), json_values),
        "reservation_id": st.one_of(st.none(), st.text(max_size=3), json_values),
        "customer_id": st.one_of(st.none(), st.text(max_size=3)),
        "ttl_seconds": st.one_of(st.none(), st.integers(-1, 700_000), json_values),
        "split": json_values,
        "other": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_the_fast_parser_matches_the_model_on_generated_bodies(body: dict) -> None:
    raw = json.dumps(body).encode()
    assert parse_reservation(raw) == pydantic_view(raw)


@pytest.fixture
def api() -> Iterator[TestClient]:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://")
    with TestClient(create_app(s)) as client:
        client.put("/v1/stock/HOT/default", json={"on_hand": 5})
        yield client
        state = client.app.state.flashstock  # type: ignore[attr-defined]
        client.portal.call(_drop, state.redis, s.key_prefix)


async def _drop(redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)


def fast(client: TestClient) -> FastReserve:
    fast = client.app.fast_reserve  # type: ignore[attr-defined]
    assert isinstance(fast, FastReserve)
    return fast


@pytest.mark.redis
def test_a_reserve_on_the_fast_path_answers_what_the_route_answers(api: TestClient) -> None:
    before = fast(api).handled
    created = counted(api, 'route="/v1/reservations",status="201"')
    short_before = counted(api, 'code="insufficient_stock"')
    body = {"reservation_id": "f-1", "customer_id": "c", "items": [{"sku": "HOT", "quantity": 2}]}
    first = api.post("/v1/reservations", json=body)
    assert first.status_code == 201 and first.headers["content-type"] == "application/json"
    assert first.json() == api.get("/v1/reservations/f-1").json()
    again = api.post("/v1/reservations", json=body)
    assert again.status_code == 200 and again.json() == first.json()
    short = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 4}]})
    assert short.status_code == 409
    assert short.json()["lines"] == [
        {"sku": "HOT", "location": None, "requested": 4, "available": 3}
    ]
    assert fast(api).handled == before + 3
    assert counted(api, 'route="/v1/reservations",status="201"') == created + 1
    assert counted(api, 'code="insufficient_stock"') == short_before + 1


def counted(api: TestClient, labels: str) -> float:
    """A counter's value in /metrics (the registry is shared by every app in the process)."""
    for line in api.get("/metrics").text.splitlines():
        if (
            line.startswith(("flashstock_http_requests_total{", "flashstock_refusals_total{"))
            and labels in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.redis
def test_anything_else_goes_to_the_route(api: TestClient) -> None:
    before = fast(api).handled
    bad = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 1.5}]})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    text = api.post("/v1/reservations", content=b'{"items":[{"sku":"HOT","quantity":1}]}',
                    headers={"content-type": "text/plain"})  # fmt: skip
    assert text.status_code == 422
    assert fast(api).handled == before


@pytest.mark.redis
def test_api_keys_on_the_fast_path() -> None:
    need_redis()
    token, entry = new_key("shop", ["checkout"])
    ops_token, ops_entry = new_key("ops", ["ops"])
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
                 api_keys=f"{entry},{ops_entry}")  # fmt: skip
    with TestClient(create_app(s)) as api:
        try:
            ops = {"authorization": f"Bearer {ops_token}"}
            assert (
                api.put("/v1/stock/HOT/default", json={"on_hand": 5}, headers=ops).status_code
                == 200
            )
            body = {"items": [{"sku": "HOT", "quantity": 1}]}
            assert api.post("/v1/reservations", json=body).status_code == 401
            assert api.post("/v1/reservations", json=body, headers=ops).status_code == 403
            ok = api.post("/v1/reservations", json=body, headers={"x-api-key": token})
            assert ok.status_code == 201
            assert fast(api).handled == 1
        finally:
            state = api.app.state.flashstock  # type: ignore[attr-defined]
            api.portal.call(_drop, state.redis, s.key_prefix)


@pytest.mark.redis
def test_an_unexpected_error_is_a_500_counted_as_the_middleware_counts_it() -> None:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://")
    with TestClient(create_app(s), raise_server_exceptions=False) as api:
        errors = counted(api, 'route="/v1/reservations",status="500"')

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

        api.app.state.flashstock.engine.reserve = broken  # type: ignore[attr-defined]
        r = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 1}]})
        assert r.status_code == 500 and "boom" not in r.text
        assert counted(api, 'route="/v1/reservations",status="500"') == errors + 1
