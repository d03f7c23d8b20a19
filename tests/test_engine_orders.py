"""Orders after commit: fulfil, cancel, return, and the per-customer limit, on both backends."""

from __future__ import annotations

import pytest
from reference import (
    backdate,
    check_conservation,
    levels,
    line,
    new_events,
    snapshot,
    stream_len,
    types,
)

from flashstock import errors as E


async def order(engine, oid, *lines, customer=None, on_hand=10):
    """Stock every sku of ``lines`` and commit them as order ``oid``."""
    for ln in lines:
        await engine.set_on_hand(ln["sku"], ln["location"] or "default", on_hand)
    await engine.reserve(list(lines), reservation_id="r-" + oid, customer_id=customer)
    return (await engine.commit("r-" + oid, oid)).data


def items(o):
    return {
        (i["sku"], i["location"]): (i["fulfilled"], i["cancelled"], i["returned"], i["open"])
        for i in o["items"]
    }


# -- fulfil -----------------------------------------------------------------------------------


async def test_fulfil_everything_open(engine):
    await order(engine, "o1", line("A", 3), line("B", 2))
    n = await stream_len(engine)
    o = (await engine.fulfill("o1")).data
    assert o["status"] == "fulfilled"
    assert items(o) == {("A", "default"): (3, 0, 0, 0), ("B", "default"): (2, 0, 0, 0)}
    assert (await levels(engine, "A"))["default"] == {
        "on_hand": 7,
        "reserved": 0,
        "committed": 0,
        "safety_stock": 0,
        "available": 7,
    }
    evs = await new_events(engine, n)
    assert types(evs) == ["fulfilled"]
    assert sorted(ln["d"] for ln in evs[0]["lines"]) == [[-3, 0, -3, 0], [-2, 0, -2, 0]]
    assert evs[0]["oid"] == "o1" and evs[0]["order"]["status"] == "fulfilled"


async def test_partial_fulfilment_with_an_id_applies_once(engine):
    await order(engine, "o1", line("A", 5))
    first = await engine.fulfill("o1", [line("A", 2)], fulfillment_id="f1")
    assert first.created and first.data["status"] == "partially_fulfilled"
    assert items(first.data) == {("A", "default"): (2, 0, 0, 3)}
    before = await snapshot(engine, ["A"])
    again = await engine.fulfill("o1", [line("A", 2)], fulfillment_id="f1")
    assert not again.created and again.data == first.data
    assert await snapshot(engine, ["A"]) == before
    lv = (await levels(engine, "A"))["default"]
    assert (lv["on_hand"], lv["committed"]) == (8, 3)


@pytest.mark.parametrize(
    "other",
    [
        {"order_id": "o1", "items": [line("A", 1)]},
        {"order_id": "o1", "items": None},
        {"order_id": "o2", "items": [line("A", 2)]},
    ],
    ids=["quantity", "all-open", "other-order"],
)
async def test_fulfilment_id_with_another_body_is_a_conflict(engine, other):
    await order(engine, "o1", line("A", 5))
    await order(engine, "o2", line("A", 5))
    await engine.fulfill("o1", [line("A", 2)], fulfillment_id="f1")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.IdempotencyConflict):
        await engine.fulfill(other["order_id"], other["items"], fulfillment_id="f1")
    assert await snapshot(engine, ["A"]) == before


async def test_fulfil_refusals_change_nothing(engine):
    await order(engine, "o1", line("A", 3, "w1"))
    await engine.set_on_hand("A", "w2", 10)
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.ExceedsOpen) as exc:
        await engine.fulfill("o1", [line("A", 4)])
    assert exc.value.status == 409 and exc.value.details["open"] == 3
    with pytest.raises(E.LocationMismatch):
        await engine.fulfill("o1", [line("A", 1, "w2")])
    with pytest.raises(E.ExceedsOpen) as exc:
        await engine.fulfill("o1", [line("Z", 1)])
    assert exc.value.message == "order has no line for 'Z'" and exc.value.details["open"] == 0
    with pytest.raises(E.ExceedsReturnable) as exc:
        await engine.return_items("o1", [line("Z", 1)], restock=True)
    assert exc.value.message == "order has no line for 'Z'"
    with pytest.raises(E.NotFound):
        await engine.fulfill("nope")
    assert await snapshot(engine, ["A"]) == before


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_after_partial_fulfilment_gives_back_only_the_open_units(engine):
    await order(engine, "o1", line("A", 5), customer="c")
    await engine.fulfill("o1", [line("A", 2)])
    n = await stream_len(engine)
    o = (await engine.cancel("o1")).data
    assert items(o) == {("A", "default"): (2, 3, 0, 0)}
    assert o["status"] == "fulfilled"  # something shipped, nothing left open
    lv = (await levels(engine, "A"))["default"]
    assert (lv["on_hand"], lv["committed"], lv["available"]) == (8, 0, 8)
    evs = await new_events(engine, n)
    assert types(evs) == ["cancelled"] and evs[0]["lines"][0]["d"] == [0, 0, -3, 0]
    # Nothing open any more: a second cancel changes nothing.
    before = await snapshot(engine, ["A"])
    again = await engine.cancel("o1")
    assert again.data == o
    assert await snapshot(engine, ["A"]) == before


async def test_partial_cancel_and_refusals(engine):
    await order(engine, "o1", line("A", 4), line("B", 2))
    o = (await engine.cancel("o1", [line("A", 1)])).data
    assert items(o)[("A", "default")] == (0, 1, 0, 3) and o["status"] == "open"
    before = await snapshot(engine, ["A", "B"])
    with pytest.raises(E.ExceedsOpen):
        await engine.cancel("o1", [line("A", 4)])
    with pytest.raises(E.ExceedsOpen):  # the first line fits, the second does not: nothing moves
        await engine.cancel("o1", [line("A", 1), line("B", 3)])
    with pytest.raises(E.LocationMismatch):
        await engine.cancel("o1", [line("A", 1, "elsewhere")])
    with pytest.raises(E.NotFound):
        await engine.cancel("nope")
    assert await snapshot(engine, ["A", "B"]) == before
    o = (await engine.cancel("o1")).data
    assert o["status"] == "cancelled"
    assert (await levels(engine, "A"))["default"]["available"] == 10


# -- returns ----------------------------------------------------------------------------------


async def test_returns_never_exceed_fulfilled_and_not_returned(engine):
    await order(engine, "o1", line("A", 5))
    with pytest.raises(E.ExceedsReturnable):
        await engine.return_items("o1", [line("A", 1)], restock=True)
    await engine.fulfill("o1", [line("A", 3)])
    n = await stream_len(engine)
    o = (await engine.return_items("o1", [line("A", 2)], restock=True, return_id="ret1")).data
    assert items(o)[("A", "default")] == (3, 0, 2, 2)
    lv = (await levels(engine, "A"))["default"]
    assert (lv["on_hand"], lv["committed"]) == (9, 2)
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.ExceedsReturnable) as exc:
        await engine.return_items("o1", [line("A", 2)], restock=True)
    assert exc.value.details["returnable"] == 1
    again = await engine.return_items("o1", [line("A", 2)], restock=True, return_id="ret1")
    assert not again.created
    with pytest.raises(E.IdempotencyConflict):
        await engine.return_items("o1", [line("A", 2)], restock=False, return_id="ret1")
    assert await snapshot(engine, ["A"]) == before
    evs = await new_events(engine, n)
    assert types(evs) == ["returned"]
    assert evs[0]["restock"] is True and evs[0]["lines"][0]["d"] == [2, 0, 0, 0]


async def test_return_without_restock_leaves_on_hand(engine):
    await order(engine, "o1", line("A", 2))
    await engine.fulfill("o1")
    n = await stream_len(engine)
    o = (await engine.return_items("o1", [line("A", 2)], restock=False)).data
    assert items(o)[("A", "default")] == (2, 0, 2, 0)
    assert (await levels(engine, "A"))["default"]["on_hand"] == 8
    evs = await new_events(engine, n)
    assert evs[0]["restock"] is False and evs[0]["lines"][0]["d"] == [0, 0, 0, 0]


async def test_restock_goes_back_to_the_lines_location(engine):
    await engine.set_on_hand("A", "east", 10)
    await order(engine, "o1", line("A", 2, "west"))
    await engine.fulfill("o1")
    with pytest.raises(E.LocationMismatch):
        await engine.return_items("o1", [line("A", 1, "east")], restock=True)
    await engine.return_items("o1", [line("A", 2)], restock=True)
    lv = await levels(engine, "A")
    assert lv["west"]["on_hand"] == 10 and lv["east"]["on_hand"] == 10


async def test_cancel_and_return_never_both_give_back_the_same_units(engine):
    await order(engine, "o1", line("A", 5))
    await engine.fulfill("o1", [line("A", 2)])
    await engine.cancel("o1")  # 3 open units back
    await engine.return_items("o1", [line("A", 2)], restock=True)  # 2 shipped units back
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.ExceedsReturnable):
        await engine.return_items("o1", [line("A", 1)], restock=True)
    with pytest.raises(E.ExceedsOpen):
        await engine.cancel("o1", [line("A", 1)])
    assert await snapshot(engine, ["A"]) == before
    assert (await levels(engine, "A"))["default"] == {
        "on_hand": 10,
        "reserved": 0,
        "committed": 0,
        "safety_stock": 0,
        "available": 10,
    }
    o = (await engine.get_order("o1")).data
    assert items(o)[("A", "default")] == (2, 3, 2, 0)


# -- per-customer limit -----------------------------------------------------------------------


async def test_limit_counts_active_holds_and_open_orders(engine):
    await engine.set_item("A", {"per_customer_limit": 3})
    await engine.set_on_hand("A", "default", 100)
    await engine.reserve([line("A", 1)], reservation_id="h1", customer_id="c")
    await engine.reserve([line("A", 1)], reservation_id="h2", customer_id="c")
    await engine.commit("h2", "o2")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.LimitExceeded) as exc:
        await engine.reserve([line("A", 2)], customer_id="c")
    assert exc.value.details == {"sku": "A", "limit": 3, "held": 2, "requested": 2}
    with pytest.raises(E.LimitExceeded):  # two lines of one sku count together
        await engine.reserve([line("A", 1), line("A", 1)], customer_id="c")
    assert await snapshot(engine, ["A"]) == before
    await engine.reserve([line("A", 3)], customer_id="other")  # another customer is unaffected
    await engine.reserve([line("A", 1)], reservation_id="h3", customer_id="c")  # exactly at 3
    with pytest.raises(E.LimitExceeded):
        await engine.reserve([line("A", 1)], customer_id="c")


@pytest.mark.parametrize("free", ["release", "expire", "cancel", "fulfill", "cancel-part"])
async def test_units_no_longer_held_stop_counting(engine, free):
    await engine.set_item("A", {"per_customer_limit": 2})
    await engine.set_on_hand("A", "default", 100)
    await engine.reserve([line("A", 2)], reservation_id="r1", customer_id="c")
    if free in ("cancel", "fulfill", "cancel-part"):
        await engine.commit("r1", "o1")
    with pytest.raises(E.LimitExceeded):
        await engine.reserve([line("A", 1)], customer_id="c")
    freed = 1 if free == "cancel-part" else 2
    match free:
        case "release":
            await engine.release("r1")
        case "expire":
            await backdate(engine, "r1")
        case "cancel":
            await engine.cancel("o1")
        case "fulfill":
            await engine.fulfill("o1")
        case "cancel-part":
            await engine.cancel("o1", [line("A", 1)])
    await engine.reserve([line("A", freed)], customer_id="c")
    with pytest.raises(E.LimitExceeded):
        await engine.reserve([line("A", 1)], customer_id="c")


async def test_returned_units_do_not_count_again(engine):
    await engine.set_item("A", {"per_customer_limit": 2})
    await engine.set_on_hand("A", "default", 100)
    await engine.reserve([line("A", 2)], reservation_id="r1", customer_id="c")
    await engine.commit("r1", "o1")
    await engine.fulfill("o1")
    await engine.return_items("o1", [line("A", 2)], restock=True)
    await engine.reserve([line("A", 2)], customer_id="c")


async def test_limit_needs_a_customer(engine):
    await engine.set_item("A", {"per_customer_limit": 2})
    await engine.set_on_hand("A", "default", 100)
    await engine.set_on_hand("B", "default", 100)
    before = await snapshot(engine, ["A", "B"])
    with pytest.raises(E.CustomerRequired) as exc:
        await engine.reserve([line("B", 1), line("A", 1)])
    assert exc.value.status == 422
    assert await snapshot(engine, ["A", "B"]) == before
    await engine.reserve([line("B", 1)])  # skus without a limit need no customer


# -- conservation through a whole story -------------------------------------------------------


async def test_conservation_after_every_step(engine):
    skus = ["A", "B"]
    await engine.set_item("B", {"backorder": "allow", "backorder_limit": 2})
    await engine.set_on_hand("A", "w1", 6)
    await engine.set_on_hand("A", "w2", 4)
    await engine.set_on_hand("B", "w1", 1)
    rids, oids = [], []

    async def check():
        await check_conservation(engine, skus, rids, oids)

    steps = [
        lambda: engine.reserve([line("A", 7), line("B", 2)], reservation_id="r1", customer_id="c"),
        lambda: engine.reserve([line("A", 2, "w2")], reservation_id="r2"),
        lambda: engine.commit("r1", "o1"),
        lambda: engine.reserve([line("B", 1)], reservation_id="r3"),
        lambda: engine.fulfill("o1", [line("A", 3)]),
        lambda: engine.cancel("o1", [line("A", 1)]),
        lambda: engine.set_on_hand("A", "w1", 1),
        lambda: engine.return_items("o1", [line("A", 2)], restock=True),
        lambda: backdate(engine, "r2"),
        lambda: engine.commit("r3", "o3"),
        lambda: engine.adjust("B", "w1", 5, "received"),
        lambda: engine.cancel("o1"),
        lambda: engine.fulfill("o3"),
        lambda: engine.release("r2"),
    ]
    for step in steps:
        await step()
        rids[:] = [r for r in ("r1", "r2", "r3") if await _exists(engine.get_reservation, r)]
        oids[:] = [o for o in ("o1", "o3") if await _exists(engine.get_order, o)]
        await check()
    lv = await levels(engine, "A")
    assert sum(x["committed"] for x in lv.values()) == 0
    assert sum(x["reserved"] for x in lv.values()) == 0


async def _exists(get, ident):
    try:
        await get(ident)
    except E.NotFound:
        return False
    return True
