"""Reconcile: Redis against the ledger, clean when they agree, exact before a drain and under load."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from flashstock.keys import Keys
from flashstock.reconcile import Difference, reconcile
from flashstock.settings import Settings
from flashstock.worker import GROUP, LedgerWorker
from flashstock.worker.persist import persist_batch

pytest_plugins = ["conftest_ledger"]

pytestmark = pytest.mark.redis


def test_clean_after_a_drain(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy(rounds=40)
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []


def test_clean_with_an_empty_store(
    sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()  # creates empty streams
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []


def test_exact_before_and_during_a_drain(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    """Persisted, pending on a dead consumer, undelivered, trimmed: every mix balances."""
    settings = ledger_settings.model_copy(update={"worker_batch": 25})
    events.busy(rounds=50)
    stream = Keys(settings.key_prefix, 0).events
    w = LedgerWorker(sync_redis, ledger_engine, settings)
    assert reconcile(sync_redis, ledger_engine, settings) == []  # nothing persisted yet
    w.run_once()
    assert reconcile(sync_redis, ledger_engine, settings) == []
    sync_redis.xreadgroup(GROUP, "dead-1", {stream: ">"}, count=25)
    w.run_once()
    w.trim()
    assert reconcile(sync_redis, ledger_engine, settings) == []
    events.count("SKU-1", 3)
    assert reconcile(sync_redis, ledger_engine, settings) == []
    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.05)
    w.drain()
    w.trim()
    assert sync_redis.xlen(stream) == 0
    assert reconcile(sync_redis, ledger_engine, settings) == []


def test_exact_when_newer_events_were_persisted_first(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy(rounds=30)
    batch = events.entries()
    # Only the newer half is in the ledger: the levels table is ahead of the older entries
    # still in the stream, whose changes it already includes.
    persist_batch(ledger_engine, batch[len(batch) // 2 :])
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []


def test_finds_a_wrong_level(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy()
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    key = Keys(ledger_settings.key_prefix, 0).level("SKU-2", "default")
    right = int(sync_redis.hget(key, "reserved"))
    sync_redis.hincrby(key, "reserved", 5)  # a change that never went through a script
    diffs = reconcile(sync_redis, ledger_engine, ledger_settings)
    assert diffs == [
        Difference("SKU-2", "default", "reserved", right + 5, right, "levels"),
        Difference("SKU-2", "default", "reserved", right + 5, right, "replay"),
    ]
    assert str(diffs[0]) == (f"SKU-2 @ default: reserved redis={right + 5} ledger={right} (levels)")


def test_a_level_on_one_side_only_is_a_difference(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.count("A", 5)
    events.count("B", 7)
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    k = Keys(ledger_settings.key_prefix, 0)
    sync_redis.delete(k.level("A", "default"))  # lost from Redis
    sync_redis.hset(k.level("C", "default"), mapping={"on_hand": 2, "reserved": 0})
    sync_redis.zadd(k.locations("C"), {"default": 0})
    sync_redis.sadd(k.skus, "C")  # in Redis only
    diffs = reconcile(sync_redis, ledger_engine, ledger_settings)
    by = {(d.sku, d.field, d.check): (d.redis, d.ledger) for d in diffs}
    assert by[("A", "on_hand", "levels")] == (None, 5)
    assert by[("A", "safety", "replay")] == (None, 0)
    assert by[("C", "on_hand", "levels")] == (2, None)
    assert by[("C", "committed", "replay")] == (0, None)
    assert {d.sku for d in diffs} == {"A", "C"}
    assert len(diffs) == 16  # 2 levels x 4 fields x 2 checks


def test_levels_declared_by_a_policy_balance(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    """set_item creates listed locations at zero without a movement; the ledger knows them."""
    events.count("A", 5)
    events.policy("A", locations=["default", "store-2"])
    k = Keys(ledger_settings.key_prefix, 0)
    sync_redis.hset(
        k.level("A", "store-2"),
        mapping=dict.fromkeys(("on_hand", "reserved", "committed", "safety"), 0),
    )
    sync_redis.zadd(k.locations("A"), {"store-2": 1})
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []


@pytest.mark.slow
def test_exact_under_traffic_with_a_running_worker(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    """Writers, the worker (trimming all the time) and reconcile run at once: never a diff."""
    settings = ledger_settings.model_copy(update={"worker_batch": 7, "worker_block_ms": 5})
    w = LedgerWorker(sync_redis, ledger_engine, settings, trim_every_s=0.0)
    stop = threading.Event()
    worker = threading.Thread(target=w.run, args=(stop,), daemon=True)
    worker.start()

    def traffic() -> None:
        writer = type(events)(redis.Redis.from_url(_url(sync_redis)), settings)
        i = 0
        while not stop.is_set():
            writer.count(f"T{i % 4}", i % 50)
            writer.adjust(f"T{i % 4}", 1)
            i += 1

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        for _ in range(15):
            assert reconcile(sync_redis, ledger_engine, settings) == []
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(timeout=10)
        worker.join(timeout=10)
    w.drain()
    assert w.inserted > 0 and w.duplicates == 0 and w.trimmed > 0
    assert reconcile(sync_redis, ledger_engine, settings) == []


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def test_clean_with_the_real_scripts(
    sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    """Events written by the Lua scripts themselves, through the engine, balance too."""
    pytest.importorskip("flashstock.engine")
    import asyncio

    import redis.asyncio as aredis

    from flashstock.engine import Engine as StockEngine

    async def sale() -> None:
        client = aredis.Redis.from_url(_url(sync_redis))
        eng = StockEngine(client, ledger_settings)
        await eng.set_item(
            "A", {"backorder": "deny", "low_stock_threshold": 2}, locations=["main", "annex"]
        )
        await eng.set_on_hand("A", "main", 10)
        await eng.set_on_hand("A", "annex", 4)
        await eng.adjust("A", "annex", 3, "received")
        for i in range(6):
            await eng.reserve(
                [{"sku": "A", "quantity": 2}], reservation_id=f"r{i}", customer_id=f"c{i}"
            )
        await eng.release("r0")
        await eng.commit("r1", "o1")
        await eng.commit("r2", "o2")
        await eng.fulfill("o1")
        await eng.cancel("o2")
        await eng.reserve([{"sku": "A", "quantity": 1}], reservation_id="brief", ttl_seconds=1)
        await client.aclose()

    asyncio.run(sale())
    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings)
    w.drain()
    assert w.inserted > 10
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []
    time.sleep(1.05)  # "brief" is past its TTL but not reaped: still balanced
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []
