"""Bad input refused at the engine with the right exception and no change; key isolation, slots."""

from __future__ import annotations

import pytest
from redis.crc import key_slot
from reference import levels, line, snapshot

from flashstock import errors as E
from flashstock.engine import Engine
from flashstock.keys import partition_of

BAD_QUANTITIES = [0, -1, 1.5, 2.0, "3", True, False, None, 10**12, 1_000_001, float("nan")]
BAD_IDS = ["", " a", "a ", "a" * 129, "a\nb", "a\x00b", "a\x7f", "a\x85", "a\u2028b", "\t", 5, None,
           "\u200b", "\ufeffA", "A\u202eB", "\uffff", "A\u00a0B", "A\ue000B"]  # fmt: skip


@pytest.fixture
async def stocked(engine):
    await engine.set_on_hand("A", "default", 10)
    await engine.reserve([line("A", 2)], reservation_id="r1", customer_id="c")
    await engine.reserve([line("A", 3)], reservation_id="r2")
    await engine.commit("r2", "o1")
    await engine.fulfill("o1", [line("A", 1)])
    return engine


async def refused(engine, exc_type, call):
    before = await snapshot(engine, ["A"])
    with pytest.raises(exc_type) as exc:
        await call
    assert await snapshot(engine, ["A"]) == before
    return exc.value


@pytest.mark.parametrize("q", BAD_QUANTITIES, ids=repr)
async def test_bad_quantities_are_refused(stocked, q):
    e = stocked
    calls = {
        "reserve": lambda: e.reserve([line("A", q)]),
        "reserve-2nd-line": lambda: e.reserve([line("A", 1), line("A", q)]),
        "fulfill": lambda: e.fulfill("o1", [line("A", q)]),
        "cancel": lambda: e.cancel("o1", [line("A", q)]),
        "return": lambda: e.return_items("o1", [line("A", q)], restock=True),
        "count": lambda: e.set_on_hand("A", "default", q),
        "safety": lambda: e.set_on_hand("A", "default", 5, safety_stock=q),
        "adjust": lambda: e.adjust("A", "default", q, "received"),
        "ttl": lambda: e.reserve([line("A", 1)], ttl_seconds=q),
        "extend": lambda: e.extend("r1", q),
    }
    # Valid for some fields: a count or safety stock of 0, a delta of -1, "not given".
    valid = set()
    if not isinstance(q, bool):
        valid = {0: {"count", "safety"}, -1: {"adjust"}, None: {"safety", "ttl", "extend"}}.get(
            q, set()
        )
    for name, call in calls.items():
        if name in valid:
            continue
        err = await refused(e, E.InvalidRequest, call())
        assert err.status == 422, name


async def test_zero_count_is_valid_but_negative_is_not(stocked):
    e = stocked
    await refused(e, E.InvalidRequest, e.set_on_hand("A", "default", -1))
    await refused(e, E.InvalidRequest, e.set_on_hand("A", "default", 1, safety_stock=-1))
    await refused(e, E.InvalidRequest, e.adjust("A", "default", 0, "received"))
    lv = (await e.set_on_hand("A", "default", 0)).data
    assert (lv["on_hand"], lv["available"]) == (0, -4)


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_identifiers_are_refused(stocked, bad):
    e = stocked
    calls = {
        "sku": lambda: e.reserve([line(bad, 1)]),
        "location": lambda: e.reserve([line("A", 1, bad)]),
        "reservation_id": lambda: e.reserve([line("A", 1)], reservation_id=bad),
        "customer_id": lambda: e.reserve([line("A", 1)], customer_id=bad),
        "get_reservation": lambda: e.get_reservation(bad),
        "extend": lambda: e.extend(bad, 10),
        "release": lambda: e.release(bad),
        "commit": lambda: e.commit(bad, "o9"),
        "order_id": lambda: e.commit("r1", bad),
        "get_order": lambda: e.get_order(bad),
        "fulfill": lambda: e.fulfill(bad),
        "fulfillment_id": lambda: e.fulfill("o1", fulfillment_id=bad),
        "fulfill-line": lambda: e.fulfill("o1", [line(bad, 1)]),
        "cancel": lambda: e.cancel(bad),
        "return": lambda: e.return_items(bad, [line("A", 1)], restock=True),
        "return_id": lambda: e.return_items("o1", [line("A", 1)], restock=True, return_id=bad),
        "get_stock": lambda: e.get_stock(bad),
        "count-sku": lambda: e.set_on_hand(bad, "default", 1),
        "count-location": lambda: e.set_on_hand("A", bad, 1),
        "adjustment_id": lambda: e.set_on_hand("A", "default", 1, adjustment_id=bad),
        "reason": lambda: e.adjust("A", "default", 1, bad),
        "adjust-id": lambda: e.adjust("A", "default", 1, "received", adjustment_id=bad),
        "item": lambda: e.set_item(bad, {}),
        "item-location": lambda: e.set_item("A", {}, locations=[bad]),
    }
    # None is "not given" for the optional ones.
    optional = {
        "location",
        "reservation_id",
        "customer_id",
        "fulfillment_id",
        "return_id",
        "adjustment_id",
        "adjust-id",
    }
    for name, call in calls.items():
        if bad is None and name in optional:
            continue
        err = await refused(e, E.InvalidRequest, call())
        assert err.status == 422, name


async def test_longest_identifiers_are_accepted(engine):
    sku, rid = "S" * 128, "R" * 128
    await engine.set_on_hand(sku, "L" * 128, 3)
    r = await engine.reserve([line(sku, 2)], reservation_id=rid, customer_id="C" * 128)
    assert r.data["items"][0]["location"] == "L" * 128
    assert (await engine.commit(rid, "O" * 128)).data["order_id"] == "O" * 128


async def test_request_shape_is_checked(stocked):
    e = stocked
    await refused(e, E.InvalidRequest, e.reserve([]))
    await refused(e, E.InvalidRequest, e.reserve([line("A", 1)] * 101))
    await refused(e, E.InvalidRequest, e.return_items("o1", [], restock=True))
    await refused(e, E.InvalidRequest, e.set_item("A", {}, locations=["w", "w"]))


async def test_unknown_line_field_is_an_invalid_request(stocked):
    await refused(stocked, E.InvalidRequest, stocked.reserve([{"sku": "A", "qty": 1}]))


async def test_unknown_sku_and_location(stocked):
    e = stocked
    err = await refused(e, E.UnknownSku, e.reserve([line("A", 1), line("Z", 1)]))
    assert err.status == 404 and err.details == {"sku": "Z"}
    await refused(e, E.UnknownSku, e.get_stock("Z"))
    await refused(e, E.UnknownSku, e.adjust("Z", "default", 1, "received"))
    err = await refused(e, E.UnknownLocation, e.reserve([line("A", 1), line("A", 1, "mars")]))
    assert err.status == 404 and err.details == {"sku": "A", "location": "mars"}
    await refused(e, E.NotFound, e.get_reservation("nope"))
    await refused(e, E.NotFound, e.get_order("nope"))


# -- keys -------------------------------------------------------------------------------------

NASTY = ["a:b", "a", "b:c", "{x}", "%3A", ":", "a%3Ab", "}{", "%", "%25", "ü:商品", "a b"]


async def test_escaped_names_never_collide(engine):
    # (a:b @ c) and (a @ b:c) would share "lv:a:b:c" without escaping.
    await engine.set_on_hand("a:b", "c", 1)
    await engine.set_on_hand("a", "b:c", 2)
    await engine.set_on_hand("a%3Ab", "c", 3)
    await engine.set_on_hand("a", "b%3Ac", 4)
    got = {
        (sku, loc): lv["on_hand"]
        for sku in ("a:b", "a", "a%3Ab")
        for loc, lv in (await levels(engine, sku)).items()
    }
    assert got == {("a:b", "c"): 1, ("a", "b:c"): 2, ("a%3Ab", "c"): 3, ("a", "b%3Ac"): 4}
    await engine.reserve([line("a:b", 1)], reservation_id="r:1")
    await engine.reserve([line("a", 2, "b:c")], reservation_id="r%3A1")
    assert (await engine.get_reservation("r:1")).data["items"][0]["sku"] == "a:b"
    assert (await engine.get_reservation("r%3A1")).data["items"][0]["sku"] == "a"
    assert (await levels(engine, "a%3Ab"))["c"]["reserved"] == 0
    assert (await levels(engine, "a"))["b%3Ac"]["reserved"] == 0


async def test_customer_counts_never_collide(engine):
    # customer "c:A" buying "B" and customer "c" buying "A:B" must count apart.
    for sku in ("B", "A:B"):
        await engine.set_item(sku, {"per_customer_limit": 2})
        await engine.set_on_hand(sku, "default", 10)
    await engine.reserve([line("B", 2)], customer_id="c:A")
    await engine.reserve([line("A:B", 2)], customer_id="c")
    with pytest.raises(E.LimitExceeded):
        await engine.reserve([line("A:B", 1)], customer_id="c")


async def test_every_key_of_a_partition_shares_one_slot(engine):
    for i, sku in enumerate(NASTY):
        await engine.set_item(sku, {"per_customer_limit": 5}, locations=[NASTY[-1 - i], "w"])
        await engine.set_on_hand(sku, NASTY[i - 1], 5)
        await engine.reserve([line(sku, 1)], reservation_id="r" + sku, customer_id=sku)
        await engine.adjust(sku, "w", 1, "received", adjustment_id="adj" + sku)
    for i, sku in enumerate(NASTY[:4]):
        await engine.commit("r" + sku, "o" + sku)
        await engine.fulfill("o" + sku, fulfillment_id=f"f{{{i}}}")
        await engine.return_items("o" + sku, [line(sku, 1)], restock=True, return_id=f"%{i}")
    prefix = engine.settings.key_prefix
    keys = [k async for k in engine.redis.scan_iter(match=f"{prefix}:*", count=1000)]
    kinds = {k.decode().removeprefix(engine.partitions[0].base).split(":")[0] for k in keys}
    assert {"lv", "hd", "it", "locs", "rs", "or", "cu", "id", "exp", "skus", "ev"} <= kinds
    assert {key_slot(k) for k in keys} == {key_slot(engine.partitions[0].base.encode())}


# -- several partitions -----------------------------------------------------------------------


def skus_in_distinct_partitions(n, partitions):
    out = {}
    for i in range(1000):
        out.setdefault(partition_of(f"S{i}", partitions), f"S{i}")
        if len(out) == n:
            return list(out.values())
    raise AssertionError("not enough partitions")


@pytest.fixture
def engine4(engine, settings):
    return Engine(engine.redis, settings.model_copy(update={"partitions": 4}))


async def test_a_reservation_lives_in_its_skus_partition(engine4):
    e = engine4
    a, b = skus_in_distinct_partitions(2, 4)
    for sku in (a, b):
        await e.set_on_hand(sku, "default", 5)
    before = await snapshot(e, [a, b])
    with pytest.raises(E.CrossPartition) as exc:
        await e.reserve([line(a, 1), line(b, 1)])
    assert exc.value.status == 422
    assert await snapshot(e, [a, b]) == before
    await e.reserve([line(b, 2)], reservation_id="rb")
    assert (await e.get_reservation("rb")).data["items"][0]["sku"] == b
    await e.commit("rb", "ob")
    assert (await e.fulfill("ob")).data["status"] == "fulfilled"
    assert (await levels(e, b))["default"]["on_hand"] == 3
    slots, claims = {}, []
    prefix = e.settings.key_prefix
    async for k in e.redis.scan_iter(match=f"{prefix}:*", count=1000):
        part = k.decode().split(":")[1]
        if part == "claim":  # an id's claim, outside every partition by design (keys.py)
            claims.append(k.decode())
            continue
        slots.setdefault(part, set()).add(key_slot(k))
    assert len(slots) == 2 and all(len(s) == 1 for s in slots.values())
    assert sorted(claims) == [f"{prefix}:claim:order_id:ob", f"{prefix}:claim:reservation_id:rb"]


async def test_a_reservation_id_is_unique_across_partitions(engine4):
    e = engine4
    a, b = skus_in_distinct_partitions(2, 4)
    for sku in (a, b):
        await e.set_on_hand(sku, "default", 5)
    await e.reserve([line(a, 1)], reservation_id="X")
    with pytest.raises(E.IdempotencyConflict):
        await e.reserve([line(b, 2)], reservation_id="X")
