"""Request bodies. Unknown fields are refused (422), quantities are JSON integers only."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from flashstock.settings import MAX_LINES_CEILING, MAX_QUANTITY_CEILING, MAX_TTL_CEILING

# Bounds here are the settings' ceilings; the engine holds each request to the limits in
# force (FLASHSTOCK_MAX_QUANTITY, _MAX_TTL_SECONDS, _MAX_LINES) with the same 422.
Id = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Qty = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY_CEILING)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_QUANTITY_CEILING)]
Ttl = Annotated[StrictInt, Field(ge=1, le=MAX_TTL_CEILING)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LineIn(Body):
    sku: Id
    quantity: Qty
    location: Id | None = None


Lines = Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES_CEILING)]


class ReservationIn(Body):
    reservation_id: Id | None = None
    customer_id: Id | None = None
    ttl_seconds: Ttl | None = None
    split: StrictBool = True
    items: Lines


class ExtendIn(Body):
    ttl_seconds: Ttl


class CommitIn(Body):
    order_id: Id


class FulfillIn(Body):
    fulfillment_id: Id | None = None
    items: Lines | None = None


class CancelIn(Body):
    items: Lines | None = None


class ReturnIn(Body):
    return_id: Id | None = None
    items: Lines
    restock: StrictBool


class CountIn(Body):
    on_hand: Count
    safety_stock: Count | None = None
    adjustment_id: Id | None = None


class AdjustmentIn(Body):
    delta: Annotated[StrictInt, Field(ge=-MAX_QUANTITY_CEILING, le=MAX_QUANTITY_CEILING)]
    reason: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    adjustment_id: Id | None = None


class ItemIn(Body):
    backorder: Literal["deny", "allow", "notify"] = "deny"
    backorder_limit: Count | None = None
    restock_date: Annotated[StrictStr, Field(max_length=32)] | None = None
    ships_in_days: Count | None = None
    low_stock_threshold: Count | None = None
    per_customer_limit: Qty | None = None
    # Abuse limits for a drop (docs/security.md); None: the global setting applies.
    rate_limit_customer: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    max_holds_per_customer: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None
    max_hold_seconds: Annotated[StrictInt, Field(ge=1, le=31_536_000)] | None = None
    max_cart_share: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    locations: Annotated[list[Id], Field(max_length=1000)] | None = None
