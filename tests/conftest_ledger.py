"""Fixtures for the ledger, worker and reconcile tests (loaded through ``pytest_plugins``).

* PostgreSQL: one template database per run built by the real migrations,
  then a fresh copy of it per test (``CREATE DATABASE … TEMPLATE``), dropped
  afterwards; nothing else on the server is touched.
* SQLite: a file in the test's tmp_path, migrated the same way.
* Redis: the real server, a random key prefix per test, its keys deleted after.
* :class:`EventWriter` appends events in the docs/events.md format and moves
  the Redis levels in the same atomic call, as the Lua scripts do, so the
  worker and reconcile can be tested without depending on those scripts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine

from flashstock.db import make_engine, upgrade
from flashstock.keys import Keys, partition_of
from flashstock.settings import Settings

REDIS_URL = os.environ.get("FLASHSTOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "FLASHSTOCK_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_SERVICES = os.environ.get("FLASHSTOCK_TEST_REQUIRE_SERVICES") == "1"


def _unavailable(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is not reachable")
    pytest.skip(f"{what} is not reachable")


def pg_url_for(dbname: str, admin_url: str = PG_ADMIN_URL) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def _admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(sql)


# --- PostgreSQL -----------------------------------------------------------------------------


def require_postgres() -> None:
    """Skip (fail where services are required) unless the admin database answers."""
    try:
        _admin("SELECT 1")
    except psycopg.OperationalError:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL}")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, used only as the template of each test's database."""
    name = f"flashstock_test_{uuid.uuid4().hex[:10]}_tmpl"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL}")
    try:
        upgrade(pg_url_for(name))
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A private ledger database for this test, schema built by the migrations."""
    name = f"flashstock_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    try:
        yield pg_url_for(name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    return url


@pytest.fixture(
    params=[pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("sqlite")]
)
def ledger_url(request: pytest.FixtureRequest) -> str:
    """Each test twice: on PostgreSQL, then on SQLite."""
    name = "pg_url" if request.param == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def ledger_engine(ledger_url: str) -> Iterator[Engine]:
    engine = make_engine(ledger_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


# --- Redis ----------------------------------------------------------------------------------


@pytest.fixture
def ledger_settings() -> Settings:
    """Settings with a fresh key prefix and short worker timings."""
    return Settings(
        key_prefix="fsl" + uuid.uuid4().hex[:10],
        redis_url=REDIS_URL,
        database_url="sqlite://",
        worker_batch=100,
        worker_block_ms=20,
        worker_claim_idle_ms=100,
    )


@pytest.fixture
def sync_redis(ledger_settings: Settings) -> Iterator[redis.Redis]:
    """The real Redis; every key of this test's prefix is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError:
        _unavailable(f"Redis at {REDIS_URL}")
    yield client
    for key in client.scan_iter(match=f"{ledger_settings.key_prefix}:*", count=1000):
        client.delete(key)
    client.close()


# Moves the levels of every line and appends the event, atomically, like lua/lib/common.lua.
# KEYS: stream, skus, then per line its level hash and locations zset. ARGV[1]: the event
# without `at` and the lines' `lv`, which are filled in here.
_EMIT = """
local ev = cjson.decode(ARGV[1])
local t = redis.call('TIME')
ev.at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = { 'on_hand', 'reserved', 'committed', 'safety' }
for i, l in ipairs(ev.lines or {}) do
  local lk, ck = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if redis.call('EXISTS', lk) == 0 then
    redis.call('HSET', lk, 'on_hand', 0, 'reserved', 0, 'committed', 0, 'safety', 0)
    redis.call('ZADD', ck, 'NX', 0, l.loc)
    redis.call('SADD', KEYS[2], l.sku)
  end
  l.lv = {}
  for j, f in ipairs(fields) do l.lv[j] = redis.call('HINCRBY', lk, f, l.d[j]) end
end
return redis.call('XADD', KEYS[1], '*', 'e', cjson.encode(ev))
"""


@dataclass
class EventWriter:
    """Writes stock changes the way the scripts do: level moved + event appended, atomically.

    Keeps the reservations and orders it made, so ``release``/``commit``/``fulfill`` can
    write their lines like the real scripts.
    """

    client: redis.Redis
    settings: Settings
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: list[tuple[int, str]] = field(default_factory=list)

    def keys(self, sku: str) -> Keys:
        return Keys(self.settings.key_prefix, partition_of(sku, self.settings.partitions))

    def emit(self, sku: str, event: dict[str, Any]) -> str:
        """Append ``event`` to the partition of ``sku``; returns the stream id."""
        k = self.keys(sku)
        keys = [k.events, k.skus]
        for line in event.get("lines", []):
            keys += [k.level(line["sku"], line["loc"]), k.locations(line["sku"])]
        mid = self.client.eval(_EMIT, len(keys), *keys, json.dumps(event))
        mid = mid.decode() if isinstance(mid, bytes) else mid
        self.ids.append((partition_of(sku, self.settings.partitions), mid))
        return str(mid)

    @staticmethod
    def _line(sku: str, loc: str, qty: int, d: list[int], **extra: Any) -> dict[str, Any]:
        return {"sku": sku, "loc": loc, "qty": qty, "d": d, **extra}

    def level(self, sku: str, loc: str = "default") -> list[int]:
        v = self.client.hmget(
            self.keys(sku).level(sku, loc), "on_hand", "reserved", "committed", "safety"
        )
        return [int(x or 0) for x in v]

    def count(self, sku: str, on_hand: int, loc: str = "default", safety: int | None = None) -> str:
        old = self.level(sku, loc)
        safety = old[3] if safety is None else safety
        d = [on_hand - old[0], 0, 0, safety - old[3]]
        line = self._line(sku, loc, on_hand, d)
        return self.emit(sku, {"type": "counted", "reason": "count", "lines": [line]})

    def adjust(self, sku: str, delta: int, loc: str = "default", reason: str = "received") -> str:
        line = self._line(sku, loc, abs(delta), [delta, 0, 0, 0])
        return self.emit(sku, {"type": "adjusted", "reason": reason, "lines": [line]})

    def reserve(
        self,
        rid: str,
        lines: list[tuple[str, int]],
        *,
        loc: str = "default",
        cust: str | None = None,
        ttl_ms: int = 900_000,
    ) -> str:
        exp = int(time.time() * 1000) + ttl_ms
        ev_lines = [self._line(s, loc, q, [0, q, 0, 0], bo=0) for s, q in lines]
        ev: dict[str, Any] = {
            "type": "reserved",
            "rid": rid,
            "status": "active",
            "exp": exp,
            "lines": ev_lines,
        }
        if cust:
            ev["cust"] = cust
        self.reservations[rid] = {
            "lines": [(s, loc, q) for s, q in lines],
            "cust": cust,
            "exp": exp,
        }
        return self.emit(lines[0][0], ev)

    def _end(self, rid: str, kind: str) -> str:
        r = self.reservations[rid]
        lines = [self._line(s, loc, q, [0, -q, 0, 0]) for s, loc, q in r["lines"]]
        ev: dict[str, Any] = {"type": kind, "rid": rid, "status": kind, "lines": lines}
        if kind == "expired":
            ev["exp"] = r["exp"]
        return self.emit(r["lines"][0][0], ev)

    def release(self, rid: str) -> str:
        return self._end(rid, "released")

    def expire(self, rid: str) -> str:
        return self._end(rid, "expired")

    def extend(self, rid: str, ttl_ms: int) -> str:
        r = self.reservations[rid]
        r["exp"] = int(time.time() * 1000) + ttl_ms
        ev = {"type": "extended", "rid": rid, "status": "active", "exp": r["exp"]}
        return self.emit(r["lines"][0][0], ev)

    def _order_event(self, kind: str, oid: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        o = self.orders[oid]
        done = sum(line["fulfilled"] for line in o["lines"])
        open_ = sum(line["qty"] - line["fulfilled"] - line["cancelled"] for line in o["lines"])
        if open_ > 0:
            status = "partially_fulfilled" if done else "open"
        else:
            status = "fulfilled" if done else "cancelled"
        snap = {"rid": o["rid"], "status": status, "lines": [dict(x) for x in o["lines"]]}
        ev: dict[str, Any] = {"type": kind, "oid": oid, "rid": o["rid"], "status": status}
        if o["cust"]:
            ev["cust"] = snap["cust"] = o["cust"]
        ev["order"] = snap
        if lines:
            ev["lines"] = lines
        return ev

    def commit(self, rid: str, oid: str) -> str:
        r = self.reservations[rid]
        self.orders[oid] = {
            "rid": rid,
            "cust": r["cust"],
            "lines": [
                {"sku": s, "loc": loc, "qty": q, "fulfilled": 0, "cancelled": 0, "returned": 0}
                for s, loc, q in r["lines"]
            ],
        }
        lines = [self._line(s, loc, q, [0, -q, q, 0]) for s, loc, q in r["lines"]]
        ev = self._order_event("committed", oid, lines)
        ev["exp"] = r["exp"]
        return self.emit(r["lines"][0][0], ev)

    def fulfill(self, oid: str, qty: int | None = None) -> str:
        """Ship ``qty`` units of the first line (all its open units by default)."""
        line = self.orders[oid]["lines"][0]
        q = qty if qty is not None else line["qty"] - line["fulfilled"] - line["cancelled"]
        line["fulfilled"] += q
        ev = self._order_event(
            "fulfilled", oid, [self._line(line["sku"], line["loc"], q, [-q, 0, -q, 0])]
        )
        return self.emit(line["sku"], ev)

    def cancel(self, oid: str) -> str:
        lines = []
        for line in self.orders[oid]["lines"]:
            q = line["qty"] - line["fulfilled"] - line["cancelled"]
            if q:
                line["cancelled"] += q
                lines.append(self._line(line["sku"], line["loc"], q, [0, 0, -q, 0]))
        sku = self.orders[oid]["lines"][0]["sku"]
        return self.emit(sku, self._order_event("cancelled", oid, lines))

    def policy(self, sku: str, locations: list[str] | None = None, **policy: Any) -> str:
        p: dict[str, Any] = {"backorder": "deny", **policy}
        if locations:
            p["locations"] = locations
        return self.emit(sku, {"type": "policy", "sku": sku, "policy": p})

    def busy(self, skus: int = 5, rounds: int = 20) -> None:
        """A mix of every event kind over a few skus: counts, holds, commits, ships, cancels."""
        names = [f"SKU-{i}" for i in range(skus)]
        for s in names:
            self.policy(s, locations=["default"])
            self.count(s, 1000)
        for r in range(rounds):
            s = names[r % skus]
            rid, oid = f"r{r}", f"o{r}"
            self.reserve(rid, [(s, 1 + r % 3)], cust=f"c{r % 4}")
            match r % 5:
                case 0:
                    self.release(rid)
                case 1:
                    self.expire(rid)
                case 2:
                    self.commit(rid, oid)
                    self.fulfill(oid, 1)
                case 3:
                    self.commit(rid, oid)
                    self.cancel(oid)
                case _:
                    self.extend(rid, 60_000)
            if r % 7 == 0:
                self.adjust(s, -2, reason="damaged")

    def entries(self, partition: int = 0) -> list[tuple[int, Any, Any]]:
        """The stream's entries as the worker gets them: (partition, id, fields)."""
        key = Keys(self.settings.key_prefix, partition).events
        return [(partition, mid, f) for mid, f in self.client.xrange(key)]


@pytest.fixture
def events(sync_redis: redis.Redis, ledger_settings: Settings) -> EventWriter:
    return EventWriter(sync_redis, ledger_settings)


# --- a TCP forwarder, to take PostgreSQL away and give it back -------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Forwarder:
    """Listens on ``port`` and relays every connection to ``upstream``."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self._conns: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Every relayed connection ends at once for both peers, as when the server goes away.

        ``shutdown`` before ``close``: a plain close leaves a socket that another thread is
        blocked on open (the kernel keeps it for that call), so one peer could wait forever
        for an answer the other already sent (a commit applied, its reply never relayed).
        """
        self._closed = True
        for s in (self.sock, *self._conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def forwarder() -> Iterator[Callable[[int], Forwarder]]:
    """Starts a :class:`Forwarder` to PostgreSQL on a given port; all closed afterwards."""
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    upstream = (admin.host or "127.0.0.1", admin.port or 5432)
    made: list[Forwarder] = []

    def start(port: int) -> Forwarder:
        made.append(Forwarder(port, upstream))
        return made[-1]

    yield start
    for f in made:
        f.close()
