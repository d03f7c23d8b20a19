"""``backorder_limit`` bounds an item's backorders across all its locations together.

SPEC §1: the limit is part of the item's policy, "shared by all its locations";
two locations must not each take the full limit.
"""

from __future__ import annotations

import pytest
from reference import backdate

from flashstock import errors as E
from flashstock.engine import Line


@pytest.fixture
async def preorder(engine):  # type: ignore[no-untyped-def]
    await engine.set_on_hand("PRE", "east", 0)
    await engine.set_on_hand("PRE", "west", 0)
    await engine.set_item("PRE", {"backorder": "allow", "backorder_limit": 3})
    return engine


async def test_two_locations_share_one_limit(preorder) -> None:  # type: ignore[no-untyped-def]
    e = preorder
    await e.reserve([Line("PRE", 2, "east")])
    with pytest.raises(E.InsufficientStock):
        await e.reserve([Line("PRE", 2, "west")])
    ok = await e.reserve([Line("PRE", 1, "west")])
    assert ok.data["items"][0]["backordered"] == 1
    with pytest.raises(E.InsufficientStock):
        await e.reserve([Line("PRE", 1)])
    total = (await e.get_stock("PRE")).data["locations"]
    assert sum(-lv["available"] for lv in total) == 3


async def test_allocated_lines_and_units_in_stock(preorder) -> None:  # type: ignore[no-untyped-def]
    e = preorder
    await e.adjust("PRE", "east", 2, "received")
    with pytest.raises(E.InsufficientStock):
        await e.reserve([Line("PRE", 6)])  # 2 in stock + 4 on backorder > 3
    r = await e.reserve([Line("PRE", 5)])  # 2 in stock + 3 on backorder
    assert sum(i["backordered"] for i in r.data["items"]) == 3
    assert sum(i["quantity"] for i in r.data["items"]) == 5


async def test_a_revived_commit_respects_the_shared_limit(preorder) -> None:  # type: ignore[no-untyped-def]
    e = preorder
    await e.reserve([Line("PRE", 2, "east")], reservation_id="late", ttl_seconds=1)
    await backdate(e, "late")  # its TTL has passed
    await e.reserve([Line("PRE", 2, "west")])  # the expired hold's units went elsewhere
    with pytest.raises(E.InsufficientStock):
        await e.commit("late", "o-late")
