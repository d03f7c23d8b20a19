"""The sold-out cache: a process answers "sold out" from memory only while that is certain.

A reserve Redis refused for want of stock lets the engine refuse the same
lines (or more) without a Redis call for at most ``soldout_cache_ms``, and
never past the moment the partition's first hold expires. Units that come
back through this engine clear it at once; through another process they are
seen within the bound. Requests carrying a reservation id never use it (a
replay must answer its first result), nor do carts under abuse limits.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aredis
from reference import redis_now_ms

from flashstock.engine import Engine
from flashstock.errors import InsufficientStock

pytestmark = pytest.mark.redis
BOUND_MS = 50


class Counting:
    """A client that counts script calls."""

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self.calls = 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.client, name)

    async def evalsha(self, *args):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await self.client.evalsha(*args)


@pytest.fixture
def two(real_aclient, settings):  # type: ignore[no-untyped-def]
    """Two engines on one store, as two API processes: ``a`` counts its calls."""
    s = settings.model_copy(update={"soldout_cache_ms": BOUND_MS})
    return Engine(Counting(real_aclient), s), Engine(real_aclient, s)


async def refused(engine: Engine, q: int = 1, **kw) -> bool:  # type: ignore[no-untyped-def]
    try:
        await engine.reserve([("A", q, None)], **kw)
    except InsufficientStock:
        return True
    return False


async def sold_out(a: Engine, b: Engine, units: int = 2) -> None:
    await b.set_on_hand("A", "default", units)
    await b.reserve([("A", units, None)], reservation_id="all", ttl_seconds=600)
    assert await refused(a)


async def test_a_sold_out_sku_is_refused_from_memory_with_the_same_body(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await sold_out(a, b)
    calls = a.redis.calls
    with pytest.raises(InsufficientStock) as first:
        await a.reserve([("A", 3, None)])
    assert a.redis.calls == calls  # no Redis call
    assert first.value.body() == {
        "error": "insufficient_stock", "message": "not enough stock: A: requested 3, available 0",
        "lines": [{"sku": "A", "location": None, "requested": 3, "available": 0}],
    }  # fmt: skip


async def test_what_the_script_answers_carries_no_cache_detail(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await b.set_on_hand("A", "default", 1)
    with pytest.raises(InsufficientStock) as exc:
        await a.reserve([("A", 2, None)])
    assert set(exc.value.body()) == {"error", "message", "lines"}


async def test_units_given_back_here_are_seen_at_once(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await sold_out(a, b)
    await a.release("all")
    assert not await refused(a)
    assert await refused(a, q=2)
    await a.adjust("A", "default", 1, "received")
    assert not await refused(a)


@pytest.mark.parametrize("how", ["release", "restock", "count"])
async def test_units_given_back_elsewhere_are_seen_within_the_bound(two, how) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await sold_out(a, b)
    assert await refused(a)
    t0 = time.monotonic()
    if how == "release":
        await b.release("all")
    elif how == "restock":
        await b.adjust("A", "default", 1, "received")
    else:
        await b.set_on_hand("A", "default", 3)
    while await refused(a):
        assert (time.monotonic() - t0) * 1000 <= BOUND_MS + 20, "refused past the bound"
        await asyncio.sleep(0.001)


async def test_never_refused_from_memory_once_a_hold_has_expired(real_aclient, settings) -> None:  # type: ignore[no-untyped-def]
    """Expiry needs no event: the cache lives no longer than the first hold of the partition."""
    s = settings.model_copy(update={"soldout_cache_ms": 60_000})
    a = Engine(Counting(real_aclient), s)
    await a.set_on_hand("A", "default", 1)
    await a.reserve([("A", 1, None)], reservation_id="short", ttl_seconds=1)
    assert await refused(a)
    await asyncio.sleep(max(0, (await _expiry(a, "short")) - await redis_now_ms(a) + 5) / 1000)
    assert not await refused(a)


async def _expiry(engine: Engine, rid: str) -> int:
    keys = engine.partitions[0]
    return int(await engine.redis.hget(keys.reservation(rid), "ex"))


async def test_a_reservation_id_always_goes_to_redis(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await b.set_on_hand("A", "default", 1)
    first = await a.reserve([("A", 1, None)], reservation_id="mine")
    assert await refused(a)
    again = await a.reserve([("A", 1, None)], reservation_id="mine")  # a replay, while sold out
    assert again.created is False and again.raw == first.raw


async def test_only_lines_known_short_are_refused_from_memory(two) -> None:  # type: ignore[no-untyped-def]
    a, b = two
    await b.set_on_hand("A", "default", 3)
    assert await refused(a, q=4)  # 3 available: 4 or more is refused …
    calls = a.redis.calls
    assert await refused(a, q=5)
    assert a.redis.calls == calls
    assert not await refused(a, q=3)  # … 3 is not
    assert a.redis.calls == calls + 1


async def test_abuse_limits_turn_it_off(real_aclient, settings) -> None:  # type: ignore[no-untyped-def]
    s = settings.model_copy(update={"soldout_cache_ms": BOUND_MS, "max_holds_per_customer": 5})
    a = Engine(Counting(real_aclient), s)
    await a.set_on_hand("A", "default", 0)
    assert await refused(a, customer_id="c")
    calls = a.redis.calls
    assert await refused(a, customer_id="c")
    assert a.redis.calls == calls + 1
    s2 = settings.model_copy(update={"soldout_cache_ms": BOUND_MS})
    c = Engine(Counting(real_aclient), s2)
    await c.set_item("A", {"rate_limit_customer": 100})
    assert await refused(c, customer_id="c")
    calls = c.redis.calls
    assert await refused(c, customer_id="c")
    assert c.redis.calls == calls + 1


async def test_restocks_under_a_storm_never_oversell(two) -> None:  # type: ignore[no-untyped-def]
    """Buyers hammer a sold-out sku while another process restocks it unit by unit."""
    a, b = two
    await sold_out(a, b, units=5)
    won = 0
    stop = asyncio.Event()

    async def buyer() -> None:
        nonlocal won
        while not stop.is_set():
            if not await refused(a):
                won += 1
            await asyncio.sleep(0)

    async def restocker() -> None:
        for _ in range(20):
            await b.adjust("A", "default", 1, "received")
            await asyncio.sleep(0.01)
        await asyncio.sleep(BOUND_MS / 1000 * 2)
        stop.set()

    await asyncio.gather(restocker(), *(buyer() for _ in range(50)))
    lv = (await b.get_stock("A")).data["total"]
    assert won == 20 and lv["reserved"] == 25 and lv["available"] == 0
