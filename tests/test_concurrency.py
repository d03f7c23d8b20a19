"""Real concurrency on a real Redis: many more buyers than units, replays racing, reapers racing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
import redis.asyncio as aredis
from reference import (
    backdate,
    check_conservation,
    events,
    iso_ms,
    levels,
    line,
    redis_now_ms,
    stream_len,
    types,
)

from flashstock import errors as E
from flashstock.engine import Engine

pytestmark = pytest.mark.redis


@pytest.fixture
async def hot(real_engine):
    """The test's engine on a pool that queues callers instead of refusing past its size."""
    pool = aredis.BlockingConnectionPool(
        max_connections=200, timeout=30, **real_engine.redis.connection_pool.connection_kwargs
    )
    client = aredis.Redis(connection_pool=pool)
    yield Engine(client, real_engine.settings)
    await client.aclose()
    await pool.disconnect()


async def attempt(call):
    """The call's reply, or the refusal it raised."""
    try:
        return await call
    except E.FlashstockError as exc:
        return exc


def event_count(evs, kind):
    return sum(1 for e in evs if e["type"] == kind)


async def test_many_buyers_one_hot_sku_never_oversell(hot):
    await hot.set_on_hand("HOT", "default", 100)
    rnd = random.Random(7)
    wants = [rnd.randint(1, 3) for _ in range(500)]
    n = await stream_len(hot)
    results = await asyncio.gather(*(attempt(hot.reserve([line("HOT", q)])) for q in wants))
    won = [q for q, r in zip(wants, results, strict=True) if not isinstance(r, Exception)]
    lost = [q for q, r in zip(wants, results, strict=True) if isinstance(r, Exception)]
    assert all(isinstance(r, E.InsufficientStock) for r in results if isinstance(r, Exception))
    lv = (await levels(hot, "HOT"))["default"]
    assert lv["reserved"] == sum(won) <= 100
    assert lv["available"] == 100 - sum(won) >= 0
    # Availability only fell: every refused buyer wanted more than what is left at the end.
    assert all(q > lv["available"] for q in lost)
    assert types(await events(hot))[n:] == ["reserved"] * len(won)
    # Single-unit buyers take the rest: exactly the stock is held, never more.
    left = lv["available"]
    extra = await asyncio.gather(*(attempt(hot.reserve([line("HOT", 1)])) for _ in range(50)))
    assert sum(not isinstance(r, Exception) for r in extra) == left
    lv = (await levels(hot, "HOT"))["default"]
    assert (lv["reserved"], lv["available"]) == (100, 0)
    assert event_count(await events(hot), "reserved") == len(won) + left


async def test_multi_line_carts_are_all_or_nothing_under_contention(hot):
    await hot.set_on_hand("A", "default", 60)
    await hot.set_on_hand("B", "default", 40)
    rnd = random.Random(11)
    carts = []
    for i in range(300):
        a, b = rnd.randint(1, 2), rnd.randint(1, 2)
        lines = [line("A", a), line("B", b)] if i % 2 else [line("B", b), line("A", a)]
        carts.append((f"cart{i}", a, b, lines))
    results = await asyncio.gather(
        *(attempt(hot.reserve(lines, reservation_id=rid)) for rid, _, _, lines in carts)
    )
    won = [(rid, a, b) for (rid, a, b, _), r in zip(carts, results, strict=True)
           if not isinstance(r, Exception)]  # fmt: skip
    for (rid, _, _, _), r in zip(carts, results, strict=True):
        if isinstance(r, Exception):
            assert isinstance(r, E.InsufficientStock)
            with pytest.raises(E.NotFound):  # a refused cart left nothing behind
                await hot.get_reservation(rid)
    a_lv, b_lv = (await levels(hot, "A"))["default"], (await levels(hot, "B"))["default"]
    assert a_lv["reserved"] == sum(a for _, a, _ in won) <= 60
    assert b_lv["reserved"] == sum(b for _, _, b in won) <= 40
    assert b_lv["available"] <= 1  # B is the scarce one: it sold out (carts need 1–2 of it)
    evs = await events(hot)
    assert event_count(evs, "reserved") == len(won)
    assert all(len(e["lines"]) == 2 for e in evs if e["type"] == "reserved")
    await check_conservation(hot, ["A", "B"], [rid for rid, _, _ in won], [])


async def test_concurrent_replays_apply_once(hot):
    await hot.set_on_hand("A", "default", 100)
    await hot.reserve([line("A", 5)], reservation_id="r1")
    await hot.reserve([line("A", 4)], reservation_id="r2")

    async def storm(make, n=50):
        before = await stream_len(hot)
        replies = await asyncio.gather(*(make() for _ in range(n)))
        assert sum(r.created for r in replies) == 1
        assert len({r.raw for r in replies if not r.created}) == 1
        return await hot_events_since(before)

    async def hot_events_since(n):
        return (await events(hot))[n:]

    evs = await storm(lambda: hot.reserve([line("A", 3)], reservation_id="r3"))
    assert types(evs) == ["reserved"]
    evs = await storm(lambda: hot.commit("r1", "o1"))
    assert types(evs) == ["committed"]
    evs = await storm(lambda: hot.release("r2"))
    assert types(evs) == ["released"]
    evs = await storm(lambda: hot.fulfill("o1", [line("A", 3)], fulfillment_id="f1"))
    assert types(evs) == ["fulfilled"]
    evs = await storm(lambda: hot.return_items("o1", [line("A", 2)], restock=True, return_id="t1"))
    assert types(evs) == ["returned"]
    evs = await storm(lambda: hot.adjust("A", "default", 7, "received", adjustment_id="a1"))
    assert types(evs) == ["adjusted"]
    evs = await storm(lambda: hot.set_on_hand("A", "default", 50, adjustment_id="c1"))
    assert types(evs) == ["counted"]
    lv = (await levels(hot, "A"))["default"]
    assert (lv["on_hand"], lv["reserved"], lv["committed"]) == (50, 3, 2)
    o = (await hot.get_order("o1")).data["items"][0]
    assert (o["fulfilled"], o["returned"], o["open"]) == (3, 2, 2)


async def test_concurrent_cancels_never_give_back_more_than_open(hot):
    await hot.set_on_hand("A", "default", 20)
    await hot.reserve([line("A", 10)], reservation_id="r1")
    await hot.commit("r1", "o1")
    await hot.fulfill("o1", [line("A", 4)])
    results = await asyncio.gather(
        *(attempt(hot.cancel("o1", [line("A", 1)])) for _ in range(30)),
        *(attempt(hot.cancel("o1")) for _ in range(5)),
        *(attempt(hot.return_items("o1", [line("A", 1)], restock=True)) for _ in range(10)),
    )
    assert all(isinstance(r, E.ExceedsOpen | E.ExceedsReturnable) for r in results
               if isinstance(r, Exception))  # fmt: skip
    o = (await hot.get_order("o1")).data["items"][0]
    assert (o["fulfilled"], o["cancelled"], o["returned"], o["open"]) == (4, 6, 4, 0)
    lv = (await levels(hot, "A"))["default"]
    assert (lv["on_hand"], lv["committed"], lv["available"]) == (20, 0, 20)


async def test_one_expired_event_per_hold_whatever_reaps_it(hot):
    await hot.set_on_hand("A", "default", 200)
    await hot.set_on_hand("B", "default", 200)
    rids = [f"h{i}" for i in range(60)]
    for i, rid in enumerate(rids):
        lines = [line("A", 1), line("B", 1)] if i % 3 == 0 else [line("A" if i % 2 else "B", 2)]
        await hot.reserve(lines, reservation_id=rid, customer_id=f"c{i % 4}")
    for rid in rids:
        await backdate(hot, rid)
    n = await stream_len(hot)
    part = hot.partitions[0]
    reapers = []
    for i in range(40):
        reapers += [
            hot.sweep(part, limit=7),
            hot.get_stock("A"),
            hot.get_stock("B"),
            hot.get_reservation(rids[i]),
            hot.reserve([line("A" if i % 2 else "B", 1)], reservation_id=f"n{i}"),
            hot.release(rids[-1 - i]),
        ]
    random.Random(3).shuffle(reapers)
    await asyncio.gather(*reapers)
    evs = (await events(hot))[n:]
    assert Counter(e["rid"] for e in evs if e["type"] == "expired") == Counter(rids)
    assert {(await hot.get_reservation(r)).data["status"] for r in rids} == {"expired"}
    await check_conservation(hot, ["A", "B"], rids + [f"n{i}" for i in range(40)], [])


async def test_holds_expiring_while_reapers_race(hot):
    """Real TTLs: reapers run across the moment 40 one-second holds expire."""
    await hot.set_on_hand("A", "default", 40)
    replies = [
        await hot.reserve([line("A", 1)], reservation_id=f"t{i}", ttl_seconds=1) for i in range(40)
    ]
    ex = max(iso_ms(r.data["expires_at"]) for r in replies)
    n = await stream_len(hot)
    await asyncio.sleep(max(0, ex - await redis_now_ms(hot) - 150) / 1000)
    won = 0
    while await redis_now_ms(hot) <= ex + 100:
        results = await asyncio.gather(
            hot.sweep(hot.partitions[0], limit=3),
            hot.get_stock("A"),
            attempt(hot.reserve([line("A", 1)], ttl_seconds=60)),
            attempt(hot.reserve([line("A", 2)], ttl_seconds=60)),
        )
        won += sum(1 if r.data["items"][0]["quantity"] == 1 else 2 for r in results[2:]
                   if not isinstance(r, Exception))  # fmt: skip
    evs = (await events(hot))[n:]
    expired = Counter(e["rid"] for e in evs if e["type"] == "expired")
    assert expired == Counter(f"t{i}" for i in range(40))
    lv = (await levels(hot, "A"))["default"]
    assert lv["reserved"] == won <= 40 and lv["available"] == 40 - won >= 0


async def test_late_commits_race_new_buyers_without_overselling(hot):
    await hot.set_on_hand("A", "default", 50)
    for i in range(50):
        await hot.reserve([line("A", 1)], reservation_id=f"late{i}")
        await backdate(hot, f"late{i}")
    results = await asyncio.gather(
        *(attempt(hot.commit(f"late{i}", f"o{i}")) for i in range(50)),
        *(attempt(hot.reserve([line("A", 1)], reservation_id=f"new{i}")) for i in range(50)),
    )
    ok = [r for r in results if not isinstance(r, Exception)]
    assert all(isinstance(r, E.InsufficientStock) for r in results if isinstance(r, Exception))
    assert len(ok) == 50
    lv = (await levels(hot, "A"))["default"]
    assert lv["reserved"] + lv["committed"] == 50 and lv["available"] == 0
    evs = await events(hot)
    assert event_count(evs, "expired") == 50
    assert event_count(evs, "committed") == lv["committed"]
    assert all(e.get("revived") for e in evs if e["type"] == "committed")


async def test_per_customer_limit_holds_under_concurrency(hot):
    await hot.set_item("A", {"per_customer_limit": 3})
    await hot.set_on_hand("A", "default", 100)
    results = await asyncio.gather(
        *(attempt(hot.reserve([line("A", 1)], customer_id="greedy")) for _ in range(50)),
        *(attempt(hot.reserve([line("A", 2)], customer_id="other")) for _ in range(10)),
    )
    greedy, other = results[:50], results[50:]
    assert sum(not isinstance(r, Exception) for r in greedy) == 3
    assert sum(not isinstance(r, Exception) for r in other) == 1
    assert all(isinstance(r, E.LimitExceeded) for r in results if isinstance(r, Exception))
    lv = (await levels(hot, "A"))["default"]
    assert lv["reserved"] == 5
    assert event_count(await events(hot), "reserved") == 4


async def test_a_reservation_id_is_created_once_across_partitions_under_races(hot):
    from flashstock.keys import partition_of

    e = Engine(hot.redis, hot.settings.model_copy(update={"partitions": 4}))
    skus = {}
    for i in range(1000):
        skus.setdefault(partition_of(f"S{i}", 4), f"S{i}")
    a, b = list(skus.values())[:2]
    for sku in (a, b):
        await e.set_on_hand(sku, "default", 100)
    created = []
    for trial in range(10):
        results = await asyncio.gather(
            *(attempt(e.reserve([line(a if i % 2 else b, 1)], reservation_id=f"X{trial}"))
              for i in range(20))
        )  # fmt: skip
        assert all(
            isinstance(r, E.IdempotencyConflict) for r in results if isinstance(r, Exception)
        )
        created.append(sum(1 for r in results if not isinstance(r, Exception) and r.created))
    assert created == [1] * 10
    total = 0
    for sku in (a, b):
        total += sum(lv["reserved"] for lv in (await levels(e, sku)).values())
    assert total == 10
