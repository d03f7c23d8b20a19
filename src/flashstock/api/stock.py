from __future__ import annotations

import tempfile
from typing import Annotated, BinaryIO, Literal, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from flashstock.api.deps import EngineDep, json_response, reply
from flashstock.api.models import AdjustmentIn, CountIn, ItemIn
from flashstock.auth import key_id_of
from flashstock.errors import InvalidRequest, PayloadTooLarge

router = APIRouter(tags=["stock"])


@router.get("/v1/stock/{sku:seg}")
async def get_stock(sku: str, engine: EngineDep) -> Response:
    """A sku's policy, its level at every location, and the total."""
    return reply(await engine.get_stock(sku))


@router.put("/v1/stock/{sku:seg}/{location:seg}")
async def count(
    sku: str, location: str, body: CountIn, engine: EngineDep, request: Request
) -> Response:
    """Record a stock count (sets on_hand; reserved and committed untouched)."""
    return reply(
        await engine.set_on_hand(
            sku, location, body.on_hand,
            safety_stock=body.safety_stock, adjustment_id=body.adjustment_id,
            by=key_id_of(request.scope),
        )
    )  # fmt: skip


@router.post("/v1/stock/{sku:seg}/{location:seg}/adjustments")
async def adjust(
    sku: str, location: str, body: AdjustmentIn, engine: EngineDep, request: Request
) -> Response:
    """Change on_hand by a signed delta, with a reason."""
    return reply(
        await engine.adjust(
            sku,
            location,
            body.delta,
            body.reason,
            adjustment_id=body.adjustment_id,
            by=key_id_of(request.scope),
        )  # fmt: skip
    )


@router.put("/v1/items/{sku:seg}")
async def set_item(sku: str, body: ItemIn, engine: EngineDep, request: Request) -> Response:
    """Set an item's selling policy (fields left out go back to their defaults)."""
    policy = body.model_dump(exclude={"locations"})
    return reply(
        await engine.set_item(sku, policy, locations=body.locations, by=key_id_of(request.scope))
    )


HOW_TO_SEND = (
    "send the stock file as the raw request body "
    "(curl --data-binary @stock.csv -H 'content-type: text/csv')"
)


def _has_line_break(body: BinaryIO) -> bool:
    """Whether the spooled body holds a line break; leaves it rewound."""
    try:
        while chunk := body.read(1 << 16):
            if b"\n" in chunk or b"\r" in chunk:
                return True
        return False
    finally:
        body.seek(0)


@router.post(
    "/v1/stock/import",
    openapi_extra={
        "requestBody": {"content": {"text/csv": {"schema": {"type": "string"}}}, "required": True}
    },
)
async def import_stock(
    request: Request,
    engine: EngineDep,
    format: Annotated[Literal["generic", "shopify", "woocommerce"] | None, Query()] = None,
    dry_run: Annotated[bool, Query()] = False,
) -> Response:
    """Load a stock file (generic, Shopify or WooCommerce CSV); nothing applied if any row is bad."""
    from flashstock.warm import warm_bytes

    s = engine.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("multipart/"):
        raise InvalidRequest(f"{HOW_TO_SEND}, not as a form upload", field="body")
    if ctype == "application/json" or ctype.endswith("+json"):
        raise InvalidRequest(f"a stock file is CSV: {HOW_TO_SEND}", field="body")
    # Spooled: a large file goes to a temporary file, and the reader streams it line by line.
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as body:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > s.max_import_bytes:
                raise PayloadTooLarge(f"stock file larger than {s.max_import_bytes} bytes")
            body.write(chunk)
        body.seek(0)
        if ctype == "application/x-www-form-urlencoded" and not _has_line_break(
            cast(BinaryIO, body)
        ):
            raise InvalidRequest(
                "the stock file arrived as one line: `curl -d` drops a file's line breaks; "
                f"{HOW_TO_SEND}",
                field="body",
            )
        report = await warm_bytes(
            engine, cast(BinaryIO, body), format=format, dry_run=dry_run, by=key_id_of(request.scope),
            max_rows=s.max_import_rows,
        )  # fmt: skip
    return json_response(report.as_dict())
