"""reconcile --fix: the ledger's truth back into Redis, never applying an undrained event twice."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis_server import RedisServer
from sqlalchemy import Engine as DbEngine
from sqlalchemy import text as sa_text

from flashstock.engine import Engine
from flashstock.keys import Keys
from flashstock.reconcile import Difference, fix, lost_from_redis, reconcile
from flashstock.settings import Settings
from flashstock.worker import LedgerWorker

pytestmark = pytest.mark.redis


def test_fix_puts_a_drifted_level_back(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: DbEngine
) -> None:
    events.busy()
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    key = Keys(ledger_settings.key_prefix, 0).level("SKU-2", "default")
    right = int(sync_redis.hget(key, "reserved"))
    sync_redis.hincrby(key, "reserved", 5)  # a change that never went through a script
    length = sync_redis.xlen(Keys(ledger_settings.key_prefix, 0).events)
    report = fix(sync_redis, ledger_engine, ledger_settings)
    assert report.corrected == [
        Difference("SKU-2", "default", "reserved", right + 5, right, "levels")
    ]
    assert report.remaining == [] and report.lost == []
    assert int(sync_redis.hget(key, "reserved")) == right
    assert sync_redis.xlen(Keys(ledger_settings.key_prefix, 0).events) == length  # no event


def test_fix_counts_undrained_events_once(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: DbEngine
) -> None:
    events.busy(rounds=30)
    w = LedgerWorker(
        sync_redis, ledger_engine, ledger_settings.model_copy(update={"worker_batch": 20})
    )
    w.run_once()  # some persisted, the rest only in the stream
    k = Keys(ledger_settings.key_prefix, 0)
    sync_redis.hincrby(k.level("SKU-1", "default"), "on_hand", -3)
    sync_redis.delete(k.level("SKU-3", "default"))
    report = fix(sync_redis, ledger_engine, ledger_settings)
    assert {(d.sku, d.field) for d in report.corrected} >= {
        ("SKU-1", "on_hand"),
        ("SKU-3", "on_hand"),
    }
    assert report.remaining == []
    w.drain()
    assert reconcile(sync_redis, ledger_engine, ledger_settings) == []


def test_a_level_only_in_redis_is_reported_not_deleted(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: DbEngine
) -> None:
    events.count("A", 5)
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    k = Keys(ledger_settings.key_prefix, 0)
    sync_redis.hset(
        k.level("C", "default"), mapping={"on_hand": 2, "reserved": 0, "committed": 0, "safety": 0}
    )
    sync_redis.zadd(k.locations("C"), {"default": 0})
    sync_redis.sadd(k.skus, "C")
    report = fix(sync_redis, ledger_engine, ledger_settings)
    assert report.corrected == [] and {d.sku for d in report.skipped} == {"C"}
    assert sync_redis.exists(k.level("C", "default"))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", appendfsync="everysec")
    server.start()
    yield server
    server.stop()


@pytest.mark.postgres
async def test_after_a_crash_that_lost_persisted_writes_fix_restores_them(
    private_redis: RedisServer, pg_engine: DbEngine, pg_url: str, tmp_path: Path
) -> None:
    """AOF everysec: the last second of writes can be gone from Redis after the worker
    persisted them. reconcile names them; --fix restores them from the ledger."""
    settings = Settings(key_prefix="fsx", redis_url=private_redis.url, database_url=pg_url)
    client = aredis.Redis.from_url(private_redis.url)
    e = Engine(client, settings)
    sync = private_redis.client()
    await e.set_item("A", {"per_customer_limit": 10})
    await e.set_on_hand("A", "default", 20)
    await e.reserve([("A", 2)], reservation_id="kept", customer_id="c")
    w = LedgerWorker(sync, pg_engine, settings)
    w.drain()
    shutil.copytree(private_redis.dir / "appendonlydir", tmp_path / "aof-then")
    # The writes of the last second before the crash: persisted by the worker, then lost.
    await e.reserve([("A", 3)], reservation_id="lost", customer_id="c")
    await e.commit("kept", "order-1")
    await e.adjust("A", "default", 4, "received", adjustment_id="adj-lost")
    w.drain()
    private_redis.kill()
    shutil.rmtree(private_redis.dir / "appendonlydir")
    shutil.copytree(tmp_path / "aof-then", private_redis.dir / "appendonlydir")
    private_redis.start()
    await client.connection_pool.disconnect()
    sync = private_redis.client()

    lost = lost_from_redis(sync, pg_engine, settings)
    assert [(x.type, x.order_id or x.reservation_id or x.ref) for x in lost] == [
        ("reserved", "lost"), ("committed", "order-1"), ("adjusted", "adj-lost"),
    ]  # fmt: skip
    assert {d.field for d in reconcile(sync, pg_engine, settings)} == {
        "on_hand",
        "reserved",
        "committed",
    }

    report = await asyncio.to_thread(fix, sync, pg_engine, settings)
    assert report.remaining == [] and len(report.lost) == 3
    k = Keys(settings.key_prefix, 0)
    assert sync.hget(k.reservation("lost"), "st") == b"active"
    assert sync.hget(k.reservation("kept"), "st") == b"committed"
    assert sync.get(k.customer("c", "A")) == b"5"
    assert (await e.get_order("order-1")).data["status"] == "open"
    again = await e.adjust("A", "default", 4, "received", adjustment_id="adj-lost")
    assert not again.created  # the restored record answers the replay
    # New events continue after the ledger's ids; the worker takes the rest as duplicates.
    await e.release("lost")
    w2 = LedgerWorker(sync, pg_engine, settings)
    w2.drain()
    assert w2.inserted == 1
    assert (
        reconcile(sync, pg_engine, settings) == []
        and lost_from_redis(sync, pg_engine, settings) == []
    )
    assert (await e.get_stock("A")).data["total"]["available"] == 20 + 4 - 2
    # The partition's event count is the ledger's row count again, as demo and docs check it.
    with pg_engine.connect() as conn:
        rows = conn.execute(sa_text("SELECT count(*) FROM ledger_events")).scalar_one()
    assert int(sync.hget(k.stats, "events")) == rows
    await client.aclose()
    await asyncio.sleep(0)


@pytest.mark.postgres
def test_cli_reconcile_fix_and_rebuild(
    private_redis: RedisServer, pg_url: str, pg_engine: DbEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from flashstock.cli import app

    for k, v in {"FLASHSTOCK_REDIS_URL": private_redis.url, "FLASHSTOCK_DATABASE_URL": pg_url,
                 "FLASHSTOCK_KEY_PREFIX": "fscli"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    settings = Settings()
    sync = private_redis.client()

    async def stock() -> None:
        client = aredis.Redis.from_url(private_redis.url)
        e = Engine(client, settings)
        await e.set_on_hand("A", "default", 9)
        await e.reserve([("A", 2)], reservation_id="r1", ttl_seconds=600)
        await client.aclose()

    asyncio.run(stock())
    LedgerWorker(sync, pg_engine, settings).drain()
    runner = CliRunner()
    sync.hincrby(Keys("fscli", 0).level("A", "default"), "on_hand", 1)
    out = runner.invoke(app, ["reconcile"])
    assert out.exit_code == 1 and "on_hand redis=10 ledger=9" in out.output
    out = runner.invoke(app, ["reconcile", "--fix"])
    assert out.exit_code == 0, out.output
    assert "corrected: A @ default: on_hand redis=10 ledger=9" in out.output
    assert runner.invoke(app, ["rebuild"]).exit_code == 2  # not empty
    sync.flushall()
    out = runner.invoke(app, ["warm", "--from-db", "--full"])
    assert out.exit_code == 0, out.output
    assert "levels: 1" in out.output and "active holds kept: 1" in out.output
    assert runner.invoke(app, ["reconcile"]).exit_code == 0


def test_the_workers_periodic_reconcile_exports_drift(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: DbEngine
) -> None:
    from prometheus_client import REGISTRY

    from flashstock.worker import DriftWatch

    events.busy()
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    watch = DriftWatch(sync_redis, ledger_engine, ledger_settings)
    assert watch.check_once() == (0, 0)
    assert REGISTRY.get_sample_value("flashstock_reconcile_differences") == 0
    sync_redis.hincrby(Keys(ledger_settings.key_prefix, 0).level("SKU-1", "default"), "on_hand", 2)
    assert watch.check_once() == (2, 0)  # on_hand, in both views
    assert REGISTRY.get_sample_value("flashstock_reconcile_differences") == 2


def test_dead_consumers_with_nothing_pending_are_forgotten(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: DbEngine
) -> None:
    from flashstock.worker import GROUP

    events.count("A", 3)
    events.count("A", 4)
    stream = Keys(ledger_settings.key_prefix, 0).events
    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings, consumer="live")
    w.ensure_groups()
    for name in ("dead-1", "dead-2"):
        sync_redis.xreadgroup(GROUP, name, {stream: ">"}, count=1)
    time.sleep(ledger_settings.worker_claim_idle_ms / 1000 + 0.05)
    w.drain()  # reclaims what they read and died with
    assert w.prune_consumers(10) == 2
    names = {c["name"].decode() for c in sync_redis.xinfo_consumers(stream, GROUP)}
    assert names == {"live"}
