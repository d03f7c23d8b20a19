"""Abuse limits for drops, enforced in reserve.lua and extend.lua: each cap holds exactly under concurrency.

Each concurrency test fires many requests at once from one customer (or one API
key) on the real Redis and counts exactly the cap's number of successes, with
every other request refused with the limit's error and nothing else changed.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from reference import line
from support import REDIS_URL, need_redis, unique_prefix

from flashstock import errors as E
from flashstock.api import create_app
from flashstock.engine import Engine
from flashstock.settings import Settings

N = 60  # concurrent requests per test


def with_limits(engine: Engine, **limits: int) -> Engine:
    return Engine(engine.redis, engine.settings.model_copy(update=limits))


async def reserved(engine: Engine, sku: str) -> int:
    return int((await engine.get_stock(sku)).data["total"]["reserved"])


async def events(engine: Engine) -> int:
    return int(await engine.redis.xlen(engine.partitions[0].events))


async def burst(calls: list[Any]) -> tuple[list[Any], list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    return ok, [r for r in results if isinstance(r, BaseException)]


def only(errors: list[BaseException], kind: type[E.FlashstockError]) -> None:
    assert errors and all(isinstance(e, kind) for e in errors), {type(e) for e in errors}


# -- rate limits -----------------------------------------------------------------------------


@pytest.mark.redis
async def test_customer_rate_limit_holds_exactly_under_concurrency(real_engine: Engine) -> None:
    e = with_limits(real_engine, rate_limit_customer=5, rate_limit_window_seconds=60)
    await e.set_on_hand("A", "default", 1000)
    before = await events(e)
    ok, refused = await burst([e.reserve([line("A", 1)], customer_id="bot") for _ in range(N)])
    assert len(ok) == 5
    only(refused, E.RateLimited)
    assert all(1 <= r.details["retry_after"] <= 60 for r in refused)
    assert {r.details["scope"] for r in refused} == {"customer"}
    assert await reserved(e, "A") == 5
    assert await events(e) == before + 5  # a refused attempt writes no event
    # Another customer has a window of its own.
    assert (await e.reserve([line("A", 1)], customer_id="human")).created


@pytest.mark.redis
async def test_key_rate_limit_holds_exactly_under_concurrency(real_engine: Engine) -> None:
    e = with_limits(real_engine, rate_limit_key=7)
    await e.set_on_hand("A", "default", 1000)
    ok, refused = await burst(
        [e.reserve([line("A", 1)], customer_id=f"c{i}", key_id="shop") for i in range(N)]
    )
    assert len(ok) == 7
    only(refused, E.RateLimited)
    assert {r.details["scope"] for r in refused} == {"key"}
    assert await reserved(e, "A") == 7
    assert (await e.reserve([line("A", 1)], key_id="other-shop")).created


@pytest.mark.redis
async def test_item_rate_limit_counts_attempts_at_that_sku(real_engine: Engine) -> None:
    e = real_engine
    await e.set_on_hand("HOT", "default", 1000)
    await e.set_on_hand("MUG", "default", 1000)
    await e.set_item("HOT", {"rate_limit_customer": 3})
    ok, refused = await burst([e.reserve([line("HOT", 1)], customer_id="bot") for _ in range(N)])
    assert len(ok) == 3
    only(refused, E.RateLimited)
    assert all(r.details["sku"] == "HOT" for r in refused)
    # Other skus are not limited for that customer; an item limit needs a customer.
    assert (await e.reserve([line("MUG", 1)], customer_id="bot")).created
    with pytest.raises(E.CustomerRequired):
        await e.reserve([line("HOT", 1)])


async def test_rate_window_ends_by_redis_clock(engine: Engine) -> None:
    e = with_limits(engine, rate_limit_customer=2, rate_limit_window_seconds=1)
    await e.set_on_hand("A", "default", 100)
    for _ in range(2):
        await e.reserve([line("A", 1)], customer_id="c")
    with pytest.raises(E.RateLimited) as exc:
        await e.reserve([line("A", 1)], customer_id="c")
    assert exc.value.details["retry_after"] == 1
    assert exc.value.headers() == {"Retry-After": "1"}
    await asyncio.sleep(1.1)
    assert (await e.reserve([line("A", 1)], customer_id="c")).created


async def test_replay_is_not_an_attempt(engine: Engine) -> None:
    e = with_limits(engine, rate_limit_customer=1)
    await e.set_on_hand("A", "default", 10)
    first = await e.reserve([line("A", 1)], reservation_id="r1", customer_id="c")
    again = await e.reserve([line("A", 1)], reservation_id="r1", customer_id="c")
    assert again.raw == first.raw and not again.created


# -- active holds per customer --------------------------------------------------------------


@pytest.mark.redis
async def test_active_holds_cap_holds_exactly_under_concurrency(real_engine: Engine) -> None:
    e = with_limits(real_engine, max_holds_per_customer=3)
    await e.set_on_hand("A", "default", 1000)
    ok, refused = await burst([e.reserve([line("A", 1)], customer_id="bot") for _ in range(N)])
    assert len(ok) == 3
    only(refused, E.TooManyHolds)
    assert all(r.details == {"limit": 3, "active": 3} for r in refused)
    assert await reserved(e, "A") == 3
    # A released hold and a committed one no longer count; the cap is per customer.
    await e.release(ok[0].data["reservation_id"])
    await e.commit(ok[1].data["reservation_id"], "o-1")
    ok2, refused2 = await burst([e.reserve([line("A", 1)], customer_id="bot") for _ in range(N)])
    assert len(ok2) == 2 and len(refused2) == N - 2
    assert (await e.reserve([line("A", 1)], customer_id="someone-else")).created


async def test_expired_holds_do_not_count(engine: Engine) -> None:
    e = engine
    await e.set_on_hand("A", "default", 10)
    await e.set_item("A", {"max_holds_per_customer": 1})
    await e.reserve([line("A", 1)], customer_id="c", ttl_seconds=1)
    with pytest.raises(E.TooManyHolds):
        await e.reserve([line("A", 1)], customer_id="c")
    await asyncio.sleep(1.05)
    assert (await e.reserve([line("A", 1)], customer_id="c")).created
    with pytest.raises(E.CustomerRequired):
        await e.reserve([line("A", 1)])


# -- total hold lifetime ---------------------------------------------------------------------


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.redis
async def test_hold_lifetime_caps_every_extension(real_engine: Engine) -> None:
    e = with_limits(real_engine, max_hold_seconds=20)
    await e.set_on_hand("A", "default", 10)
    with pytest.raises(E.HoldLifetimeExceeded):
        await e.reserve([line("A", 1)], customer_id="c", ttl_seconds=21)
    t_before = int(time.time() * 1000)
    r = (await e.reserve([line("A", 1)], reservation_id="r", customer_id="c", ttl_seconds=5)).data
    created = ms(r["expires_at"]) - 5000
    assert abs(created - t_before) < 2000
    # Many concurrent extensions, some asking past the cap: none may end after created + 20 s.
    ttls = [5 + (i % 30) for i in range(N)]
    results = await asyncio.gather(*(e.extend("r", t) for t in ttls), return_exceptions=True)
    cap = created + 20_000
    for t, res in zip(ttls, results, strict=True):
        if t < 20:  # fits: less than a second has passed since the hold was made
            assert not isinstance(res, BaseException), (t, res)
            assert ms(res.data["expires_at"]) <= cap
        elif t > 20:
            assert isinstance(res, E.HoldLifetimeExceeded), (t, res)
            assert ms(res.details["max_expires_at"]) == cap
    stored = int(await e.redis.hget(e.partitions[0].reservation("r"), "ex"))
    assert stored <= cap


async def test_item_hold_lifetime_is_stored_with_the_hold(engine: Engine) -> None:
    e = engine
    await e.set_on_hand("A", "default", 10)
    await e.set_item("A", {"max_hold_seconds": 60})
    await e.reserve([line("A", 1)], reservation_id="r", ttl_seconds=30)
    assert (await e.extend("r", 50)).created
    with pytest.raises(E.HoldLifetimeExceeded) as exc:
        await e.extend("r", 61)
    assert exc.value.status == 409 and exc.value.details["max_hold_seconds"] == 60
    # Raising the item's cap later does not lengthen a hold already made.
    await e.set_item("A", {"max_hold_seconds": 600})
    with pytest.raises(E.HoldLifetimeExceeded):
        await e.extend("r", 61)


# -- share of stock in carts -----------------------------------------------------------------


@pytest.mark.redis
async def test_cart_share_holds_exactly_under_concurrency(real_engine: Engine) -> None:
    e = with_limits(real_engine, max_cart_share=30)
    await e.set_on_hand("A", "east", 60)
    await e.set_on_hand("A", "west", 40)
    ok, refused = await burst([e.reserve([line("A", 1)], customer_id="bot") for _ in range(N * 2)])
    assert len(ok) == 30
    only(refused, E.CartShareExceeded)
    assert await reserved(e, "A") == 30
    # Committed units leave the carts, so room opens up again.
    await e.commit(ok[0].data["reservation_id"], "o-1")
    assert (await e.reserve([line("A", 1)], customer_id="bot")).created
    with pytest.raises(E.CartShareExceeded) as exc:
        await e.reserve([line("A", 1)], customer_id="bot")
    assert exc.value.details == {"sku": "A", "cap": 30, "reserved": 30, "requested": 1}


async def test_item_cart_share_overrides_the_global_one(engine: Engine) -> None:
    e = with_limits(engine, max_cart_share=10)
    await e.set_on_hand("A", "default", 10)
    await e.set_item("A", {"max_cart_share": 50})
    assert (await e.reserve([line("A", 5)])).created
    with pytest.raises(E.CartShareExceeded):
        await e.reserve([line("A", 1)])


# -- refusals change nothing -----------------------------------------------------------------


async def test_limit_refusals_change_no_level_and_write_no_event(engine: Engine) -> None:
    e = with_limits(engine, max_holds_per_customer=1, max_cart_share=50, max_hold_seconds=100)
    await e.set_on_hand("A", "default", 10)
    await e.reserve([line("A", 2)], customer_id="c", ttl_seconds=60)
    before = ((await e.get_stock("A")).raw, await events(e))
    for call, kind in (
        (e.reserve([line("A", 1)], customer_id="c", ttl_seconds=60), E.TooManyHolds),
        (e.reserve([line("A", 4)], customer_id="d", ttl_seconds=60), E.CartShareExceeded),
        (e.reserve([line("A", 1)], customer_id="d", ttl_seconds=101), E.HoldLifetimeExceeded),
    ):
        with pytest.raises(kind):
            await call
    assert ((await e.get_stock("A")).raw, await events(e)) == before


def test_policy_limits_are_validated() -> None:
    from flashstock.engine import check_policy

    for field, bad in (("max_cart_share", 101), ("max_cart_share", 0), ("rate_limit_customer", 0),
                       ("max_hold_seconds", 1.5), ("max_holds_per_customer", True)):  # fmt: skip
        with pytest.raises(E.InvalidRequest):
            check_policy({field: bad}, 1_000_000)
    check_policy({"max_cart_share": 100, "rate_limit_customer": 1}, 1_000_000)


# -- over HTTP: 429 with Retry-After ---------------------------------------------------------


@pytest.mark.redis
def test_http_429_with_retry_after_and_item_limits_in_policy() -> None:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
                 rate_limit_customer=2, rate_limit_window_seconds=30)  # fmt: skip
    with TestClient(create_app(s)) as api:
        api.put("/v1/stock/A/default", json={"on_hand": 10})
        item = api.put("/v1/items/A", json={"max_holds_per_customer": 5, "max_cart_share": 80})
        assert item.status_code == 200, item.text
        assert item.json()["max_cart_share"] == 80
        assert api.get("/v1/stock/A").json()["policy"]["max_holds_per_customer"] == 5
        body = {"customer_id": "c", "items": [{"sku": "A", "quantity": 1}]}
        codes = [api.post("/v1/reservations", json=body).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        r = api.post("/v1/reservations", json=body)
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 30
        assert api.put("/v1/items/A", json={"max_cart_share": 101}).status_code == 422
        redis = api.app.state.flashstock.redis  # type: ignore[attr-defined]
        api.portal.call(_drop, redis, s.key_prefix)


async def _drop(redis: Any, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)


# -- every class of bad input: its status, and nothing changed -------------------------------

LINE = {"sku": "A", "quantity": 1}
BIG = "x" * 70_000


def _nested(depth: int) -> bytes:
    return b'{"items": ' + b"[" * depth + b"]" * depth + b"}"


# (class, method, path, request kwargs, status, error code). docs/security.md lists the same.
BAD_INPUTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("body over 64 KiB", "POST", "/v1/reservations", {"json": {"items": [LINE], "customer_id": BIG}}, 413, "payload_too_large"),
    ("body over 64 KiB, chunked", "POST", "/v1/reservations", {"content": iter([b'{"items": [', b" " * 70_000, b"]}"]), "headers": {"content-type": "application/json"}}, 413, "payload_too_large"),
    ("bad Content-Length", "POST", "/v1/reservations", {"content": b"{}", "headers": {"content-type": "application/json", "content-length": "-5"}}, 400, "invalid_request"),
    ("malformed JSON", "POST", "/v1/reservations", {"content": b'{"items": [', "headers": {"content-type": "application/json"}}, 422, "invalid_json"),
    ("JSON nested 20,000 deep", "POST", "/v1/reservations", {"content": _nested(20_000), "headers": {"content-type": "application/json"}}, 422, "invalid_json"),
    ("not JSON (text/plain)", "POST", "/v1/reservations", {"content": b"items=A", "headers": {"content-type": "text/plain"}}, 422, "invalid_request"),
    ("unknown JSON field", "POST", "/v1/reservations", {"json": {"items": [LINE], "coupon": "FREE"}}, 422, "invalid_request"),
    ("unknown field in a line", "POST", "/v1/reservations", {"json": {"items": [{**LINE, "price": 0}]}}, 422, "invalid_request"),
    ("101 lines", "POST", "/v1/reservations", {"json": {"items": [LINE] * 101}}, 422, "invalid_request"),
    ("no lines", "POST", "/v1/reservations", {"json": {"items": []}}, 422, "invalid_request"),
    ("quantity 1.5", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A", "quantity": 1.5}]}}, 422, "invalid_request"),
    ("quantity \"3\"", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A", "quantity": "3"}]}}, 422, "invalid_request"),
    ("quantity true", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A", "quantity": True}]}}, 422, "invalid_request"),
    ("quantity 0", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A", "quantity": 0}]}}, 422, "invalid_request"),
    ("quantity 10^30", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A", "quantity": 10**30}]}}, 422, "invalid_request"),
    ("quantity NaN", "POST", "/v1/reservations", {"content": b'{"items": [{"sku": "A", "quantity": NaN}]}', "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
    ("sku empty", "POST", "/v1/reservations", {"json": {"items": [{"sku": "", "quantity": 1}]}}, 422, "invalid_request"),
    ("sku 129 characters", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A" * 129, "quantity": 1}]}}, 422, "invalid_request"),
    ("sku with leading space", "POST", "/v1/reservations", {"json": {"items": [{"sku": " A", "quantity": 1}]}}, 422, "invalid_request"),
    ("sku with a control character", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A\u0007", "quantity": 1}]}}, 422, "invalid_request"),
    ("sku with U+2028", "POST", "/v1/reservations", {"json": {"items": [{"sku": "A\u2028", "quantity": 1}]}}, 422, "invalid_request"),
    ("customer_id with NUL", "POST", "/v1/reservations", {"json": {"items": [LINE], "customer_id": "c\u0000"}}, 422, "invalid_request"),
    ("ttl_seconds 0", "POST", "/v1/reservations", {"json": {"items": [LINE], "ttl_seconds": 0}}, 422, "invalid_request"),
    ("ttl_seconds over a week", "POST", "/v1/reservations", {"json": {"items": [LINE], "ttl_seconds": 604_801}}, 422, "invalid_request"),
    ("id in path 129 characters", "GET", "/v1/reservations/" + "r" * 129, {}, 422, "invalid_request"),
    ("id in path with %00", "GET", "/v1/reservations/r%00", {}, 422, "invalid_request"),
    ("extend ttl false", "POST", "/v1/reservations/r1/extend", {"json": {"ttl_seconds": False}}, 422, "invalid_request"),
    ("count -1", "PUT", "/v1/stock/A/default", {"json": {"on_hand": -1}}, 422, "invalid_request"),
    ("count 2.0", "PUT", "/v1/stock/A/default", {"json": {"on_hand": 2.0}}, 422, "invalid_request"),
    ("adjustment delta 0", "POST", "/v1/stock/A/default/adjustments", {"json": {"delta": 0, "reason": "received"}}, 422, "invalid_request"),
    ("adjustment reason 65 characters", "POST", "/v1/stock/A/default/adjustments", {"json": {"delta": 1, "reason": "r" * 65}}, 422, "invalid_request"),
    ("adjustment below zero on hand", "POST", "/v1/stock/A/default/adjustments", {"json": {"delta": -11, "reason": "damaged"}}, 409, "negative_on_hand"),
    ("policy unknown field", "PUT", "/v1/items/A", {"json": {"discount": 5}}, 422, "invalid_request"),
    ("policy backorder \"sometimes\"", "PUT", "/v1/items/A", {"json": {"backorder": "sometimes"}}, 422, "invalid_request"),
    ("policy max_cart_share 101", "PUT", "/v1/items/A", {"json": {"max_cart_share": 101}}, 422, "invalid_request"),
    ("policy locations repeated", "PUT", "/v1/items/A", {"json": {"locations": ["x", "x"]}}, 422, "invalid_request"),
    ("fulfil more than open", "POST", "/v1/orders/o1/fulfill", {"json": {"items": [{"sku": "A", "quantity": 9}]}}, 409, "exceeds_open"),
    ("unknown sku", "POST", "/v1/reservations", {"json": {"items": [{"sku": "NOPE", "quantity": 1}]}}, 404, "unknown_sku"),
    ("unknown route", "GET", "/v1/nowhere", {}, 404, "not_found"),
    ("wrong method", "PATCH", "/v1/reservations", {"json": {}}, 405, "method_not_allowed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_api() -> Any:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://")
    with TestClient(create_app(s)) as api:
        api.put("/v1/stock/A/default", json={"on_hand": 10})
        rid = api.post(
            "/v1/reservations",
            json={"reservation_id": "r1", "items": [{"sku": "A", "quantity": 2}]},
        )
        assert rid.status_code == 201
        api.post("/v1/reservations/r1/commit", json={"order_id": "o1"})
        yield api
        redis = api.app.state.flashstock.redis  # type: ignore[attr-defined]
        api.portal.call(_drop, redis, s.key_prefix)


def _state(api: TestClient) -> tuple[Any, ...]:
    st = api.app.state.flashstock  # type: ignore[attr-defined]
    ev = api.portal.call(st.redis.xlen, st.engine.partitions[0].events)
    return ev, api.get("/v1/stock/A").json(), api.get("/v1/orders/o1").json()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("what", "method", "path", "kw", "status", "code"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_its_status_and_changes_nothing(
    bad_api: TestClient,
    what: str,
    method: str,
    path: str,
    kw: dict[str, Any],
    status: int,
    code: str,
) -> None:
    before = _state(bad_api)
    r = bad_api.request(method, path, **kw)
    assert r.status_code == status, (what, r.text[:300])
    assert r.json()["error"] == code and r.json()["message"]
    assert _state(bad_api) == before


@pytest.mark.redis
def test_key_schema_characters_stay_in_their_own_keys_and_slot(bad_api: TestClient) -> None:
    """``{``, ``}``, ``:`` and ``%`` in skus and locations: separate levels, one slot."""
    from redis.crc import key_slot

    from flashstock.keys import Keys

    # ("%" too, in tests/test_scripts_headers.py: the test client decodes a path twice.)
    names = ["A:default", "{p0}", "}{", "a:b}{p1}", "A:"]
    for i, sku in enumerate(names):
        r = bad_api.put(
            f"/v1/stock/{quote(sku, safe='')}/{quote('x:y', safe='')}", json={"on_hand": i + 1}
        )
        assert r.status_code == 200, r.text
    for i, sku in enumerate(names):
        assert bad_api.get(f"/v1/stock/{quote(sku, safe='')}").json()["total"]["on_hand"] == i + 1
    assert bad_api.get("/v1/stock/A").json()["total"]["on_hand"] == 10  # untouched
    st = bad_api.app.state.flashstock  # type: ignore[attr-defined]
    k = Keys(st.settings.key_prefix, 0)
    assert {key_slot(k.level(s, "x:y").encode()) for s in names} == {key_slot(k.events.encode())}
