"""The OpenAPI document as clients (and the schema fuzzer) should read it.

Routes answer with the scripts' JSON as it comes (no response models, to save
a decode and an encode), so FastAPI alone would document neither bodies nor
refusals. This adds, from one table: each route's success body, every refusal
it may answer with (the SPEC error body), and the API key it needs.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from flashstock.auth import required_scope

_INT = {"type": "integer"}
_STR = {"type": "string"}
_NULL_STR = {"type": ["string", "null"]}
_NULL_INT = {"type": ["integer", "null"]}

LEVEL = {
    "type": "object",
    "required": ["location", "on_hand", "reserved", "committed", "safety_stock", "available"],
    "properties": {
        "location": _STR, "on_hand": _INT, "reserved": _INT, "committed": _INT,
        "safety_stock": _INT, "available": _INT,
    },
}  # fmt: skip
RESERVATION = {
    "type": "object",
    "required": ["reservation_id", "status", "customer_id", "expires_at", "items"],
    "properties": {
        "reservation_id": _STR,
        "status": {"enum": ["active", "committed", "released", "expired"]},
        "customer_id": _NULL_STR,
        "expires_at": {"type": "string", "format": "date-time"},
        "order_id": _STR,
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "location", "quantity", "backordered"],
                "properties": {
                    "sku": _STR,
                    "location": _STR,
                    "quantity": _INT,
                    "backordered": _INT,
                },
            },
        },
    },
}
ORDER = {
    "type": "object",
    "required": ["order_id", "reservation_id", "status", "items"],
    "properties": {
        "order_id": _STR,
        "reservation_id": _STR,
        "status": _STR,
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sku", "location", "quantity", "fulfilled", "cancelled", "returned", "open"],
                "properties": {
                    "sku": _STR, "location": _STR, "quantity": _INT, "fulfilled": _INT,
                    "cancelled": _INT, "returned": _INT, "open": _INT,
                },
            },
        },
    },
}  # fmt: skip
_POLICY_FIELDS: dict[str, Any] = {
    "backorder": {"enum": ["deny", "allow", "notify"]},
    "backorder_limit": _NULL_INT,
    "restock_date": _NULL_STR,
    "ships_in_days": _NULL_INT,
    "low_stock_threshold": _NULL_INT,
    "per_customer_limit": _NULL_INT,
    "rate_limit_customer": _NULL_INT,
    "max_holds_per_customer": _NULL_INT,
    "max_hold_seconds": _NULL_INT,
    "max_cart_share": _NULL_INT,
    "locations": {"type": "array", "items": _STR},
}
POLICY = {"type": "object", "required": ["backorder"], "properties": _POLICY_FIELDS}
ITEM = {"type": "object", "required": ["sku", "backorder", "locations"],
        "properties": {"sku": _STR, **_POLICY_FIELDS}}  # fmt: skip
STOCK = {
    "type": "object",
    "required": ["sku", "policy", "locations", "total"],
    "properties": {"sku": _STR, "policy": POLICY, "locations": {"type": "array", "items": LEVEL},
                   "total": LEVEL},
}  # fmt: skip
IMPORT = {
    "type": "object",
    "required": ["format", "dry_run", "rows", "levels_changed", "levels_unchanged", "policies"],
    "properties": {"format": _STR, "dry_run": {"type": "boolean"}, "rows": _INT,
                   "levels_changed": _INT, "levels_unchanged": _INT, "policies": _INT},
}  # fmt: skip
ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": _STR, "message": _STR},
}

_COMMON = ("400", "413", "422")
# (method, path) -> (success status, body schema, refusals besides 401/403/413/422)
ROUTES: dict[tuple[str, str], tuple[str, dict[str, Any], tuple[str, ...]]] = {
    ("post", "/v1/reservations"): ("201", RESERVATION, ("200", "404", "409", "429")),
    ("get", "/v1/reservations/{reservation_id}"): ("200", RESERVATION, ("404",)),
    ("post", "/v1/reservations/{reservation_id}/extend"): (
        "200",
        RESERVATION,
        ("404", "409", "410"),
    ),
    ("delete", "/v1/reservations/{reservation_id}"): ("200", RESERVATION, ("404", "409")),
    ("post", "/v1/reservations/{reservation_id}/commit"): ("200", ORDER, ("404", "409")),
    ("get", "/v1/orders/{order_id}"): ("200", ORDER, ("404",)),
    ("post", "/v1/orders/{order_id}/fulfill"): ("200", ORDER, ("404", "409")),
    ("post", "/v1/orders/{order_id}/cancel"): ("200", ORDER, ("404", "409")),
    ("post", "/v1/orders/{order_id}/returns"): ("200", ORDER, ("404", "409")),
    ("get", "/v1/stock/{sku}"): ("200", STOCK, ("404",)),
    ("put", "/v1/stock/{sku}/{location}"): ("200", LEVEL, ("409",)),
    ("post", "/v1/stock/{sku}/{location}/adjustments"): ("200", LEVEL, ("404", "409")),
    ("put", "/v1/items/{sku}"): ("200", ITEM, ()),
    ("post", "/v1/stock/import"): ("200", IMPORT, ()),
}
_DESCRIPTIONS = {
    "200": "Done (or the first result of a replay)", "201": "Created",
    "401": "No API key, or not a valid one", "403": "The API key lacks this route's scope",
    "400": "Malformed request", "404": "Not found", "409": "Refused: the state does not allow it", "410": "Expired",
    "413": "Request body too large", "422": "Invalid request",
    "429": "Too many attempts; retry after Retry-After seconds",
}  # fmt: skip


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def install(app: FastAPI, keys_enabled: bool) -> None:
    """Make ``app.openapi()`` return the completed document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            doc.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "http", "scheme": "bearer", "description": "fs_<id>_<secret>"},
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            doc["components"].setdefault("schemas", {})["Error"] = ERROR
            for path, ops in doc["paths"].items():
                for method, op in ops.items():
                    _complete(path, method, op, keys_enabled)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _complete(path: str, method: str, op: dict[str, Any], keys_enabled: bool) -> None:
    bare = path.replace(":seg", "")
    scope = required_scope(method.upper(), bare)
    refusals: tuple[str, ...] = ()
    if scope is not None:
        op["security"] = [{"ApiKey": []}, {"ApiKeyHeader": []}]
        refusals = ("401", "403", *_COMMON)
        op["description"] = (op.get("description", "") + f"\n\nAPI key scope: `{scope}`.").strip()
    route = ROUTES.get((method, bare))
    responses = op.setdefault("responses", {})
    if route is not None:
        ok, body, extra = route
        for status in (ok, "200") if "200" in extra else (ok,):
            responses.setdefault(status, {"description": _DESCRIPTIONS[status]})
            responses[status]["content"] = _json(body)
        refusals += tuple(s for s in extra if s != "200")
    for status in refusals:
        responses[status] = {
            "description": _DESCRIPTIONS[status],
            "content": _json({"$ref": "#/components/schemas/Error"}),
        }
    if path == "/metrics":
        responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    if not keys_enabled:
        op.pop("security", None)
