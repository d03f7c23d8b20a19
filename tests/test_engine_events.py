"""The event stream (docs/events.md): one event per operation, exact deltas, a replayable log."""

from __future__ import annotations

import pytest
from reference import (
    all_levels,
    backdate,
    events,
    levels,
    line,
    new_events,
    redis_now_ms,
    replayed_levels,
    stream_len,
    types,
)

from flashstock import errors as E

SKUS = ["A", "B:x"]


async def known_levels(engine):
    """Levels of the skus that exist so far."""
    out = {}
    for sku in SKUS:
        try:
            out[sku] = await levels(engine, sku)
        except E.UnknownSku:
            pass
    return out


# (operation, the event types it writes, the d of each line of its main event)
STORY = [
    (
        lambda e: e.set_item("B:x", {"backorder": "allow"}, locations=["w1", "w2"]),
        ["policy"],
        [[0, 0, 0, 0], [0, 0, 0, 0]],  # the two locations' levels come into being
    ),
    (
        lambda e: e.set_on_hand("A", "w1", 10, safety_stock=1, adjustment_id="c1"),
        ["counted"],
        [[10, 0, 0, 1]],
    ),
    (lambda e: e.set_on_hand("B:x", "w1", 3), ["counted"], [[3, 0, 0, 0]]),
    (
        lambda e: e.adjust("B:x", "w2", 2, "received", adjustment_id="a1"),
        ["adjusted"],
        [[2, 0, 0, 0]],
    ),
    (
        lambda e: e.reserve([line("A", 4), line("B:x", 7)], reservation_id="r1", customer_id="c"),
        ["reserved"],
        [[0, 4, 0, 0], [0, 5, 0, 0], [0, 2, 0, 0]],
    ),
    (lambda e: e.reserve([line("A", 2, "w1")], reservation_id="r2"), ["reserved"], [[0, 2, 0, 0]]),
    (lambda e: e.extend("r1", 1200), ["extended"], []),
    (lambda e: e.release("r2"), ["released"], [[0, -2, 0, 0]]),
    (lambda e: e.commit("r1", "o1"), ["committed"], [[0, -4, 4, 0], [0, -5, 5, 0], [0, -2, 2, 0]]),
    (
        lambda e: e.fulfill("o1", [line("A", 3)], fulfillment_id="f1"),
        ["fulfilled"],
        [[-3, 0, -3, 0]],
    ),
    (lambda e: e.cancel("o1", [line("A", 1)]), ["cancelled"], [[0, 0, -1, 0]]),
    (
        lambda e: e.return_items("o1", [line("A", 2)], restock=True, return_id="t1"),
        ["returned"],
        [[2, 0, 0, 0]],
    ),
    (lambda e: e.return_items("o1", [line("A", 1)], restock=False), ["returned"], [[0, 0, 0, 0]]),
    (lambda e: e.reserve([line("A", 2)], reservation_id="r3"), ["reserved"], [[0, 2, 0, 0]]),
    (lambda e: backdate(e, "r3"), [], []),
    (lambda e: e.get_stock("A"), ["expired"], [[0, -2, 0, 0]]),
    (
        lambda e: e.reserve([line("A", 1)], reservation_id="r4", ttl_seconds=1),
        ["reserved"],
        [[0, 1, 0, 0]],
    ),
    (lambda e: backdate(e, "r4"), [], []),
    (lambda e: e.commit("r4", "o4"), ["expired", "committed"], [[0, -1, 0, 0]]),
    (lambda e: e.fulfill("o4"), ["fulfilled"], [[-1, 0, -1, 0]]),
    (lambda e: e.cancel("o1"), ["cancelled"], [[0, 0, -5, 0], [0, 0, -2, 0]]),
    (lambda e: e.set_on_hand("A", "w1", 9, safety_stock=0), ["counted"], [[1, 0, 0, -1]]),
]


async def test_one_event_per_operation_with_the_documented_deltas(engine):
    for op, want_types, want_d in STORY:
        n = await stream_len(engine)
        t0 = await redis_now_ms(engine)
        await op(engine)
        t1 = await redis_now_ms(engine)
        evs = await new_events(engine, n)
        assert types(evs) == want_types, op
        if not evs:
            continue
        main = evs[0]
        assert sorted(ln["d"] for ln in main.get("lines", [])) == sorted(want_d)
        for e in evs:
            assert t0 <= e["at"] <= t1
            assert all(v is not None for v in e.values()), e  # absent, never null
        # Each line's lv is the level right after the event.
        now = await known_levels(engine)
        for ln in evs[-1].get("lines", []):
            lv = now[ln["sku"]][ln["loc"]]
            assert ln["lv"] == [lv["on_hand"], lv["reserved"], lv["committed"], lv["safety_stock"]]
    # Replaying every d from zero rebuilds every level exactly (invariant 6).
    rebuilt = replayed_levels(await events(engine))
    now = await all_levels(engine, SKUS)
    for sku, per_loc in now.items():
        for loc, lv in per_loc.items():
            want = [lv["on_hand"], lv["reserved"], lv["committed"], lv["safety_stock"]]
            assert rebuilt.get((sku, loc), [0, 0, 0, 0]) == want, (sku, loc)


async def test_event_fields(engine):
    for op, _, _ in STORY:
        await op(engine)
    evs = await events(engine)
    by_type = {}
    for e in evs:
        by_type.setdefault(e["type"], []).append(e)
    r1 = by_type["reserved"][0]
    assert (r1["rid"], r1["cust"], r1["status"]) == ("r1", "c", "active")
    assert isinstance(r1["exp"], int)
    assert sorted((ln["sku"], ln["loc"], ln["qty"], ln["bo"]) for ln in r1["lines"]) == [
        ("A", "w1", 4, 0),
        ("B:x", "w1", 5, 2),
        ("B:x", "w2", 2, 0),
    ]
    assert by_type["extended"][0]["exp"] > r1["exp"]
    c = by_type["committed"][0]
    assert (c["oid"], c["rid"], c["cust"]) == ("o1", "r1", "c")
    assert c["order"]["rid"] == "r1" and c["order"]["cust"] == "c"
    assert {(ln["sku"], ln["loc"], ln["qty"]) for ln in c["order"]["lines"]} == {
        ("A", "w1", 4),
        ("B:x", "w1", 5),
        ("B:x", "w2", 2),
    }
    assert "revived" not in c and by_type["committed"][1]["revived"] is True
    assert by_type["fulfilled"][0]["ref"] == "f1"
    assert [e["restock"] for e in by_type["returned"]] == [True, False]
    assert by_type["returned"][0]["ref"] == "t1" and "ref" not in by_type["returned"][1]
    assert by_type["adjusted"][0]["reason"] == "received" and by_type["adjusted"][0]["ref"] == "a1"
    assert by_type["counted"][0]["reason"] == "count" and by_type["counted"][0]["ref"] == "c1"
    assert [e["rid"] for e in by_type["expired"]] == ["r3", "r4"]
    assert by_type["policy"][0]["policy"]["backorder"] == "allow"
    last = by_type["cancelled"][-1]["order"]
    assert [(ln["fulfilled"], ln["cancelled"], ln["returned"]) for ln in last["lines"]][0] == (
        3,
        1,
        3,
    )


# -- the sweeper ------------------------------------------------------------------------------


async def test_sweep_expires_only_holds_whose_ttl_has_passed(engine):
    await engine.set_on_hand("A", "default", 20)
    for i in range(6):
        await engine.reserve([line("A", 1)], reservation_id=f"r{i}", ttl_seconds=600)
    await backdate(engine, "r0", ms_ago=50)
    await backdate(engine, "r1", ms_ago=0)
    await backdate(engine, "r2", ms_ago=-3_000)  # three seconds to go
    await engine.extend("r3", 1)  # a second to go
    n = await stream_len(engine)
    part = engine.partitions[0]
    assert await engine.sweep(part, limit=1) == 1
    assert await engine.sweep(part) == 1
    assert await engine.sweep(part) == 0
    evs = await new_events(engine, n)
    assert sorted(e["rid"] for e in evs) == ["r0", "r1"] and set(types(evs)) == {"expired"}
    status = {f"r{i}": (await engine.get_reservation(f"r{i}")).data["status"] for i in range(6)}
    assert status == {
        "r0": "expired",
        "r1": "expired",
        "r2": "active",
        "r3": "active",
        "r4": "active",
        "r5": "active",
    }
    lv = (await engine.get_stock("A")).data["locations"][0]
    assert lv["reserved"] == 4


@pytest.mark.parametrize("then", ["commit", "release"])
async def test_sweep_skips_holds_that_ended_otherwise(engine, then):
    await engine.set_on_hand("A", "default", 5)
    await engine.reserve([line("A", 2)], reservation_id="r1")
    await (engine.commit("r1", "o1") if then == "commit" else engine.release("r1"))
    n = await stream_len(engine)
    assert await engine.sweep(engine.partitions[0]) == 0
    assert await stream_len(engine) == n
