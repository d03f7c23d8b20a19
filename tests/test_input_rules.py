"""Rules on input that are easy to get subtly wrong: dates, unsplit carts, reserved characters."""

from __future__ import annotations

import pytest

from flashstock import errors as E
from flashstock.engine import Line
from flashstock.validation import id_problem


@pytest.mark.parametrize(
    "bad", ["banana", "2026-13-01", "2026-02-30", "20261201", "2026-12-01T00:00"]
)
async def test_restock_date_is_a_calendar_date(engine, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(E.InvalidRequest):
        await engine.set_item("A", {"backorder": "allow", "restock_date": bad})
    item = await engine.set_item("A", {"backorder": "allow", "restock_date": "2027-01-15"})
    assert item.data["restock_date"] == "2027-01-15"


async def test_an_unsplit_line_is_told_what_one_location_has(engine) -> None:  # type: ignore[no-untyped-def]
    await engine.set_on_hand("A", "east", 2)
    await engine.set_on_hand("A", "west", 2)
    with pytest.raises(E.InsufficientStock) as exc:
        await engine.reserve([Line("A", 3)], split=False)
    assert exc.value.details["lines"] == [
        {"sku": "A", "location": None, "requested": 3, "available": 2}
    ]
    ok = await engine.reserve([Line("A", 3)])  # split, the two locations together have 4
    assert sorted(i["quantity"] for i in ok.data["items"]) == [1, 2]


def test_the_slash_stand_in_is_not_an_id_character() -> None:
    assert id_problem("A\ue000B", "sku") == "sku must contain printable characters only"
    assert id_problem("A/B", "sku") is None
