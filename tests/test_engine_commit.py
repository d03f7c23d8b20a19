"""Commit through the engine (SPEC §3), on real Redis and fakeredis: once, replayed, refused,
and a hold that expired before its buyer paid."""

from __future__ import annotations

import pytest
from reference import (
    backdate,
    check_conservation,
    levels,
    line,
    new_events,
    snapshot,
    stock,
    stream_len,
    types,
)

from flashstock import errors as E

# -- commit -----------------------------------------------------------------------------------


async def test_commit_moves_reserved_to_committed_once(engine):
    await stock(engine, "A", default=5)
    await stock(engine, "B", default=5)
    await engine.reserve([line("A", 2), line("B", 1)], reservation_id="r1", customer_id="c")
    n = await stream_len(engine)
    o = await engine.commit("r1", "o1")
    assert o.created
    assert o.data["order_id"] == "o1" and o.data["reservation_id"] == "r1"
    assert o.data["items"] == [
        {
            "sku": "A",
            "location": "default",
            "quantity": 2,
            "fulfilled": 0,
            "cancelled": 0,
            "returned": 0,
            "open": 2,
        },
        {
            "sku": "B",
            "location": "default",
            "quantity": 1,
            "fulfilled": 0,
            "cancelled": 0,
            "returned": 0,
            "open": 1,
        },
    ]
    assert (await engine.get_reservation("r1")).data["status"] == "committed"
    before = await snapshot(engine, ["A", "B"])
    again = await engine.commit("r1", "o1")
    assert not again.created and again.data == o.data
    assert (await engine.get_order("o1")).data == o.data
    assert await snapshot(engine, ["A", "B"]) == before
    lv = (await levels(engine, "A"))["default"]
    assert (lv["reserved"], lv["committed"], lv["available"]) == (0, 2, 3)
    evs = await new_events(engine, n)
    assert types(evs) == ["committed"] and "revived" not in evs[0]
    assert sorted(ln["d"] for ln in evs[0]["lines"]) == [[0, -2, 2, 0], [0, -1, 1, 0]]
    await check_conservation(engine, ["A", "B"], ["r1"], ["o1"])


async def test_commit_refusals(engine):
    await stock(engine, "A", default=5)
    for rid in ("r1", "r2", "r3"):
        await engine.reserve([line("A", 1)], reservation_id=rid)
    await engine.commit("r1", "o1")
    await engine.release("r3")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.AlreadyCommitted) as exc:
        await engine.commit("r1", "o2")  # another order for the same reservation
    assert exc.value.status == 409 and exc.value.details["order_id"] == "o1"
    with pytest.raises(E.IdempotencyConflict):
        await engine.commit("r2", "o1")  # the order id belongs to another reservation
    with pytest.raises(E.NotActive):
        await engine.commit("r3", "o3")
    with pytest.raises(E.NotFound):
        await engine.commit("nope", "o4")
    assert await snapshot(engine, ["A"]) == before
    with pytest.raises(E.NotFound):
        await engine.get_order("o2")
    assert (await engine.get_reservation("r2")).data["status"] == "active"


async def test_commit_of_an_expired_hold_re_reserves_when_stock_is_there(engine):
    await stock(engine, "A", default=5)
    await engine.reserve([line("A", 2)], reservation_id="r1", customer_id="c")
    await backdate(engine, "r1")
    n = await stream_len(engine)
    o = await engine.commit("r1", "o1")
    assert o.created and o.data["items"][0]["open"] == 2
    lv = (await levels(engine, "A"))["default"]
    assert (lv["reserved"], lv["committed"], lv["available"]) == (0, 2, 3)
    evs = await new_events(engine, n)
    assert types(evs) == ["expired", "committed"]
    assert evs[1]["revived"] is True and evs[1]["lines"][0]["d"] == [0, 0, 2, 0]
    await check_conservation(engine, ["A"], ["r1"], ["o1"])


async def test_late_commit_never_takes_units_another_buyer_holds(engine):
    await stock(engine, "A", default=3)
    await engine.reserve([line("A", 3)], reservation_id="late")
    await backdate(engine, "late")
    await engine.reserve([line("A", 2)], reservation_id="other")  # reaps "late", takes 2 of 3
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InsufficientStock) as exc:
        await engine.commit("late", "o1")
    assert exc.value.details["lines"] == [
        {"sku": "A", "location": "default", "requested": 3, "available": 1}
    ]
    assert await snapshot(engine, ["A"]) == before
    assert (await engine.get_reservation("late")).data["status"] == "expired"
    with pytest.raises(E.NotFound):
        await engine.get_order("o1")
    # The other buyer still commits.
    await engine.commit("other", "o2")
    await check_conservation(engine, ["A"], ["late", "other"], ["o2"])


async def test_late_commit_respects_the_customer_limit(engine):
    await engine.set_item("A", {"per_customer_limit": 2})
    await stock(engine, "A", default=10)
    await engine.reserve([line("A", 2)], reservation_id="r1", customer_id="c")
    await backdate(engine, "r1")
    await engine.reserve([line("A", 1)], reservation_id="r2", customer_id="c")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.LimitExceeded):
        await engine.commit("r1", "o1")
    assert await snapshot(engine, ["A"]) == before
