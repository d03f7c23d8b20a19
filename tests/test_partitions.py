"""With several partitions, every id is still unique across the whole store.

Each script checks ids atomically in its own partition; the engine also looks
in the other partitions before a mutation that names an id, so the same id on
another partition is an ``idempotency_conflict``, not a second, separate change.
"""

from __future__ import annotations

import pytest

from flashstock import errors as E
from flashstock.engine import Engine, Line
from flashstock.keys import partition_of


def two_skus_in_two_partitions(partitions: int = 4) -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(1000):
        seen.setdefault(partition_of(f"P{i}", partitions), f"P{i}")
        if len(seen) == 2:
            a, b = seen.values()
            return a, b
    raise AssertionError("no two partitions")


@pytest.fixture
async def e4(engine, settings) -> Engine:  # type: ignore[no-untyped-def]
    e = Engine(engine.redis, settings.model_copy(update={"partitions": 4}))
    for sku in two_skus_in_two_partitions():
        await e.set_on_hand(sku, "default", 10)
    return e


async def test_an_order_id_is_unique_across_partitions(e4: Engine) -> None:
    a, b = two_skus_in_two_partitions()
    ra = await e4.reserve([Line(a, 1)], reservation_id="ra")
    rb = await e4.reserve([Line(b, 1)], reservation_id="rb")
    await e4.commit(ra.data["reservation_id"], "SAME")
    with pytest.raises(E.IdempotencyConflict):
        await e4.commit(rb.data["reservation_id"], "SAME")
    assert (await e4.get_reservation("rb")).data["status"] == "active"
    assert (await e4.get_stock(b)).data["total"]["committed"] == 0


async def test_an_adjustment_id_is_unique_across_partitions(e4: Engine) -> None:
    a, b = two_skus_in_two_partitions()
    await e4.adjust(a, "default", 2, "received", adjustment_id="po-9")
    with pytest.raises(E.IdempotencyConflict):
        await e4.adjust(b, "default", 3, "received", adjustment_id="po-9")
    with pytest.raises(E.IdempotencyConflict):
        await e4.set_on_hand(b, "default", 4, adjustment_id="po-9")
    assert (await e4.get_stock(b)).data["total"]["on_hand"] == 10


async def test_fulfillment_and_return_ids_are_unique_across_partitions(e4: Engine) -> None:
    a, b = two_skus_in_two_partitions()
    for sku, n in ((a, "1"), (b, "2")):
        await e4.reserve([Line(sku, 2)], reservation_id=f"r{n}")
        await e4.commit(f"r{n}", f"o{n}")
    await e4.fulfill("o1", fulfillment_id="ship-1")
    with pytest.raises(E.IdempotencyConflict):
        await e4.fulfill("o2", fulfillment_id="ship-1")
    await e4.return_items("o1", [Line(a, 1)], restock=True, return_id="ret-1")
    await e4.fulfill("o2", fulfillment_id="ship-2")
    with pytest.raises(E.IdempotencyConflict):
        await e4.return_items("o2", [Line(b, 1)], restock=True, return_id="ret-1")
    assert (await e4.get_order("o2")).data["items"][0]["returned"] == 0
