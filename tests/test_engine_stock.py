"""Stock levels, counts, adjustments, item policy, backorders and allocation, on both backends."""

from __future__ import annotations

import fakeredis
import pytest
from reference import levels, line, new_events, snapshot, stream_len, types

from flashstock import errors as E


def on_real_redis_only_xfail(request, engine, reason):
    if not isinstance(engine.redis, fakeredis.FakeAsyncRedis):
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- counts -----------------------------------------------------------------------------------


async def test_count_never_touches_reserved_or_committed(engine):
    await engine.set_on_hand("A", "default", 10)
    await engine.reserve([line("A", 3)], reservation_id="r1")
    await engine.reserve([line("A", 4)], reservation_id="r2")
    await engine.commit("r2", "o2")
    n = await stream_len(engine)
    lv = (await engine.set_on_hand("A", "default", 5)).data
    assert lv == {
        "location": "default",
        "on_hand": 5,
        "reserved": 3,
        "committed": 4,
        "safety_stock": 0,
        "available": -2,
    }
    evs = await new_events(engine, n)
    assert types(evs) == ["counted"] and evs[0]["lines"][0]["d"] == [-5, 0, 0, 0]
    # Oversold by a count: no new reservation succeeds until stock returns.
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InsufficientStock):
        await engine.reserve([line("A", 1)])
    assert await snapshot(engine, ["A"]) == before
    await engine.release("r1")  # stock returns: 5 - 4 committed = 1
    with pytest.raises(E.InsufficientStock):
        await engine.reserve([line("A", 2)])
    await engine.reserve([line("A", 1)])
    assert (await levels(engine, "A"))["default"]["available"] == 0


async def test_safety_stock_is_never_sold(engine):
    await engine.set_on_hand("A", "default", 10, safety_stock=4)
    n = await stream_len(engine)
    with pytest.raises(E.InsufficientStock) as exc:
        await engine.reserve([line("A", 7)])
    assert exc.value.details["lines"][0]["available"] == 6
    await engine.reserve([line("A", 6)])
    lv = (await engine.set_on_hand("A", "default", 10, safety_stock=1)).data
    assert (lv["safety_stock"], lv["available"]) == (1, 3)
    lv = (await engine.set_on_hand("A", "default", 12)).data  # safety kept when not given
    assert (lv["safety_stock"], lv["available"]) == (1, 5)
    evs = [e for e in await new_events(engine, n) if e["type"] == "counted"]
    assert [e["lines"][0]["d"] for e in evs] == [[0, 0, 0, -3], [2, 0, 0, 0]]


async def test_count_with_an_adjustment_id_applies_once(engine):
    await engine.set_on_hand("A", "default", 10)
    first = await engine.set_on_hand("A", "default", 7, adjustment_id="cnt1")
    await engine.adjust("A", "default", 5, "received")
    before = await snapshot(engine, ["A"])
    again = await engine.set_on_hand("A", "default", 7, adjustment_id="cnt1")
    assert first.created and not again.created
    assert await snapshot(engine, ["A"]) == before
    assert (await levels(engine, "A"))["default"]["on_hand"] == 12
    with pytest.raises(E.IdempotencyConflict):
        await engine.set_on_hand("A", "default", 8, adjustment_id="cnt1")
    with pytest.raises(E.IdempotencyConflict):
        await engine.set_on_hand("A", "other", 7, adjustment_id="cnt1")
    with pytest.raises(E.IdempotencyConflict):
        await engine.adjust("A", "default", 7, "received", adjustment_id="cnt1")
    assert await snapshot(engine, ["A"]) == before


# -- adjustments ------------------------------------------------------------------------------


async def test_adjust_adds_and_removes(engine):
    await engine.set_on_hand("A", "default", 10)
    await engine.reserve([line("A", 2)])
    n = await stream_len(engine)
    assert (await engine.adjust("A", "default", 5, "received")).data["on_hand"] == 15
    lv = (await engine.adjust("A", "default", -12, "damaged")).data
    assert (lv["on_hand"], lv["reserved"], lv["available"]) == (3, 2, 1)
    evs = await new_events(engine, n)
    assert types(evs) == ["adjusted", "adjusted"]
    assert [(e["reason"], e["lines"][0]["d"]) for e in evs] == [
        ("received", [5, 0, 0, 0]),
        ("damaged", [-12, 0, 0, 0]),
    ]


async def test_adjust_refuses_to_go_below_zero(engine):
    await engine.set_on_hand("A", "default", 3)
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.NegativeOnHand) as exc:
        await engine.adjust("A", "default", -4, "damaged")
    assert exc.value.status == 409 and exc.value.details["on_hand"] == 3
    with pytest.raises(E.NegativeOnHand):
        await engine.adjust("A", "nowhere", -1, "damaged")
    with pytest.raises(E.UnknownSku):
        await engine.adjust("Z", "default", 1, "received")
    assert await snapshot(engine, ["A"]) == before
    assert (await engine.adjust("A", "default", -3, "damaged")).data["on_hand"] == 0


async def test_adjust_with_an_id_applies_once(engine):
    await engine.set_on_hand("A", "default", 3)
    await engine.adjust("A", "default", 4, "received", adjustment_id="po-1")
    before = await snapshot(engine, ["A"])
    again = await engine.adjust("A", "default", 4, "received", adjustment_id="po-1")
    assert not again.created and again.data["on_hand"] == 7
    assert await snapshot(engine, ["A"]) == before
    with pytest.raises(E.IdempotencyConflict):
        await engine.adjust("A", "default", 4, "returned", adjustment_id="po-1")
    with pytest.raises(E.IdempotencyConflict):
        await engine.adjust("A", "default", 5, "received", adjustment_id="po-1")
    assert await snapshot(engine, ["A"]) == before


async def test_adjust_replay_returns_the_first_result(engine):
    await engine.set_on_hand("A", "default", 3)
    first = await engine.adjust("A", "default", 4, "received", adjustment_id="po-1")
    await engine.reserve([line("A", 2)])
    again = await engine.adjust("A", "default", 4, "received", adjustment_id="po-1")
    assert again.data == first.data


# -- item policy ------------------------------------------------------------------------------


async def test_item_policy_replace_merge_and_events(engine):
    await engine.set_on_hand("A", "default", 1)
    n = await stream_len(engine)
    p = (
        await engine.set_item(
            "A", {"backorder": "notify", "backorder_limit": 5, "ships_in_days": 3}
        )
    ).data
    assert (p["backorder"], p["backorder_limit"], p["ships_in_days"]) == ("notify", 5, 3)
    p = (await engine.set_item("A", {"low_stock_threshold": 2}, merge=True)).data
    assert (p["backorder"], p["backorder_limit"], p["low_stock_threshold"]) == ("notify", 5, 2)
    p = (await engine.set_item("A", {"per_customer_limit": 4})).data  # replace: others reset
    assert (p["backorder"], p["backorder_limit"], p["per_customer_limit"]) == ("deny", None, 4)
    p = (await engine.set_item("A", {"per_customer_limit": None}, merge=True)).data
    assert p["per_customer_limit"] is None
    stock = (await engine.get_stock("A")).data
    assert stock["policy"]["backorder"] == "deny" and stock["policy"]["per_customer_limit"] is None
    evs = await new_events(engine, n)
    assert types(evs) == ["policy"] * 4 and all("lines" not in e for e in evs)


@pytest.mark.parametrize(
    "policy",
    [
        {"backorder": "sometimes"},
        {"backorder_limit": -1},
        {"backorder_limit": 1.5},
        {"per_customer_limit": 0},
        {"per_customer_limit": "3"},
        {"low_stock_threshold": True},
        {"colour": "red"},
        {"restock_date": 20250101},
        {"restock_date": "2024-W01-1"},  # a week date: date.fromisoformat reads it
        {"restock_date": "20250101"},
        {"restock_date": "2025-02-30"},
    ],
)
async def test_bad_policy_is_refused(engine, policy):
    await engine.set_on_hand("A", "default", 1)
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InvalidRequest) as exc:
        await engine.set_item("A", policy)
    assert exc.value.status == 422
    assert await snapshot(engine, ["A"]) == before


async def test_item_without_levels_lists_no_locations(engine, request):
    p = (await engine.set_item("P", {"backorder": "allow"})).data
    stock = (await engine.get_stock("P")).data
    assert stock["locations"] == [] and p["locations"] == []


# -- backorders -------------------------------------------------------------------------------


async def test_deny_never_goes_below_zero(engine):
    await engine.set_on_hand("A", "default", 3)
    await engine.reserve([line("A", 3)])
    with pytest.raises(E.InsufficientStock):
        await engine.reserve([line("A", 1)])
    assert (await levels(engine, "A"))["default"]["available"] == 0


@pytest.mark.parametrize("mode", ["allow", "notify"])
async def test_backorders_up_to_the_limit(engine, mode):
    await engine.set_item(
        "A",
        {"backorder": mode, "backorder_limit": 4, "ships_in_days": 7, "restock_date": "2030-01-15"},
    )
    await engine.set_on_hand("A", "default", 2)
    r = (await engine.reserve([line("A", 5)])).data
    (it,) = r["items"]
    assert (it["quantity"], it["backordered"]) == (5, 3)
    assert it["notify"] is (mode == "notify")
    assert (it["restock_date"], it["ships_in_days"]) == ("2030-01-15", 7)
    assert (await levels(engine, "A"))["default"]["available"] == -3
    r = (await engine.reserve([line("A", 1)])).data
    assert r["items"][0]["backordered"] == 1
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InsufficientStock):
        await engine.reserve([line("A", 1)])
    assert await snapshot(engine, ["A"]) == before
    assert (await levels(engine, "A"))["default"]["available"] == -4


async def test_unlimited_backorders_and_no_level_yet(engine):
    await engine.set_item("P", {"backorder": "allow"})
    r = (await engine.reserve([line("P", 1000)])).data
    assert r["items"] == [
        {
            "sku": "P",
            "location": "default",
            "quantity": 1000,
            "backordered": 1000,
            "restock_date": None,
            "ships_in_days": None,
            "notify": False,
        }
    ]
    assert (await levels(engine, "P"))["default"]["available"] == -1000


async def test_backordered_count_is_per_line(engine):
    await engine.set_item("A", {"backorder": "allow"})
    await engine.set_on_hand("A", "w1", 2)
    await engine.set_on_hand("A", "w2", 1)
    await engine.set_on_hand("B", "default", 5)
    r = (await engine.reserve([line("A", 2, "w2"), line("B", 2), line("A", 1, "w1")])).data
    got = {(i["sku"], i["location"]): (i["quantity"], i["backordered"]) for i in r["items"]}
    assert got == {("A", "w2"): (2, 1), ("A", "w1"): (1, 0), ("B", "default"): (2, 0)}


# -- allocation across locations --------------------------------------------------------------


async def test_allocation_follows_priority_then_most_available(engine):
    await engine.set_item("A", {}, locations=["small", "big"])
    await engine.set_on_hand("A", "big", 10)
    await engine.set_on_hand("A", "small", 2)
    r = (await engine.reserve([line("A", 3)])).data
    assert [(i["location"], i["quantity"]) for i in r["items"]] == [("small", 2), ("big", 1)]
    await engine.set_on_hand("B", "x", 2)
    await engine.set_on_hand("B", "y", 5)
    r = (await engine.reserve([line("B", 3)])).data  # no priority: most available first
    assert [(i["location"], i["quantity"]) for i in r["items"]] == [("y", 3)]


async def test_no_split_takes_one_location_or_nothing(engine):
    await engine.set_item("A", {}, locations=["w1", "w2", "w3"])
    for loc, n in (("w1", 2), ("w2", 4), ("w3", 5)):
        await engine.set_on_hand("A", loc, n)
    r = (await engine.reserve([line("A", 4)], split=False)).data
    assert [(i["location"], i["quantity"]) for i in r["items"]] == [("w2", 4)]
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InsufficientStock):  # 7 left in total, but no single location has 6
        await engine.reserve([line("A", 6)], split=False)
    assert await snapshot(engine, ["A"]) == before
    r = (await engine.reserve([line("A", 6)])).data
    assert sorted((i["location"], i["quantity"]) for i in r["items"]) == [("w1", 2), ("w3", 4)]


async def test_configured_priority_survives_a_new_location(engine):
    await engine.set_item("A", {}, locations=["w1", "w2"])
    await engine.set_on_hand("A", "w1", 5)
    await engine.set_on_hand("A", "w2", 5)
    await engine.set_on_hand("A", "w3", 100)
    r = (await engine.reserve([line("A", 3)])).data
    assert [(i["location"], i["quantity"]) for i in r["items"]] == [("w1", 3)]


async def test_total_counts_an_oversold_location_as_zero(engine):
    await engine.set_on_hand("A", "w1", 5)
    await engine.set_on_hand("A", "w2", 4)
    await engine.reserve([line("A", 4, "w2")])
    await engine.set_on_hand("A", "w2", 1)  # w2 now oversold by 3
    total = (await engine.get_stock("A")).data["total"]
    assert total["on_hand"] == 6 and total["reserved"] == 4
    assert total["available"] == 5
    r = (await engine.reserve([line("A", 5)])).data
    assert [(i["location"], i["quantity"]) for i in r["items"]] == [("w1", 5)]


# -- low stock --------------------------------------------------------------------------------


async def test_low_stock_is_written_once_per_crossing(engine):
    await engine.set_item("A", {"low_stock_threshold": 3})
    await engine.set_on_hand("A", "default", 6)
    n = await stream_len(engine)
    await engine.reserve([line("A", 2)], reservation_id="r1")  # 4: above
    await engine.reserve([line("A", 1)], reservation_id="r2")  # 3: crosses
    await engine.reserve([line("A", 1)], reservation_id="r3")  # 2: already below
    await engine.release("r2")
    await engine.release("r3")  # back to 4
    await engine.adjust("A", "default", -2, "damaged")  # 2: crosses again
    await engine.set_on_hand("A", "default", 20)  # 18
    await engine.set_on_hand("A", "default", 3)  # 1: crosses again
    evs = await new_events(engine, n)
    assert types(evs) == [
        "reserved",
        "reserved",
        "low_stock",
        "reserved",
        "released",
        "released",
        "adjusted",
        "low_stock",
        "counted",
        "counted",
        "low_stock",
    ]
    lows = [e for e in evs if e["type"] == "low_stock"]
    assert [e["available"] for e in lows] == [3, 2, 1]
    assert all(e["lines"][0]["d"] == [0, 0, 0, 0] for e in lows)
