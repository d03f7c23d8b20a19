from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from flashstock.api.deps import EngineDep, reply
from flashstock.api.models import CancelIn, FulfillIn, LineIn, ReturnIn

router = APIRouter(prefix="/v1/orders", tags=["orders"])


def _lines(items: list[LineIn] | None) -> list[tuple[str, int, str | None]] | None:
    return None if items is None else [(i.sku, i.quantity, i.location) for i in items]


@router.get("/{order_id:seg}")
async def get_order(order_id: str, engine: EngineDep) -> Response:
    """An order with its fulfilled, cancelled, returned and open units."""
    return reply(await engine.get_order(order_id))


@router.post("/{order_id:seg}/fulfill")
async def fulfill(order_id: str, engine: EngineDep, body: FulfillIn | None = None) -> Response:
    """Ship open units (none named: all of them)."""
    body = body or FulfillIn()
    return reply(
        await engine.fulfill(order_id, _lines(body.items), fulfillment_id=body.fulfillment_id)
    )


@router.post("/{order_id:seg}/cancel")
async def cancel(order_id: str, engine: EngineDep, body: CancelIn | None = None) -> Response:
    """Cancel open units (none named: all of them); they become available again."""
    body = body or CancelIn()
    return reply(await engine.cancel(order_id, _lines(body.items)))


@router.post("/{order_id:seg}/returns")
async def returns(order_id: str, body: ReturnIn, engine: EngineDep) -> Response:
    """Take back shipped units, optionally restocking them."""
    return reply(
        await engine.return_items(
            order_id, _lines(body.items) or [], restock=body.restock, return_id=body.return_id
        )
    )
