"""Refusal codes returned by the Lua scripts and the typed exceptions they become."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class RefusalCode(IntEnum):
    """Negative codes a script returns; ``lua/lib/common.lua`` mirrors this table."""

    INVALID = -1
    UNKNOWN_SKU = -2
    UNKNOWN_LOCATION = -3
    INSUFFICIENT_STOCK = -4
    LIMIT_EXCEEDED = -5
    IDEMPOTENCY_CONFLICT = -6
    NOT_FOUND = -7
    RESERVATION_EXPIRED = -8
    NOT_ACTIVE = -9
    EXCEEDS_OPEN = -10
    LOCATION_MISMATCH = -11
    NEGATIVE_ON_HAND = -12
    CUSTOMER_REQUIRED = -13
    ALREADY_COMMITTED = -14
    EXCEEDS_RETURNABLE = -15
    RATE_LIMITED = -16
    TOO_MANY_HOLDS = -17
    HOLD_LIFETIME = -18
    CART_SHARE = -19


class FlashstockError(Exception):
    """Base of every refusal; carries the HTTP status, the SPEC error code and details."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}

    def headers(self) -> dict[str, str] | None:
        """HTTP headers that go with the refusal (``Retry-After``), or None."""
        return None


class InvalidRequest(FlashstockError):
    status, code = 422, "invalid_request"

    def body(self) -> dict[str, Any]:
        """With ``errors`` as the request validator gives them, so every 422 has that list."""
        body = super().body()
        loc = body.pop("loc", None)
        if "errors" not in body:
            field = self.details.get("field")
            where = loc if loc is not None else [field] if isinstance(field, str) else []
            body["errors"] = [{"loc": where, "message": self.message, "type": "value_error"}]
        return body


class UnknownSku(FlashstockError):
    status, code = 404, "unknown_sku"


class UnknownLocation(FlashstockError):
    status, code = 404, "unknown_location"


class NotFound(FlashstockError):
    status, code = 404, "not_found"


class InsufficientStock(FlashstockError):
    status, code = 409, "insufficient_stock"


class LimitExceeded(FlashstockError):
    status, code = 409, "limit_exceeded"


class IdempotencyConflict(FlashstockError):
    status, code = 409, "idempotency_conflict"


class ReservationExpired(FlashstockError):
    status, code = 410, "reservation_expired"


class NotActive(FlashstockError):
    status, code = 409, "reservation_not_active"


class AlreadyCommitted(FlashstockError):
    status, code = 409, "already_committed"


class ExceedsOpen(FlashstockError):
    status, code = 409, "exceeds_open"


class ExceedsReturnable(FlashstockError):
    status, code = 409, "exceeds_returnable"


class LocationMismatch(FlashstockError):
    status, code = 409, "location_mismatch"


class NegativeOnHand(FlashstockError):
    status, code = 409, "negative_on_hand"


class CustomerRequired(FlashstockError):
    status, code = 422, "customer_required"


class CrossPartition(FlashstockError):
    status, code = 422, "cross_partition"


class RateLimited(FlashstockError):
    status, code = 429, "rate_limited"

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.details.get("retry_after", 1))}


class TooManyHolds(FlashstockError):
    status, code = 409, "too_many_holds"


class HoldLifetimeExceeded(FlashstockError):
    status, code = 409, "hold_lifetime_exceeded"


class CartShareExceeded(FlashstockError):
    status, code = 409, "cart_share_exceeded"


class PayloadTooLarge(FlashstockError):
    status, code = 413, "payload_too_large"


class Unavailable(FlashstockError):
    status, code = 503, "unavailable"


def _describe(code: RefusalCode, d: dict[str, Any]) -> str:
    match code:
        case RefusalCode.INSUFFICIENT_STOCK:
            parts = [
                f"{ln['sku']}"
                + (f"@{ln['location']}" if ln.get("location") else "")
                + f": requested {ln['requested']}, available {ln['available']}"
                for ln in d.get("lines", [])
            ]
            return "not enough stock: " + "; ".join(parts)
        case RefusalCode.UNKNOWN_SKU:
            return f"unknown sku {d.get('sku')!r}"
        case RefusalCode.UNKNOWN_LOCATION:
            return f"sku {d.get('sku')!r} is not stocked at location {d.get('location')!r}"
        case RefusalCode.LIMIT_EXCEEDED:
            return (
                f"customer limit for {d.get('sku')!r} is {d.get('limit')}: "
                f"{d.get('held')} already held or ordered, {d.get('requested')} requested"
            )
        case RefusalCode.CUSTOMER_REQUIRED:
            return f"sku {d.get('sku')!r} has a per-customer limit: customer_id is required"
        case RefusalCode.IDEMPOTENCY_CONFLICT:
            return "this id was already used with a different request body"
        case RefusalCode.NOT_FOUND:
            return f"{d.get('kind', 'resource')} {d.get('id')!r} not found"
        case RefusalCode.RESERVATION_EXPIRED:
            return f"reservation {d.get('reservation_id')!r} has expired"
        case RefusalCode.NOT_ACTIVE:
            return f"reservation {d.get('reservation_id')!r} is {d.get('status')}, not active"
        case RefusalCode.ALREADY_COMMITTED:
            return f"reservation is already committed as order {d.get('order_id')!r}"
        case RefusalCode.EXCEEDS_OPEN | RefusalCode.EXCEEDS_RETURNABLE if (
            d.get("in_order") is False
        ):
            return f"order has no line for {d.get('sku')!r}"
        case RefusalCode.EXCEEDS_OPEN:
            return f"{d.get('sku')!r}: {d.get('requested')} requested but only {d.get('open')} open"
        case RefusalCode.EXCEEDS_RETURNABLE:
            return (
                f"{d.get('sku')!r}: {d.get('requested')} to return but only "
                f"{d.get('returnable')} fulfilled and not yet returned"
            )
        case RefusalCode.LOCATION_MISMATCH:
            return f"order has no line for {d.get('sku')!r} at location {d.get('location')!r}"
        case RefusalCode.RATE_LIMITED:
            return (
                f"too many reservation attempts by this {d.get('scope')} "
                f"(limit {d.get('limit')} per window); retry in {d.get('retry_after')} s"
            )
        case RefusalCode.TOO_MANY_HOLDS:
            return f"customer already holds {d.get('active')} active reservation(s), the limit is {d.get('limit')}"
        case RefusalCode.HOLD_LIFETIME:
            return (
                f"a hold may last at most {d.get('max_hold_seconds')} s in all; "
                f"it cannot run past {d.get('max_expires_at')}"
            )
        case RefusalCode.CART_SHARE:
            return (
                f"at most {d.get('cap')} units of {d.get('sku')!r} may be held in carts at once "
                f"({d.get('reserved')} held, {d.get('requested')} requested)"
            )
        case RefusalCode.NEGATIVE_ON_HAND:
            return (
                f"on_hand would fall below 0 ({d.get('on_hand')} on hand, change {d.get('delta')})"
            )
    return str(d.get("message", "invalid request"))


_EXCEPTIONS: dict[RefusalCode, type[FlashstockError]] = {
    RefusalCode.INVALID: InvalidRequest,
    RefusalCode.UNKNOWN_SKU: UnknownSku,
    RefusalCode.UNKNOWN_LOCATION: UnknownLocation,
    RefusalCode.INSUFFICIENT_STOCK: InsufficientStock,
    RefusalCode.LIMIT_EXCEEDED: LimitExceeded,
    RefusalCode.IDEMPOTENCY_CONFLICT: IdempotencyConflict,
    RefusalCode.NOT_FOUND: NotFound,
    RefusalCode.RESERVATION_EXPIRED: ReservationExpired,
    RefusalCode.NOT_ACTIVE: NotActive,
    RefusalCode.EXCEEDS_OPEN: ExceedsOpen,
    RefusalCode.LOCATION_MISMATCH: LocationMismatch,
    RefusalCode.NEGATIVE_ON_HAND: NegativeOnHand,
    RefusalCode.CUSTOMER_REQUIRED: CustomerRequired,
    RefusalCode.ALREADY_COMMITTED: AlreadyCommitted,
    RefusalCode.EXCEEDS_RETURNABLE: ExceedsReturnable,
    RefusalCode.RATE_LIMITED: RateLimited,
    RefusalCode.TOO_MANY_HOLDS: TooManyHolds,
    RefusalCode.HOLD_LIFETIME: HoldLifetimeExceeded,
    RefusalCode.CART_SHARE: CartShareExceeded,
}


def refusal(code: int, details: dict[str, Any]) -> FlashstockError:
    """The typed exception for a script's refusal code and its JSON details."""
    rc = RefusalCode(code)
    if rc is RefusalCode.RATE_LIMITED:
        # Retry-After is whole seconds, rounded up: never ask a client back too early.
        details["retry_after"] = max(1, -(-int(details.pop("retry_after_ms", 1000)) // 1000))
    message = _describe(rc, details)
    details = {k: v for k, v in details.items() if k != "message"}  # it is the message
    return _EXCEPTIONS[rc](message, **details)
