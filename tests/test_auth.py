"""Scoped API keys: 401 without a valid key, 403 without the scope, the key id in the ledger.

Also what ``flashstock serve`` does without keys on a non-loopback address,
and ``flashstock keys create``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from support import REDIS_URL, need_redis, unique_prefix
from typer.testing import CliRunner

from flashstock import auth
from flashstock.api import create_app
from flashstock.cli import app as cli
from flashstock.keys import Keys
from flashstock.settings import Settings
from flashstock.worker.persist import parse_entry

CHECKOUT, CHECKOUT_ENTRY = auth.new_key("shop", ["checkout"])
OPS, OPS_ENTRY = auth.new_key("warehouse", ["ops", "read"])
READ, READ_ENTRY = auth.new_key("dash", ["read"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- keys and their configuration ------------------------------------------------------------


def test_a_new_key_is_admitted_by_its_entry_and_only_its_hash_is_stored() -> None:
    token, entry = auth.new_key("pos-1", ["checkout", "read"])
    assert token.startswith("fs_pos-1_") and len(token) > 40
    key_id, scopes, digest = entry.split(":")
    assert (key_id, scopes) == ("pos-1", "checkout+read")
    assert token not in entry and digest == auth.digest(token)
    keys = auth.Authenticator(auth.load_keys(entry, None))
    assert keys.check(token, "checkout") == auth.ApiKey(
        "pos-1", frozenset({"checkout", "read"}), digest
    )


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# warehouse tools\n{OPS_ENTRY}\n\n{READ_ENTRY}  # dashboards\n")
    keys = auth.load_keys(CHECKOUT_ENTRY, str(f))
    assert sorted(keys) == ["dash", "shop", "warehouse"]
    assert keys["warehouse"].scopes == {"ops", "read"}
    with pytest.raises(auth.KeyConfigError, match="twice"):
        auth.load_keys(f"{CHECKOUT_ENTRY},{CHECKOUT_ENTRY}", None)


@pytest.mark.parametrize(
    "entry",
    [
        "shop:checkout",  # no hash
        "shop:everything:" + "0" * 64,  # unknown scope
        "Shop:checkout:" + "0" * 64,  # id rules
        "shop:checkout:" + "0" * 63,  # not a sha256
        CHECKOUT,  # a token pasted instead of its entry
    ],
)
def test_a_bad_entry_is_refused_without_echoing_it(entry: str) -> None:
    with pytest.raises(auth.KeyConfigError) as exc:
        auth.load_keys(entry, None)
    assert CHECKOUT not in str(exc.value) and "0" * 63 not in str(exc.value)


def test_an_unreadable_key_file_is_an_error() -> None:
    with pytest.raises(auth.KeyConfigError, match="cannot read"):
        auth.load_keys(None, "/nonexistent/flashstock-keys")


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    a = auth.Authenticator(auth.load_keys(CHECKOUT_ENTRY, None))
    assert isinstance(a.check(CHECKOUT, "checkout"), auth.ApiKey)
    assert a.check(CHECKOUT[:-1] + "x", "checkout")[0] == 401
    assert a.check("fs_nobody_" + "x" * 43, "checkout")[0] == 401  # unknown id: still compared
    assert a.check("not-even-a-token", "checkout")[0] == 401
    assert len(seen) == 4 and all(len(x) == len(y) == 64 for x, y in seen)


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("POST", "/v1/reservations", "checkout"),
        ("GET", "/v1/reservations/r1", "checkout"),
        ("DELETE", "/v1/reservations/r1", "checkout"),
        ("POST", "/v1/orders/o1/fulfill", "checkout"),
        ("GET", "/v1/stock/A", "read"),
        ("PUT", "/v1/stock/A/default", "ops"),
        ("POST", "/v1/stock/A/default/adjustments", "ops"),
        ("POST", "/v1/stock/import", "ops"),
        ("PUT", "/v1/items/A", "ops"),
        ("GET", "/v1/nothing-here", ""),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ],
)
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert auth.required_scope(method, path) == scope


def test_loopback() -> None:
    assert all(map(auth.is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"]))
    assert not any(map(auth.is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com", ""]))


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[TestClient]:
    need_redis()
    s = Settings(
        key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://",
        api_keys=f"{CHECKOUT_ENTRY},{OPS_ENTRY}\n{READ_ENTRY}", rate_limit_key=50,
    )  # fmt: skip
    with TestClient(create_app(s)) as client:
        yield client
        redis = client.app.state.flashstock.redis  # type: ignore[attr-defined]
        client.portal.call(_drop, redis, s.key_prefix)


async def _drop(redis: Any, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(key)


def _events(api: TestClient) -> list[dict[str, Any]]:
    state = api.app.state.flashstock  # type: ignore[attr-defined]
    key = Keys(state.settings.key_prefix, 0).events
    return [orjson.loads(f[b"e"]) for _, f in api.portal.call(state.redis.xrange, key)]


@pytest.mark.redis
def test_401_without_a_key_403_without_the_scope(api: TestClient) -> None:
    cart = {"items": [{"sku": "A", "quantity": 1}]}
    r = api.post("/v1/reservations", json=cart)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.post("/v1/reservations", json=cart, headers=bearer(CHECKOUT[:-2])).status_code == 401
    assert (
        api.post("/v1/reservations", json=cart, headers={"authorization": "Basic eDp5"}).status_code
        == 401
    )
    r = api.put("/v1/stock/A/default", json={"on_hand": 5}, headers=bearer(CHECKOUT))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert api.post("/v1/reservations", json=cart, headers=bearer(READ)).status_code == 403
    assert api.post("/v1/reservations", json=cart, headers=bearer(OPS)).status_code == 403
    assert api.get("/v1/stock/A", headers=bearer(CHECKOUT)).status_code == 403
    # Nothing was changed by any of them.
    assert _events(api) == []


@pytest.mark.redis
def test_each_scope_does_its_work(api: TestClient) -> None:
    assert (
        api.put("/v1/stock/A/default", json={"on_hand": 5}, headers=bearer(OPS)).status_code == 200
    )
    r = api.post("/v1/reservations", json={"items": [{"sku": "A", "quantity": 2}]},
                 headers={"x-api-key": CHECKOUT})  # fmt: skip
    assert r.status_code == 201, r.text
    rid = r.json()["reservation_id"]
    assert api.get(f"/v1/reservations/{rid}", headers=bearer(CHECKOUT)).status_code == 200
    stock = api.get("/v1/stock/A", headers=bearer(READ))
    assert stock.status_code == 200 and stock.json()["total"]["reserved"] == 2
    assert api.get("/v1/stock/A", headers=bearer(OPS)).status_code == 200  # ops+read


@pytest.mark.redis
def test_open_routes_need_no_key_and_unknown_routes_need_one(api: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert api.get(path).status_code == 200, path
    assert api.get("/v1/nothing-here").status_code == 401
    assert api.get("/v1/nothing-here", headers=bearer(READ)).status_code == 404


@pytest.mark.redis
def test_the_ledger_records_which_key_made_each_ops_change(api: TestClient) -> None:
    h = bearer(OPS)
    assert api.put("/v1/stock/A/default", json={"on_hand": 5}, headers=h).status_code == 200
    r = api.post(
        "/v1/stock/A/default/adjustments", json={"delta": 2, "reason": "received"}, headers=h
    )
    assert r.status_code == 200
    assert api.put("/v1/items/A", json={"backorder": "allow"}, headers=h).status_code == 200
    imp = api.post("/v1/stock/import", content=b"sku,location,on_hand\nB,default,3\n",
                   headers={**h, "content-type": "text/csv"})  # fmt: skip
    assert imp.status_code == 200, imp.text
    api.post(
        "/v1/reservations", json={"items": [{"sku": "A", "quantity": 1}]}, headers=bearer(CHECKOUT)
    )
    evs = _events(api)
    ops = [e for e in evs if e["type"] in ("counted", "adjusted", "policy")]
    assert [e["type"] for e in ops] == ["counted", "adjusted", "policy", "counted"]
    assert all(e["by"] == "warehouse" for e in ops)
    assert all("by" not in e for e in evs if e["type"] == "reserved")
    # The worker keeps it in its own column, never the secret.
    row = parse_entry(0, "1-0", {b"e": orjson.dumps(ops[0])}).row()
    assert row["key_id"] == "warehouse" and OPS not in orjson.dumps(row).decode()


@pytest.mark.redis
def test_per_key_rate_limit_over_http(api: TestClient) -> None:
    api.put("/v1/stock/A/default", json={"on_hand": 1000}, headers=bearer(OPS))
    codes = [
        api.post("/v1/reservations", json={"customer_id": f"c{i}", "items": [{"sku": "A", "quantity": 1}]},
                 headers=bearer(CHECKOUT)).status_code
        for i in range(55)
    ]  # fmt: skip
    assert codes.count(201) == 50 and codes.count(429) == 5


@pytest.mark.redis
def test_openapi_declares_the_key_and_each_routes_refusals(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert "ApiKey" in doc["components"]["securitySchemes"]
    op = doc["paths"]["/v1/reservations"]["post"]
    assert op["security"] == [{"ApiKey": []}, {"ApiKeyHeader": []}]
    assert {"401", "403", "413", "429"} <= set(op["responses"])
    assert "security" not in doc["paths"]["/healthz"]["get"]


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def serve_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    need_redis()
    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("FLASHSTOCK_DATABASE_URL", f"sqlite:///{tmp_path / 'l.db'}")
    monkeypatch.setenv("FLASHSTOCK_KEY_PREFIX", unique_prefix())
    monkeypatch.delenv("FLASHSTOCK_API_KEYS", raising=False)
    monkeypatch.delenv("FLASHSTOCK_API_KEYS_FILE", raising=False)
    # serve sets these for its worker processes; set here, monkeypatch puts them back after.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    started: list[dict[str, Any]] = []
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(kw))
    # uvicorn.run is stubbed, so nothing listens: don't let serve's port check fail on
    # whatever else holds 8000 on this machine (test_cli_errors covers the check itself).
    monkeypatch.setattr("flashstock.cli._check_port", lambda host, port: None)
    return started


@pytest.mark.redis
def test_serve_refuses_a_public_address_without_keys(serve_env: list[dict[str, Any]]) -> None:
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-with-worker"])
    assert r.exit_code == 2 and serve_env == []
    assert "no API keys" in r.output and "--insecure-no-auth" in r.output


@pytest.mark.redis
def test_serve_starts_on_loopback_without_keys_or_when_told(
    serve_env: list[dict[str, Any]],
) -> None:
    assert CliRunner().invoke(cli, ["serve", "--no-with-worker"]).exit_code == 0
    r = CliRunner().invoke(
        cli, ["serve", "--host", "0.0.0.0", "--insecure-no-auth", "--no-with-worker"]
    )
    assert r.exit_code == 0, r.output
    assert "open to anyone" in r.output
    assert [kw["host"] for kw in serve_env] == ["127.0.0.1", "0.0.0.0"]


@pytest.mark.redis
def test_serve_with_keys_on_a_public_address(
    serve_env: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASHSTOCK_API_KEYS", CHECKOUT_ENTRY)
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-with-worker"])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("FLASHSTOCK_API_KEYS", "shop:checkout:nothex")
    r = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-with-worker"])
    assert r.exit_code == 2 and "entry 1" in r.output
    assert len(serve_env) == 1


@pytest.mark.redis
def test_the_compose_api_starts_and_is_published_on_loopback_unless_told(
    serve_env: list[dict[str, Any]],
) -> None:
    """`docker compose up` must serve: the api service's own command passes serve's access
    check with no keys set, and the port it publishes is the host's loopback by default."""
    compose = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["environment"]["FLASHSTOCK_API_KEYS"] == "${FLASHSTOCK_API_KEYS:-}"
    r = CliRunner().invoke(cli, [*api["command"], "--no-with-worker"])
    assert r.exit_code == 0, r.output
    assert [kw["host"] for kw in serve_env] == ["0.0.0.0"]
    assert [p.split(":")[0] for p in api["ports"]] == ["${FLASHSTOCK_PUBLISH"]
    assert all(p.startswith("${FLASHSTOCK_PUBLISH:-127.0.0.1}:") for p in api["ports"])


@pytest.mark.redis
def test_serve_with_workers_exits_3_when_the_app_cannot_start(
    serve_env: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict durability on a Redis without fsync-always (the shared test server): each
    worker would refuse to start; serve says so and exits 3, never 0."""
    import redis as sync_redis

    if (
        sync_redis.Redis.from_url(REDIS_URL).config_get("appendfsync").get("appendfsync")
        == "always"
    ):
        pytest.skip("this Redis can be strict")
    monkeypatch.setenv("FLASHSTOCK_DURABILITY", "strict")
    r = CliRunner().invoke(cli, ["serve", "--workers", "2", "--no-with-worker"])
    assert r.exit_code == 3, r.output
    assert "the API cannot start" in r.output and serve_env == []


def test_keys_create_prints_the_token_once_and_the_entry() -> None:
    r = CliRunner().invoke(
        cli, ["keys", "create", "pos-7", "--scope", "checkout", "--scope", "read"]
    )
    assert r.exit_code == 0, r.output
    token = next(ln for ln in r.output.splitlines() if ln.startswith("fs_pos-7_"))
    entry = next(ln for ln in r.output.splitlines() if ln.startswith("pos-7:"))
    assert entry == f"pos-7:checkout+read:{auth.digest(token)}"
    bad = CliRunner().invoke(cli, ["keys", "create", "pos-7", "--scope", "admin"])
    assert bad.exit_code == 2
    assert "'admin' is not a scope; scopes are checkout, ops, read" in bad.output


# -- secrets: passwords in Redis and PostgreSQL URLs never shown ------------------------------

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        (f"rediss://app:{SECRET}@cache.internal:6380/0", "rediss://app:***@cache.internal:6380/0"),
        (f"redis://app:{SECRET}%40x@h/0", "redis://app:***@h/0"),
        (f"redis://h:6379/0?password={SECRET}&ssl_cert_reqs=required",
         "redis://h:6379/0?password=***&ssl_cert_reqs=required"),
        (f"postgresql://fs:{SECRET}@db:5432/flashstock?sslmode=verify-full",
         "postgresql://fs:***@db:5432/flashstock?sslmode=verify-full"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)  # fmt: skip
def test_redact_hides_every_password(url: str, shown: str) -> None:
    from flashstock.redis_client import redact

    assert redact(url) == shown


def test_tls_redis_and_postgres_sslmode_are_passed_through() -> None:
    from redis.asyncio.connection import SSLConnection

    from flashstock.db import make_engine
    from flashstock.redis_client import create_async

    client = create_async(
        f"rediss://app:{SECRET}@cache.internal:6380/0?ssl_cert_reqs=required", "t"
    )
    assert client.connection_pool.connection_class is SSLConnection
    assert client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"
    db = make_engine(f"postgresql://fs:{SECRET}@db:5432/flashstock?sslmode=verify-full")
    assert db.url.query["sslmode"] == "verify-full"
    assert SECRET not in repr(db) and SECRET not in str(db.url)
    assert SECRET not in repr(Settings(redis_url=f"redis://:{SECRET}@h/0", api_keys=CHECKOUT_ENTRY))


def test_readyz_shows_no_password_when_services_are_down() -> None:
    s = Settings(
        key_prefix=unique_prefix(),
        redis_url=f"redis://:{SECRET}@127.0.0.1:1/0",
        database_url=f"postgresql://fs:{SECRET}@127.0.0.1:1/flashstock?sslmode=require",
    )
    with TestClient(create_app(s)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and SECRET not in r.text
        r = client.post("/v1/reservations", json={"items": [{"sku": "A", "quantity": 1}]})
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
        assert SECRET not in r.text


def test_cli_output_shows_no_password(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setenv("FLASHSTOCK_REDIS_URL", f"redis://:{SECRET}@127.0.0.1:1/0")
    monkeypatch.setenv(
        "FLASHSTOCK_DATABASE_URL", f"postgresql://fs:{SECRET}@127.0.0.1:1/x?sslmode=require"
    )
    for args in (["reconcile"], ["db", "upgrade"], ["serve", "--host", "0.0.0.0"]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code != 0
        assert SECRET not in r.output, args
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            assert SECRET not in str(r.exception), args
    assert SECRET not in caplog.text
    assert cli.pretty_exceptions_show_locals is False  # tracebacks never print Settings


@pytest.mark.postgres
def test_readyz_says_the_database_is_missing_without_naming_host_or_user() -> None:
    from conftest_ledger import pg_url_for, require_postgres

    need_redis()
    require_postgres()
    missing = "flashstock_missing_" + unique_prefix()
    s = Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url=pg_url_for(missing))
    with TestClient(create_app(s)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["database"].startswith("the database does not exist")
    assert missing not in r.text and "127.0.0.1" not in r.text
