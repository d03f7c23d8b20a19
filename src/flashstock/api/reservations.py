from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from flashstock.api.deps import EngineDep, reply
from flashstock.api.models import CommitIn, ExtendIn, ReservationIn
from flashstock.auth import SCOPE_KEY

router = APIRouter(prefix="/v1/reservations", tags=["reservations"])


@router.post("", status_code=201)
async def reserve(body: ReservationIn, engine: EngineDep, request: Request) -> Response:
    """Hold stock for a cart, all lines or none."""
    r = await engine.reserve(
        [(i.sku, i.quantity, i.location) for i in body.items],
        reservation_id=body.reservation_id,
        customer_id=body.customer_id,
        ttl_seconds=body.ttl_seconds,
        split=body.split,
        key_id=request.scope.get(SCOPE_KEY),
    )
    return reply(r, 201)


@router.get("/{reservation_id:seg}")
async def get_reservation(reservation_id: str, engine: EngineDep) -> Response:
    """A reservation as it is now."""
    return reply(await engine.get_reservation(reservation_id))


@router.post("/{reservation_id:seg}/extend")
async def extend(reservation_id: str, body: ExtendIn, engine: EngineDep) -> Response:
    """Give an active reservation a new expiry."""
    return reply(await engine.extend(reservation_id, body.ttl_seconds))


@router.delete("/{reservation_id:seg}")
async def release(reservation_id: str, engine: EngineDep) -> Response:
    """Give the held units back."""
    return reply(await engine.release(reservation_id))


@router.post("/{reservation_id:seg}/commit")
async def commit(reservation_id: str, body: CommitIn, engine: EngineDep) -> Response:
    """Place the order for a reservation."""
    return reply(await engine.commit(reservation_id, body.order_id))
