"""The reservation contract (SPEC §2, §3) through the engine, on real Redis and fakeredis."""

from __future__ import annotations

import asyncio

import pytest
from reference import (
    backdate,
    iso_ms,
    levels,
    line,
    new_events,
    redis_now_ms,
    snapshot,
    stock,
    stream_len,
    types,
)

from flashstock import errors as E

# -- reserve: all or nothing ------------------------------------------------------------------


async def test_reserve_holds_every_line(engine):
    await stock(engine, "A", default=5)
    await stock(engine, "B", default=3)
    r = await engine.reserve(
        [line("A", 2), line("B", 3)], reservation_id="r1", customer_id="c1", ttl_seconds=60
    )
    assert r.created
    assert r.data["status"] == "active" and r.data["customer_id"] == "c1"
    assert r.data["items"] == [
        {"sku": "A", "location": "default", "quantity": 2, "backordered": 0},
        {"sku": "B", "location": "default", "quantity": 3, "backordered": 0},
    ]
    now = await redis_now_ms(engine)
    assert 0 < iso_ms(r.data["expires_at"]) - now <= 60_000
    assert (await levels(engine, "A"))["default"]["available"] == 3
    assert (await levels(engine, "B"))["default"] == {
        "on_hand": 3,
        "reserved": 3,
        "committed": 0,
        "safety_stock": 0,
        "available": 0,
    }


async def test_refused_cart_changes_nothing(engine):
    await stock(engine, "A", default=5)
    await stock(engine, "B", default=1, east=4)
    await engine.reserve([line("A", 1)], reservation_id="keep")
    before = await snapshot(engine, ["A", "B"])
    with pytest.raises(E.InsufficientStock) as exc:
        await engine.reserve([line("A", 3), line("B", 2, "default"), line("A", 1)])
    assert exc.value.status == 409 and exc.value.code == "insufficient_stock"
    assert exc.value.details["lines"] == [
        {"sku": "B", "location": "default", "requested": 2, "available": 1}
    ]
    assert await snapshot(engine, ["A", "B"]) == before


async def test_refusal_names_every_short_line(engine):
    await stock(engine, "A", default=1)
    await stock(engine, "B", default=0)
    await stock(engine, "C", default=9)
    before = await snapshot(engine, ["A", "B", "C"])
    with pytest.raises(E.InsufficientStock) as exc:
        await engine.reserve([line("C", 1), line("A", 2), line("B", 1)])
    got = {(d["sku"], d["requested"], d["available"]) for d in exc.value.details["lines"]}
    assert got == {("A", 2, 1), ("B", 1, 0)}
    assert await snapshot(engine, ["A", "B", "C"]) == before


async def test_lines_of_one_sku_and_location_are_summed(engine):
    await stock(engine, "A", default=5)
    r = await engine.reserve([line("A", 2), line("A", 1, "default"), line("A", 1)])
    assert r.data["items"] == [{"sku": "A", "location": "default", "quantity": 4, "backordered": 0}]
    assert (await levels(engine, "A"))["default"]["reserved"] == 4


@pytest.mark.parametrize(
    "cart",
    [
        [line("A", 2), line("A", 2)],
        [line("A", 2, "default"), line("A", 2, "default")],
        [line("A", 2, "default"), line("A", 2)],
        [line("A", 2), line("B", 1), line("A", 2, "default")],
    ],
    ids=["allocated", "named", "named+allocated", "interleaved"],
)
async def test_one_sku_on_two_lines_is_checked_as_a_whole(engine, cart):
    # Each line alone fits in 3 units; together they do not.
    await stock(engine, "A", default=3)
    await stock(engine, "B", default=3)
    before = await snapshot(engine, ["A", "B"])
    with pytest.raises(E.InsufficientStock):
        await engine.reserve(cart)
    assert await snapshot(engine, ["A", "B"]) == before


async def test_one_sku_on_two_lines_across_locations_fits(engine):
    await stock(engine, "A", w1=2, w2=2)
    r = await engine.reserve([line("A", 2, "w1"), line("A", 2)])
    assert sorted((i["location"], i["quantity"]) for i in r.data["items"]) == [("w1", 2), ("w2", 2)]
    assert all(lv["available"] == 0 for lv in (await levels(engine, "A")).values())


# -- idempotency ------------------------------------------------------------------------------


async def test_replay_returns_the_same_body_and_changes_nothing(engine):
    await stock(engine, "A", default=5)
    first = await engine.reserve(
        [line("A", 2)], reservation_id="r1", customer_id="c", ttl_seconds=60
    )
    before = await snapshot(engine, ["A"])
    again = await engine.reserve(
        [line("A", 2)], reservation_id="r1", customer_id="c", ttl_seconds=60
    )
    assert first.created and not again.created
    assert again.data == first.data
    assert await snapshot(engine, ["A"]) == before


@pytest.mark.parametrize(
    "change",
    [
        {"items": [line("A", 3)]},
        {"items": [line("B", 2)]},
        {"items": [line("A", 2), line("B", 1)]},
        {"customer_id": "other"},
        {"customer_id": None},
        {"ttl_seconds": 61},
    ],
    ids=["quantity", "sku", "extra-line", "customer", "no-customer", "ttl"],
)
async def test_same_id_with_another_body_is_a_conflict(engine, change):
    await stock(engine, "A", default=5)
    await stock(engine, "B", default=5)
    body = {"items": [line("A", 2)], "customer_id": "c", "ttl_seconds": 60}
    await engine.reserve(reservation_id="r1", **body)
    before = await snapshot(engine, ["A", "B"])
    with pytest.raises(E.IdempotencyConflict) as exc:
        await engine.reserve(reservation_id="r1", **(body | change))
    assert exc.value.status == 409 and exc.value.code == "idempotency_conflict"
    assert await snapshot(engine, ["A", "B"]) == before


async def test_replay_of_an_expired_reservation_does_not_hold_again(engine):
    await stock(engine, "A", default=2)
    first = await engine.reserve([line("A", 2)], reservation_id="r1")
    await backdate(engine, "r1")
    again = await engine.reserve([line("A", 2)], reservation_id="r1")
    # The replay answers the first result (SPEC §2.4; the test moved expires_at) and holds nothing.
    assert not again.created and again.data["status"] == first.data["status"] == "active"
    assert again.data["items"] == first.data["items"]
    assert (await levels(engine, "A"))["default"]["reserved"] == 0


# -- expiry -----------------------------------------------------------------------------------


async def test_expiry_is_exact_without_a_sweeper(engine):
    """Real TTLs: a 1 s hold is gone the moment its TTL passes; an extended one is not."""
    await stock(engine, "A", default=4)
    short = await engine.reserve([line("A", 2)], reservation_id="short", ttl_seconds=1)
    await engine.reserve([line("A", 1)], reservation_id="long", ttl_seconds=1)
    await engine.extend("long", 60)
    ex = iso_ms(short.data["expires_at"])
    now = await redis_now_ms(engine)
    assert now < ex
    assert (await levels(engine, "A"))["default"]["reserved"] == 3  # still held before its TTL
    await asyncio.sleep((ex - now) / 1000 + 0.02)
    assert await redis_now_ms(engine) >= ex
    lv = (await levels(engine, "A"))["default"]
    assert lv["reserved"] == 1 and lv["available"] == 3
    assert (await engine.get_reservation("short")).data["status"] == "expired"
    assert (await engine.get_reservation("long")).data["status"] == "active"
    # The units are sellable at once; the extended hold was never touched.
    await engine.reserve([line("A", 3)], reservation_id="next")
    assert await engine.sweep(engine.partitions[0]) == 0


async def test_hold_counts_until_its_ttl_then_not(engine):
    await stock(engine, "A", default=3)
    await engine.reserve([line("A", 3)], reservation_id="r1", ttl_seconds=600)
    await backdate(engine, "r1", ms_ago=-5_000)  # 5 s left: still active
    with pytest.raises(E.InsufficientStock):
        await engine.reserve([line("A", 1)])
    assert await engine.sweep(engine.partitions[0]) == 0
    await backdate(engine, "r1", ms_ago=0)  # expires_at == now: expired (<= now)
    r = await engine.reserve([line("A", 3)], reservation_id="r2")
    assert r.created
    assert (await engine.get_reservation("r1")).data["status"] == "expired"
    assert (await levels(engine, "A"))["default"]["reserved"] == 3


@pytest.mark.parametrize("reaper", ["get_stock", "get_reservation", "reserve", "sweep", "release"])
async def test_each_reaper_writes_exactly_one_expired_event(engine, reaper):
    await stock(engine, "A", default=5)
    await stock(engine, "B", default=5)
    await engine.reserve([line("A", 2), line("B", 1)], reservation_id="r1", customer_id="c")
    await backdate(engine, "r1")
    n = await stream_len(engine)
    for _ in range(3):  # every path, several times: one event only
        await engine.get_stock("B")
        await {
            "get_stock": lambda: engine.get_stock("A"),
            "get_reservation": lambda: engine.get_reservation("r1"),
            "reserve": lambda: engine.reserve([line("A", 1)]),
            "sweep": lambda: engine.sweep(engine.partitions[0]),
            "release": lambda: engine.release("r1"),
        }[reaper]()
        await engine.sweep(engine.partitions[0])
        await engine.get_reservation("r1")
    expired = [e for e in await new_events(engine, n) if e["type"] == "expired"]
    assert len(expired) == 1
    ev = expired[0]
    assert ev["rid"] == "r1" and ev["cust"] == "c" and ev["status"] == "expired"
    assert sorted((ln["sku"], ln["d"]) for ln in ev["lines"]) == [
        ("A", [0, -2, 0, 0]),
        ("B", [0, -1, 0, 0]),
    ]
    assert (await levels(engine, "B"))["default"]["reserved"] == 0


# -- extend -----------------------------------------------------------------------------------


async def test_extend_sets_a_new_expiry_from_redis_time(engine):
    await stock(engine, "A", default=1)
    await engine.reserve([line("A", 1)], reservation_id="r1", ttl_seconds=5)
    n = await stream_len(engine)
    t0 = await redis_now_ms(engine)
    r = await engine.extend("r1", 120)
    t1 = await redis_now_ms(engine)
    assert t0 + 120_000 <= iso_ms(r.data["expires_at"]) <= t1 + 120_000
    assert r.data["status"] == "active"
    evs = await new_events(engine, n)
    assert types(evs) == ["extended"] and "lines" not in evs[0]
    assert evs[0]["exp"] == iso_ms(r.data["expires_at"])


async def test_extend_refusals(engine):
    await stock(engine, "A", default=5)
    for rid in ("gone", "done", "out"):
        await engine.reserve([line("A", 1)], reservation_id=rid)
    await backdate(engine, "gone")
    await engine.commit("done", "o1")
    await engine.release("out")
    with pytest.raises(E.ReservationExpired) as exc:
        await engine.extend("gone", 60)
    assert exc.value.status == 410
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.ReservationExpired):
        await engine.extend("gone", 60)
    for rid in ("done", "out"):
        with pytest.raises(E.NotActive) as exc:
            await engine.extend(rid, 60)
        assert exc.value.status == 409
    with pytest.raises(E.NotFound):
        await engine.extend("nope", 60)
    assert await snapshot(engine, ["A"]) == before
    assert (await engine.get_reservation("gone")).data["status"] == "expired"


# -- release ----------------------------------------------------------------------------------


async def test_release_gives_units_back_and_is_idempotent(engine):
    await stock(engine, "A", default=3)
    await engine.reserve([line("A", 3)], reservation_id="r1")
    n = await stream_len(engine)
    first = await engine.release("r1")
    assert first.created and first.data["status"] == "released"
    assert (await levels(engine, "A"))["default"]["available"] == 3
    before = await snapshot(engine, ["A"])
    again = await engine.release("r1")
    assert not again.created and again.data == first.data
    assert await snapshot(engine, ["A"]) == before
    evs = await new_events(engine, n)
    assert types(evs) == ["released"] and evs[0]["lines"][0]["d"] == [0, -3, 0, 0]


async def test_release_refusals(engine):
    await stock(engine, "A", default=3)
    await engine.reserve([line("A", 1)], reservation_id="r1")
    await engine.commit("r1", "o1")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.NotActive):
        await engine.release("r1")
    with pytest.raises(E.NotFound) as exc:
        await engine.release("nope")
    assert exc.value.status == 404
    assert await snapshot(engine, ["A"]) == before


async def test_release_of_an_expired_hold_reports_expired(engine):
    await stock(engine, "A", default=3)
    await engine.reserve([line("A", 2)], reservation_id="r1")
    await backdate(engine, "r1")
    r = await engine.release("r1")
    assert not r.created and r.data["status"] == "expired"
    assert (await levels(engine, "A"))["default"]["reserved"] == 0
