"""Hostile stock files: random and crafted CSV never crash the readers, errors name their line,
and a refused file changes nothing (no row of it is applied).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import REDIS_URL, need_redis, unique_prefix

from flashstock.api import create_app
from flashstock.engine import Engine
from flashstock.errors import InvalidRequest
from flashstock.settings import Settings
from flashstock.stockfiles import StockFileError, parse_stock_file
from flashstock.warm import warm_bytes

HEADERS = [
    ["sku", "location", "on_hand"],
    ["sku", "location", "on_hand", "safety_stock", "backorder", "backorder_limit",
     "low_stock_threshold", "per_customer_limit", "restock_date", "ships_in_days"],
    ["sku", "on_hand", "backorder"],
    ["Handle", "SKU", "Location", "On hand", "Committed", "Unavailable", "Available"],
    ["SKU", "Type", "Stock", "In stock?", "Backorders allowed?", "Low stock amount"],
    ["Handle", "Variant SKU", "Variant Inventory Qty", "Variant Inventory Policy",
     "Variant Inventory Tracker"],
]  # fmt: skip

NASTY = [
    "", " ", "0", "5", "-3", "5.0000", "5.5", "1e3", "99999999999", "none", "deny", "allow",
    "notify", "continue", "1", "yes", "2026-02-30", "2026-12-01", "=cmd|' /C calc'!A0",
    "+1+1", "@SUM(A1)", "-2+3", "a,b", 'say "hi"', "line\nbreak", "ü商品", "\u202eevil",
    "{p0}", "a:b", "%7B", "not stocked", "parent", "variable", "simple", "\t", "x" * 200,
]  # fmt: skip
cells = st.one_of(st.sampled_from(NASTY), st.text(max_size=12))


def plausible(column: str) -> st.SearchStrategy[str]:
    """Values that column usually holds in its format."""
    c = column.lower()
    values = {
        "handle": ["tee", "mug"],
        "location": ["default", "east", "{x}", ""],
        "backorder": ["deny", "allow", "notify", ""],
        "variant inventory policy": ["deny", "continue"],
        "backorders allowed?": ["0", "1", "notify"],
        "type": ["simple", "variation"],
        "in stock?": ["1", "0"],
        "variant inventory tracker": ["shopify", ""],
    }.get(c)
    if values is not None:
        return st.sampled_from(values)
    if "sku" in c:
        return st.sampled_from(["A", "B-1", "=cmd|' /C calc'!A0", "ü商品", "a:b", "{p0}", "%25"])
    if c in ("on_hand", "stock", "on hand", "available", "variant inventory qty", "safety_stock"):
        return st.one_of(st.integers(0, 50).map(str), st.sampled_from(["5.0000", "-2"]))
    if c in ("committed", "unavailable"):
        return st.sampled_from(["0", "1"])
    return st.sampled_from(["", "3"])


@st.composite
def stock_files(draw: Any) -> bytes:
    header = list(draw(st.sampled_from(HEADERS)))
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    if draw(st.integers(0, 9)) == 0:
        header.append(draw(st.sampled_from(["colour", "On hand", ""])))
    if draw(st.booleans()):
        rows = draw(
            st.lists(
                st.lists(cells, min_size=len(header) - 1, max_size=len(header) + 1), max_size=12
            )
        )
    else:  # plausible rows, with now and then one hostile cell
        rows = [[draw(plausible(h)) for h in header] for _ in range(draw(st.integers(0, 12)))]
        if rows and draw(st.booleans()):
            row = draw(st.sampled_from(rows))
            row[draw(st.integers(0, len(row) - 1))] = draw(cells)
    out = io.StringIO()
    w = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(header)
    w.writerows(rows)
    data = out.getvalue().encode("utf-8", "surrogatepass")
    match draw(st.integers(0, 19)):
        case 0:
            data = b"\xef\xbb\xbf" + data
        case 1:
            data = out.getvalue().encode("utf-16")
        case 2:
            data = data.replace(b"a", b"\xe9", 1)  # one latin-1 byte
        case 3:
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=8)) + data[cut:]
    return data


def lines_of(data: bytes) -> int:
    return data.count(b"\n") + 1


async def _snapshot(redis: Any) -> dict[bytes, Any]:
    out = {}
    for key in sorted(await redis.keys("*")):
        kind = (await redis.type(key)).decode()
        if kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = sorted(await redis.smembers(key))
        elif kind == "stream":
            out[key] = await redis.xlen(key)
        else:
            out[key] = await redis.get(key)
    return out


async def _warm_once(data: bytes) -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    engine = Engine(redis, Settings(key_prefix="fz"))
    await engine.set_on_hand("KEEP", "default", 7)  # something a bad file must not disturb
    await engine.set_item("KEEP", {"backorder": "allow"})
    before = await _snapshot(redis)
    try:
        report = await warm_bytes(engine, data)
    except InvalidRequest as exc:
        event("refused")
        assert exc.status == 422 and exc.message
        for e in exc.details.get("errors", []):
            assert isinstance(e["line"], int) and 1 <= e["line"] <= lines_of(data), e
            assert e["message"]
        assert await _snapshot(redis) == before, "a refused file changed something"
    else:
        event("loaded" if report.rows else "loaded, no rows")
        # Every row was applied as read.
        parsed = parse_stock_file(data)
        assert report.rows == len(parsed.rows)
        for r in parsed.rows:
            if r.on_hand is not None:
                level = engine.keys_for(r.sku).level(r.sku, r.location)
                assert int(await redis.hget(level, "on_hand")) == r.on_hand
    finally:
        await redis.aclose()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stock_files())
def test_any_file_is_loaded_whole_or_refused_with_line_numbers_and_nothing_applied(
    data: bytes,
) -> None:
    try:
        result = parse_stock_file(data)
    except StockFileError as exc:
        assert exc.errors and all(1 <= e.line <= lines_of(data) for e in exc.errors)
    else:
        assert all(1 <= e.line <= lines_of(data) for e in result.errors)
        assert all(2 <= r.line <= lines_of(data) for r in result.rows)
    asyncio.run(_warm_once(data))


# -- crafted files -------------------------------------------------------------------------


def refused(data: bytes | io.RawIOBase, **kw: Any) -> StockFileError:
    with pytest.raises(StockFileError) as exc:
        parse_stock_file(data, **kw)
    return exc.value


def test_huge_field_is_refused_at_its_line() -> None:
    err = refused(b'sku,location,on_hand\nA,default,1\n"' + b"x" * (2 << 20) + b'",default,1\n')
    assert err.errors[-1].line == 3


def test_huge_line_is_refused_at_its_line() -> None:
    err = refused(b"sku,location,on_hand\n" + b"y" * (1 << 20) + b",default,1\n")
    assert err.errors[-1].line == 2 and "longer than" in err.errors[-1].message


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        ("sku,location,on_hand\nA,default,1\n".encode("utf-16"), 1, "UTF-16"),
        (b"sku,location,on_hand\nA,default,1\nB\xe9,default,2\n", 3, "not UTF-8"),
        (b"sku,location,on_hand\nA\x00,default,1\n", 2, "NUL"),
        (b"PK\x03\x04\x14\x00\x06\x00", 1, "workbook"),
        (b"sku,location,on_hand\rA,default,1\r", 1, "line"),
    ],
)
def test_wrong_encodings_are_refused_with_their_line(data: bytes, line: int, words: str) -> None:
    err = refused(data)
    assert err.errors[-1].line == line and words in err.errors[-1].message


class Rows(io.RawIOBase):
    """A generic stock file of ``n`` rows, made as it is read (never held whole)."""

    def __init__(self, n: int) -> None:
        self.n, self.read_lines = n, 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:
        self.read_lines += 1
        if self.read_lines == 1:
            return b"sku,location,on_hand\n"
        i = self.read_lines - 1
        return b"" if i > self.n else b"SKU-%07d,default,%d\n" % (i, i % 500)


@pytest.mark.slow
def test_millions_of_rows_are_streamed_and_refused_past_the_row_cap() -> None:
    src = Rows(3_000_000)
    err = refused(src, max_rows=200_000)
    assert err.errors[-1].line == 200_002 and "more than 200000 rows" in err.errors[-1].message
    assert src.read_lines == 200_002  # stopped there: the other 2.8 million lines never read


def test_formula_strings_are_kept_as_they_are() -> None:
    data = b"sku,location,on_hand\n\"=cmd|' /C calc'!A0\",@SUM(A1),3\n+1+1,default,2\n"
    rows = parse_stock_file(data).rows
    assert [(r.sku, r.location) for r in rows] == [
        ("=cmd|' /C calc'!A0", "@SUM(A1)"),
        ("+1+1", "default"),
    ]


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[TestClient]:
    need_redis()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
                 max_import_bytes=64 * 1024, max_import_rows=1000)  # fmt: skip
    with TestClient(create_app(s)) as client:
        yield client
        redis = client.app.state.flashstock.redis  # type: ignore[attr-defined]
        client.portal.call(_drop, redis, s.key_prefix)


async def _drop(redis: Any, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)


CSV = {"content-type": "text/csv"}


@pytest.mark.redis
def test_import_caps_bytes_and_rows_and_applies_nothing(api: TestClient) -> None:
    big = b"sku,location,on_hand\n" + b"".join(b"S%06d,default,1\n" % i for i in range(5000))
    r = api.post("/v1/stock/import", content=big, headers=CSV)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    chunks = (big[i : i + 4096] for i in range(0, len(big), 4096))  # no Content-Length
    r = api.post("/v1/stock/import", content=chunks, headers=CSV)
    assert r.status_code == 413
    many = b"sku,location,on_hand\n" + b"".join(b"S%d,d,1\n" % i for i in range(1001))
    r = api.post("/v1/stock/import", content=many, headers=CSV)
    assert r.status_code == 422 and r.json()["errors"][-1]["line"] == 1002
    assert api.get("/v1/stock/S1").status_code == 404


@pytest.mark.redis
def test_hostile_files_over_http_are_422_with_lines_and_formulas_round_trip(
    api: TestClient,
) -> None:
    for data, line in (
        ("sku,location,on_hand\nA,default,1\n".encode("utf-16"), 1),
        (b"sku,location,on_hand\nA,default,1\nB\xff,default,1\n", 3),
        (b'sku,location,on_hand\nA,default,1\n"' + b"x" * 40_000 + b'",d,1\n', 3),
    ):
        r = api.post("/v1/stock/import", content=data, headers=CSV)
        assert r.status_code == 422 and r.json()["errors"][-1]["line"] == line, r.text
    assert api.get("/v1/stock/A").status_code == 404  # line 2 was fine, and still not applied
    r = api.post("/v1/stock/import", content=b"sku,location,on_hand\n=1+1,default,3\n", headers=CSV)
    assert r.status_code == 200, r.text
    stock = api.get("/v1/stock/=1+1")
    assert stock.status_code == 200 and stock.json()["sku"] == "=1+1"
