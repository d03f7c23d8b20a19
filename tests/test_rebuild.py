"""Rebuild: an empty Redis brought back from the ledger equals the one that was lost, and the sale goes on."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aredis
from redis_server import RedisServer
from sqlalchemy import Engine as DbEngine
from sqlalchemy import text

from flashstock.engine import Engine
from flashstock.errors import IdempotencyConflict
from flashstock.keys import Keys
from flashstock.rebuild import RebuildRefused, rebuild
from flashstock.reconcile import reconcile
from flashstock.settings import Settings
from flashstock.worker import LedgerWorker

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

# Keys a rebuild does not restore on purpose: the stream (drained, trimmed) and the rate windows.
SKIPPED = ("ev", "rl:")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(private_redis: RedisServer, pg_url: str) -> Settings:
    return Settings(
        key_prefix="fsr",
        redis_url=private_redis.url,
        database_url=pg_url,
        worker_batch=500,
        worker_block_ms=20,
        worker_claim_idle_ms=100,
        max_hold_seconds=3600,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    client = aredis.Redis.from_url(settings.redis_url or "")
    yield Engine(client, settings)
    await client.aclose()


def drain(settings: Settings, db: DbEngine) -> LedgerWorker:
    w = LedgerWorker(redis.Redis.from_url(settings.redis_url or ""), db, settings)
    w.drain()
    w.trim()
    return w


def snapshot(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key of the prefix that a rebuild restores: value, and when it expires (ms)."""
    now = int(client.time()[0]) * 1000
    out: dict[str, Any] = {}
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        if key.split("}:", 1)[1].startswith(SKIPPED):
            continue
        kind = client.type(raw).decode()
        if kind == "hash":
            value: Any = {k.decode(): v.decode() for k, v in client.hgetall(raw).items()}
        elif kind == "zset":
            value = {m.decode(): s for m, s in client.zrange(raw, 0, -1, withscores=True)}
        elif kind == "set":
            value = sorted(m.decode() for m in client.smembers(raw))
        else:
            value = client.get(raw).decode()
        pttl = client.pttl(raw)
        out[key] = (kind, value, None if pttl < 0 else now + pttl)
    return out


def active_only(snap: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``ch:`` sets keep committed and released members until a later reserve prunes them;
    a rebuild writes only the active ones. Compare those."""
    out = dict(snap)
    for key, (kind, value, exp) in snap.items():
        if ":ch:" in key:
            base = key.split("ch:", 1)[0]
            live = {
                rid: s
                for rid, s in value.items()
                if snap.get(f"{base}rs:{rid}", (None, {}))[1].get("st") == "active"
            }
            out[key] = (kind, live, exp)
    return out


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert sorted(after) == sorted(before)
    for key, (kind, value, exp) in before.items():
        kind2, value2, exp2 = after[key]
        assert (kind2, value2) == (kind, value), key
        assert (exp is None) == (exp2 is None), key
        if exp is not None:
            assert abs(exp2 - exp) <= 1000, (key, exp, exp2)


async def busy_store(e: Engine) -> None:
    """One of everything a store does, so every key kind exists."""
    await e.set_item(
        "TEE", {"backorder": "deny", "per_customer_limit": 8}, locations=["east", "west"]
    )
    await e.set_on_hand("TEE", "east", 40, safety_stock=2)
    await e.set_on_hand("TEE", "west", 30)
    await e.set_on_hand("TEE", "north", 10)  # stocked after the priority list: prio_rest
    await e.set_on_hand("MUG", "default", 25, adjustment_id="count-1")
    await e.adjust("MUG", "default", 5, "received", adjustment_id="adj-1")
    await e.set_item(
        "PRE", {"backorder": "allow", "backorder_limit": 10, "restock_date": "2027-01-10"}
    )
    await e.set_item("CAP", {"max_hold_seconds": 600, "low_stock_threshold": 3})
    await e.set_on_hand("CAP", "default", 8)
    for i in range(12):
        await e.reserve(
            [("TEE", 1 + i % 2), ("MUG", 1)],
            reservation_id=f"r{i}",
            customer_id=f"c{i % 4}",
            ttl_seconds=900,
        )
    await e.reserve([("PRE", 3)], reservation_id="pre", customer_id="c1")
    await e.reserve([("CAP", 2)], reservation_id="cap", customer_id="c2", ttl_seconds=300)
    await e.reserve([("MUG", 1)], reservation_id="anon")
    await e.extend("r0", 1200)
    await e.release("r1")
    for i, oid in ((2, "o2"), (3, "o3"), (4, "o4"), (5, "o5"), (6, "o6")):
        await e.commit(f"r{i}", oid)
    await e.fulfill("o2", fulfillment_id="ship-2")
    await e.fulfill("o3", [("TEE", 1)], fulfillment_id="ship-3")
    await e.cancel("o4")
    await e.fulfill("o5", fulfillment_id="ship-5")
    await e.return_items("o5", [("MUG", 1)], restock=True, return_id="ret-5")
    await e.reserve([("MUG", 2)], reservation_id="brief", customer_id="c3", ttl_seconds=1)
    await asyncio.sleep(1.05)
    await e.sweep(e.partitions[0])


async def test_rebuilt_redis_equals_the_original(
    engine: Engine, settings: Settings, private_redis: RedisServer, pg_engine: DbEngine
) -> None:
    await busy_store(engine)
    drain(settings, pg_engine)
    sync = private_redis.client()
    before = snapshot(sync, settings.key_prefix)
    stream = Keys(settings.key_prefix, 0).events
    last_id = sync.xinfo_stream(stream)["last-generated-id"]
    assert any(":ch:" in k for k in before) and any(":id:ful:" in k for k in before)

    sync.flushall()  # the private server: Redis is gone
    report = await rebuild(engine, pg_engine)
    assert report.warnings == []
    assert report.holds_active == 9 and report.holds_expired == 0
    after = snapshot(sync, settings.key_prefix)
    assert_same(active_only(before, settings.key_prefix), after)
    assert sync.xinfo_stream(stream)["last-generated-id"] == last_id

    # The sale goes on: replays answer as before, restored holds commit, new ones work.
    r0 = await engine.reserve(
        [("TEE", 1), ("MUG", 1)], reservation_id="r0", customer_id="c0", ttl_seconds=900
    )
    assert (
        not r0.created
        and r0.data["expires_at"] < (await engine.get_reservation("r0")).data["expires_at"]
    )
    with pytest.raises(IdempotencyConflict):
        await engine.reserve([("TEE", 9)], reservation_id="r0", customer_id="c0")
    again = await engine.fulfill("o3", [("TEE", 1)], fulfillment_id="ship-3")
    assert not again.created
    assert (await engine.commit("r7", "o7")).data["status"] == "open"
    assert (await engine.commit("r2", "o2")).created is False  # replay of the first commit
    await engine.reserve([("TEE", 2)], reservation_id="new", customer_id="c9")
    drain(settings, pg_engine)
    assert reconcile(sync, pg_engine, settings) == []


async def test_holds_whose_ttl_passed_while_redis_was_away_come_back_expired(
    engine: Engine, settings: Settings, private_redis: RedisServer, pg_engine: DbEngine
) -> None:
    await engine.set_on_hand("A", "default", 10)
    await engine.reserve([("A", 3)], reservation_id="short", customer_id="c", ttl_seconds=1)
    await engine.reserve([("A", 2)], reservation_id="long", customer_id="c", ttl_seconds=600)
    drain(settings, pg_engine)
    sync = private_redis.client()
    sync.flushall()
    await asyncio.sleep(1.05)  # "short" expires while Redis is empty
    report = await rebuild(engine, pg_engine)
    assert (report.holds_active, report.holds_expired) == (1, 1)
    k = Keys(settings.key_prefix, 0)
    assert sync.hget(k.level("A", "default"), "reserved") == b"2"
    assert sync.get(k.customer("c", "A")) == b"2"
    assert sync.hget(k.reservation("short"), "st") == b"expired"
    assert (await engine.get_stock("A")).data["total"]["available"] == 8
    w = drain(settings, pg_engine)
    assert w.inserted == 1  # the expired event the rebuild wrote
    assert reconcile(sync, pg_engine, settings) == []


async def test_new_events_never_reuse_a_ledger_id(
    engine: Engine, settings: Settings, private_redis: RedisServer, pg_engine: DbEngine
) -> None:
    """A Redis whose clock is behind the ledger's newest id must still write above it."""
    await engine.set_on_hand("A", "default", 10)
    drain(settings, pg_engine)
    future = int(time.time() * 1000) + 3_600_000
    with pg_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO ledger_events (partition, stream_ms, stream_seq, type, payload)"
                " VALUES (0, :ms, 7, 'adjusted', CAST(:p AS jsonb))"
            ),
            {"ms": future, "p": orjson.dumps({"type": "adjusted"}).decode()},
        )
    private_redis.client().flushall()
    await rebuild(engine, pg_engine)
    await engine.adjust("A", "default", 1, "received")
    ids = [m for m, _ in private_redis.client().xrange(Keys(settings.key_prefix, 0).events)]
    assert [tuple(map(int, i.decode().split("-"))) for i in ids] == [(future, 8)]


async def test_refuses_a_partition_that_holds_data(
    engine: Engine, settings: Settings, pg_engine: DbEngine
) -> None:
    await engine.set_on_hand("A", "default", 10)
    drain(settings, pg_engine)
    with pytest.raises(RebuildRefused):
        await rebuild(engine, pg_engine)
    report = await rebuild(engine, pg_engine, force=True)  # idempotent over itself
    assert report.levels == 1


@pytest.mark.slow
async def test_redis_lost_mid_sale_rebuilt_every_active_hold_honoured(
    engine: Engine, settings: Settings, private_redis: RedisServer, pg_engine: DbEngine
) -> None:
    skus = [f"S{i}" for i in range(6)]
    for s in skus:
        await engine.set_item(s, {"per_customer_limit": 6})
        await engine.set_on_hand(s, "default", 60)
    rnd = random.Random(7)
    counter = iter(range(10**9))

    async def shopper(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            rid, cust = f"r{i}", f"c{rnd.randrange(40)}"
            try:
                await engine.reserve([(rnd.choice(skus), rnd.randint(1, 2))], reservation_id=rid,
                                     customer_id=cust, ttl_seconds=rnd.choice([2, 600, 900]))  # fmt: skip
            except Exception:  # noqa: BLE001 - sold out or over the limit: a normal answer
                continue
            match rnd.randrange(4):
                case 0:
                    await engine.release(rid)
                case 1:
                    await engine.commit(rid, f"o{i}")
                case 2:
                    await engine.commit(rid, f"o{i}")
                    await engine.fulfill(f"o{i}", fulfillment_id=f"f{i}")
                case _:
                    pass

    await asyncio.gather(*(shopper(40) for _ in range(8)))
    sync = private_redis.client()
    k = Keys(settings.key_prefix, 0)
    # The 2 s holds run out and are reaped before the snapshot: otherwise the levels below
    # count holds whose TTL passes (or has passed, unreaped) before the rebuild, which then
    # expires them, and the comparison depends on how fast the machine is.
    now = int(sync.time()[0]) * 1000
    short = [ex for _, ex in sync.zrange(k.expiries, 0, -1, withscores=True) if ex <= now + 5000]
    if short:
        await asyncio.sleep(max(0, max(short) - now) / 1000 + 0.05)
    while await engine.sweep(engine.partitions[0]):
        pass
    drain(settings, pg_engine)
    now = int(sync.time()[0]) * 1000
    held = {
        rid.decode(): ex
        for rid, ex in sync.zrange(k.expiries, 0, -1, withscores=True)
        if ex > now + 5000
    }
    lines = {rid: sync.hget(k.reservation(rid), "ln") for rid in held}
    levels = {s: sync.hgetall(k.level(s, "default")) for s in skus}
    assert len(held) > 20

    private_redis.kill()  # total loss: the process and its AOF
    private_redis.wipe()
    private_redis.start()
    await engine.redis.connection_pool.disconnect()
    report = await rebuild(engine, pg_engine)
    assert report.warnings == []

    for rid, ex in held.items():
        assert sync.hget(k.reservation(rid), "ln") == lines[rid]
        assert sync.hget(k.reservation(rid), "st") == b"active"
        pttl = sync.pttl(k.reservation(rid))
        assert pttl == -1  # active reservations do not expire as keys; their holds do
        left = ex - int(sync.time()[0]) * 1000
        assert abs(float(sync.zscore(k.expiries, rid)) - ex) < 1000 and left > 0
    for s in skus:
        assert sync.hgetall(k.level(s, "default")) == levels[s]
    # Every restored hold is honoured: it commits whatever the new traffic does.
    await asyncio.gather(*(shopper(20) for _ in range(4)))
    for rid in list(held)[:15]:
        await engine.commit(rid, f"after-{rid}")
    drain(settings, pg_engine)
    assert reconcile(sync, pg_engine, settings) == []
    for s in skus:
        lv = {f.decode(): int(v) for f, v in sync.hgetall(k.level(s, "default")).items()}
        assert lv["on_hand"] - lv["reserved"] - lv["committed"] - lv["safety"] >= 0
