"""The HTTP API of SPEC §3 against a real Redis: status codes, bodies, and bad input changing nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from support import REDIS_URL, need_redis, unique_prefix

from flashstock.api import create_app
from flashstock.keys import Keys
from flashstock.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
def api() -> Iterator[TestClient]:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://")
    with TestClient(create_app(s)) as client:
        client.put("/v1/stock/HOT/default", json={"on_hand": 5})
        yield client
        redis = client.app.state.flashstock.redis  # type: ignore[attr-defined]
        client.portal.call(_drop, redis, s.key_prefix)


async def _drop(redis, prefix: str) -> None:  # type: ignore[no-untyped-def]
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)


def _events(api: TestClient) -> int:
    state = api.app.state.flashstock  # type: ignore[attr-defined]
    key = Keys(state.settings.key_prefix, 0).events
    return int(api.portal.call(state.redis.xlen, key))


def test_reserve_201_then_replay_200_with_same_body(api: TestClient) -> None:
    body = {"reservation_id": "r-1", "customer_id": "c-1", "items": [{"sku": "HOT", "quantity": 2}]}
    first = api.post("/v1/reservations", json=body)
    assert first.status_code == 201
    data = first.json()
    assert data["status"] == "active" and data["customer_id"] == "c-1"
    assert data["items"] == [{"sku": "HOT", "location": "default", "quantity": 2, "backordered": 0}]
    assert data["expires_at"].endswith("Z")
    again = api.post("/v1/reservations", json=body)
    assert again.status_code == 200 and again.json() == data
    conflict = api.post("/v1/reservations", json={**body, "items": [{"sku": "HOT", "quantity": 1}]})
    assert conflict.status_code == 409 and conflict.json()["error"] == "idempotency_conflict"


def test_insufficient_stock_names_the_line(api: TestClient) -> None:
    r = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 6}]})
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "insufficient_stock" and body["message"]
    assert body["lines"] == [{"sku": "HOT", "location": None, "requested": 6, "available": 5}]


def test_lifecycle_over_http(api: TestClient) -> None:
    rid = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 3}]}).json()[
        "reservation_id"
    ]
    assert api.get(f"/v1/reservations/{rid}").json()["status"] == "active"
    assert api.post(f"/v1/reservations/{rid}/extend", json={"ttl_seconds": 60}).status_code == 200
    order = api.post(f"/v1/reservations/{rid}/commit", json={"order_id": "o-1"})
    assert order.status_code == 200 and order.json()["status"] == "open"
    assert api.delete(f"/v1/reservations/{rid}").status_code == 409
    shipped = api.post("/v1/orders/o-1/fulfill", json={"items": [{"sku": "HOT", "quantity": 1}]})
    assert shipped.json()["items"][0]["fulfilled"] == 1
    assert (
        api.post(
            "/v1/orders/o-1/fulfill", json={"items": [{"sku": "HOT", "quantity": 5}]}
        ).status_code
        == 409
    )
    cancelled = api.post("/v1/orders/o-1/cancel").json()
    assert cancelled["items"][0] | {} == {
        "sku": "HOT", "location": "default", "quantity": 3,
        "fulfilled": 1, "cancelled": 2, "returned": 0, "open": 0,
    }  # fmt: skip
    returned = api.post(
        "/v1/orders/o-1/returns", json={"items": [{"sku": "HOT", "quantity": 1}], "restock": True}
    )
    assert returned.status_code == 200 and returned.json()["items"][0]["returned"] == 1
    stock = api.get("/v1/stock/HOT").json()
    assert stock["total"] == {
        "location": "*", "on_hand": 5, "reserved": 0, "committed": 0,
        "safety_stock": 0, "available": 5,
    }  # fmt: skip


def test_release_twice_is_200(api: TestClient) -> None:
    rid = api.post("/v1/reservations", json={"items": [{"sku": "HOT", "quantity": 1}]}).json()[
        "reservation_id"
    ]
    assert api.delete(f"/v1/reservations/{rid}").json()["status"] == "released"
    again = api.delete(f"/v1/reservations/{rid}")
    assert again.status_code == 200 and again.json()["status"] == "released"
    assert api.delete("/v1/reservations/nope").status_code == 404


@pytest.mark.parametrize(
    "items",
    [
        [{"sku": "HOT", "quantity": 1.5}],
        [{"sku": "HOT", "quantity": "3"}],
        [{"sku": "HOT", "quantity": True}],
        [{"sku": "HOT", "quantity": 0}],
        [{"sku": "HOT", "quantity": -1}],
        [{"sku": "HOT", "quantity": 10**12}],
        [{"sku": "HOT", "quantity": 2.0}],
        [{"sku": "", "quantity": 1}],
        [{"sku": "x" * 129, "quantity": 1}],
        [{"sku": " HOT", "quantity": 1}],
        [{"sku": "HO\u0000T", "quantity": 1}],
        [{"sku": "HOT", "quantity": 1, "colour": "red"}],
        [],
    ],
)
def test_bad_lines_are_422_and_change_nothing(api: TestClient, items: list) -> None:
    before = _events(api)
    r = api.post("/v1/reservations", json={"items": items})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request" and body["message"]
    assert body["errors"] and all(e["message"] and "loc" in e for e in body["errors"])
    assert _events(api) == before
    assert api.get("/v1/stock/HOT").json()["total"]["reserved"] == 0


@pytest.mark.parametrize(
    ("method", "path", "json", "field"),
    [
        (
            "post",
            "/v1/stock/HOT/default/adjustments",
            {"delta": 0, "reason": "correction"},
            "delta",
        ),
        ("put", "/v1/items/HOT", {"restock_date": "soon"}, "restock_date"),
        ("post", "/v1/reservations", {"items": [{"sku": "HOT ", "quantity": 1}]}, None),
    ],
)
def test_every_422_lists_its_errors_in_one_shape(
    api: TestClient, method: str, path: str, json: dict, field: str | None
) -> None:
    r = api.request(method.upper(), path, json=json)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_request"
    assert [set(e) for e in body["errors"]] == [{"loc", "message", "type"}]
    if field is not None:
        assert body["errors"][0]["loc"][-1] == field


def test_malformed_json_is_422_invalid_json(api: TestClient) -> None:
    r = api.post(
        "/v1/reservations", content=b'{"items": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"


def test_unknown_sku_is_404(api: TestClient) -> None:
    r = api.post("/v1/reservations", json={"items": [{"sku": "NOPE", "quantity": 1}]})
    assert r.status_code == 404 and r.json()["error"] == "unknown_sku"
    assert api.get("/v1/stock/NOPE").status_code == 404


def test_count_adjust_item(api: TestClient) -> None:
    lv = api.put("/v1/stock/HOT/west", json={"on_hand": 7, "adjustment_id": "cnt-1"}).json()
    assert lv == {"location": "west", "on_hand": 7, "reserved": 0, "committed": 0,
                  "safety_stock": 0, "available": 7}  # fmt: skip
    r = api.post("/v1/stock/HOT/west/adjustments", json={"delta": -8, "reason": "damaged"})
    assert r.status_code == 409 and r.json()["error"] == "negative_on_hand"
    r = api.post("/v1/stock/HOT/west/adjustments", json={"delta": 3, "reason": "received"})
    assert r.json()["on_hand"] == 10
    item = api.put("/v1/items/HOT", json={"backorder": "notify", "backorder_limit": 2,
                                          "locations": ["west", "default"]})  # fmt: skip
    assert item.status_code == 200 and item.json()["locations"] == ["west", "default"]
    assert api.put("/v1/items/HOT", json={"backorder": "sometimes"}).status_code == 422


def test_import_csv_all_or_nothing(api: TestClient) -> None:
    good = b"sku,location,on_hand\nIMP-1,default,4\nIMP-2,default,6\n"
    r = api.post("/v1/stock/import", content=good, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert api.get("/v1/stock/IMP-2").json()["total"]["on_hand"] == 6
    bad = b"sku,location,on_hand\nIMP-1,default,9\nIMP-3,default,-2\n"
    r = api.post("/v1/stock/import", content=bad, headers={"content-type": "text/csv"})
    assert r.status_code == 422
    assert any(e["line"] == 3 for e in r.json()["errors"])
    assert api.get("/v1/stock/IMP-1").json()["total"]["on_hand"] == 4


def test_health_ready_metrics_docs(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    api.get("/v1/stock/HOT")
    assert b"flashstock_http_requests_total" in api.get("/metrics").content
    assert api.get("/docs").status_code == 200
    assert "/v1/reservations" in api.get("/openapi.json").json()["paths"]


def test_ids_with_slashes_reach_their_routes(api: TestClient) -> None:
    r = api.post("/v1/stock/import", content=b"sku,location,on_hand\nA/B-1,east/2,5\n",
                 headers={"content-type": "text/csv"})  # fmt: skip
    assert r.status_code == 200, r.text
    stock = api.get("/v1/stock/A%2FB-1")
    assert stock.status_code == 200 and stock.json()["locations"][0]["location"] == "east/2"
    assert api.put("/v1/stock/A%2FB-1/east%2F2", json={"on_hand": 6}).json()["on_hand"] == 6
    body = {"reservation_id": "cart/1", "items": [{"sku": "A/B-1", "quantity": 2}]}
    assert api.post("/v1/reservations", json=body).status_code == 201
    assert api.get("/v1/reservations/cart%2F1").json()["reservation_id"] == "cart/1"
    order = api.post("/v1/reservations/cart%2F1/commit", json={"order_id": "o/1"})
    assert order.status_code == 200, order.text
    assert api.post("/v1/orders/o%2F1/fulfill").json()["status"] == "fulfilled"
    assert api.get("/v1/stock/A%2FB-1").json()["total"]["on_hand"] == 4
    assert api.get("/v1/stock/A\ue000B-1").status_code == 422


@pytest.mark.redis
def test_a_path_that_is_not_utf8_is_refused_not_renamed(api: TestClient) -> None:
    for method, path in (("PUT", "/v1/stock/%FF/default"), ("GET", "/v1/stock/%ED%A0%80"),
                         ("GET", "/v1/reservations/a%C3"), ("PUT", "/v1/items/%80")):  # fmt: skip
        r = api.request(method, path, json={"on_hand": 1} if "stock/" in path else {})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"] == "invalid_request"
    assert api.get("/v1/stock/%EF%BF%BD").status_code == 404  # U+FFFD itself is just a character
    assert api.put("/v1/stock/%EF%BF%BD/default", json={"on_hand": 1}).status_code == 200
    assert api.get("/v1/stock/%EF%BF%BD").json()["sku"] == "\ufffd"


def test_a_form_body_is_told_to_be_json(api: TestClient) -> None:
    before = _events(api)
    r = api.post("/v1/reservations", data={"items": "HOT"})  # curl -d without a JSON type
    assert r.status_code == 422, r.text
    assert "must be JSON (content-type: application/json)" in r.json()["message"]
    assert _events(api) == before


def test_a_stock_file_sent_as_a_form_upload_is_told_to_be_the_raw_body(api: TestClient) -> None:
    before = _events(api)
    r = api.post("/v1/stock/import", files={"file": ("s.csv", b"sku,location,on_hand\nA,w,1\n")})
    assert r.status_code == 422, r.text
    assert "as the raw request body" in r.json()["message"]
    assert _events(api) == before


def test_the_configured_limits_are_the_apis_both_ways() -> None:
    """Raised limits are taken by every route (the request models admit the settings'
    ceilings), and lowered ones refuse with the same 422 on the fast path and the route."""
    need_redis()
    raised = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
                      max_quantity=5_000_000, max_ttl_seconds=1_209_600, max_lines=200)  # fmt: skip
    with TestClient(create_app(raised)) as api:
        assert api.put("/v1/stock/BIG/default", json={"on_hand": 2_000_000}).status_code == 200
        many = [{"sku": "BIG", "quantity": 1, "location": "default"}] * 150
        r = api.post("/v1/reservations", json={"items": many, "ttl_seconds": 1_000_000})
        assert r.status_code == 201, r.text
        r = api.post("/v1/reservations", json={"items": [{"sku": "BIG", "quantity": 1_500_000}]})
        assert r.status_code == 201, r.text
        api.portal.call(_drop, api.app.state.flashstock.redis, raised.key_prefix)  # type: ignore[attr-defined]
    lowered = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
                       max_quantity=10, max_ttl_seconds=60, default_ttl_seconds=30, max_lines=2)  # fmt: skip
    with TestClient(create_app(lowered)) as api:
        assert api.put("/v1/stock/S/default", json={"on_hand": 11}).status_code == 422
        assert api.put("/v1/stock/S/default", json={"on_hand": 10}).status_code == 200
        before = _events(api)
        for body in (
            {"items": [{"sku": "S", "quantity": 11}]},
            {"items": [{"sku": "S", "quantity": 1}], "ttl_seconds": 61},
            {"items": [{"sku": "S", "quantity": 1}, {"sku": "S", "quantity": 1, "location": "x"},
                       {"sku": "S", "quantity": 1, "location": "y"}]},
        ):  # fmt: skip
            fast = api.app.fast_reserve  # type: ignore[attr-defined]
            assert fast is not None
            for route in (fast, None):  # the fast path, then the FastAPI route
                api.app.fast_reserve = route  # type: ignore[attr-defined]
                r = api.post("/v1/reservations", json=body)
                assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
            api.app.fast_reserve = fast  # type: ignore[attr-defined]
        assert _events(api) == before
        api.portal.call(_drop, api.app.state.flashstock.redis, lowered.key_prefix)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [
        '{"items": [{"sku": "Caf\u00e9", "quantity": 1}]}'.encode("latin-1"),  # not UTF-8
        b"[" * 20_000 + b"]" * 20_000,  # nested deeper than the parser goes
        b'{"items": [',
    ],
)
def test_a_body_that_is_not_json_is_one_422(api: TestClient, raw: bytes) -> None:
    before = _events(api)
    for route in (api.app.fast_reserve, None):  # type: ignore[attr-defined]
        api.app.fast_reserve = route  # type: ignore[attr-defined]
        r = api.post("/v1/reservations", content=raw, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]) == (422, "invalid_json"), r.text
    assert _events(api) == before


def test_the_slash_stand_in_sent_literally_is_refused_not_routed(api: TestClient) -> None:
    r = api.put("/v1/stock/x%EE%80%80/default", json={"on_hand": 1})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert "U+E000" in r.json()["message"]
    assert api.get("/v1/stock/x%EE%80%80").status_code == 422


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"sku": "A\u200bB", "quantity": 1}, "sku"),
        ({"sku": "HOT", "quantity": 1, "location": " east"}, "location"),
    ],
)
def test_a_bad_line_is_named_by_its_place_in_the_cart(
    api: TestClient, line: dict, field: str
) -> None:
    body = {"items": [{"sku": "HOT", "quantity": 1}, line]}
    r = api.post("/v1/reservations", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "items", "1", field]
    assert r.json()["message"].startswith(f"items.1.{field}: ")


@pytest.mark.parametrize(
    ("body", "ctype", "says"),
    [
        (b"sku,location,on_hand\nA,w,1\n", "application/json", "content-type: text/csv"),
        # `curl -d @stock.csv` sends a form and drops the file's line breaks.
        (b"sku,location,on_handA,w,1B,w,2", "application/x-www-form-urlencoded", "--data-binary"),
    ],
)
def test_a_stock_file_sent_wrongly_is_told_how_and_changes_nothing(
    api: TestClient, body: bytes, ctype: str, says: str
) -> None:
    before = _events(api)
    r = api.post("/v1/stock/import", content=body, headers={"content-type": ctype})
    assert r.status_code == 422, r.text
    assert says in r.json()["message"]
    assert _events(api) == before


def test_a_stock_file_posted_by_curl_data_binary_is_loaded(api: TestClient) -> None:
    """`curl --data-binary @stock.csv` labels the body as a form but keeps it whole."""
    r = api.post("/v1/stock/import", content=b"sku,location,on_hand\nFORMA,w,1\n",
                 headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200, r.text
    level = api.get("/v1/stock/FORMA").json()["locations"]
    assert [(lv["location"], lv["on_hand"]) for lv in level] == [("w", 1)]
