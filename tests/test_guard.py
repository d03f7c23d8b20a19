"""The worker refuses to write to a Redis that came back older than the ledger.

A Redis restarted from an AOF that missed its last writes no longer has events
the ledger holds. Until ``reconcile --fix`` restores them, nothing may write to
the partition: a new event would hide the gap from reconcile, and the sweeper
would expire holds the ledger knows were released or committed.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest_ledger import EventWriter
from redis_server import RedisServer
from sqlalchemy import Engine, text

from flashstock.keys import Keys
from flashstock.reconcile import fix, lost_from_redis
from flashstock.settings import Settings
from flashstock.worker import GROUP, LedgerWorker, run_worker
from flashstock.worker.guard import RedisBehindLedger, RedisGuard

pytest_plugins = ["conftest_ledger"]
pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def roll_back(
    client: redis.Redis, settings: Settings, keep: int, entries: list[Any] | None = None
) -> None:
    """What a Redis restarted from an old AOF looks like: the stream (``entries``, as they
    were then) ends ``keep`` entries in, and its group was last delivered there."""
    key = Keys(settings.key_prefix, 0).events
    entries = entries or client.xrange(key)
    with client.pipeline(transaction=True) as tx:  # at once, as a restart would show it
        tx.delete(key)
        for mid, fields in entries[:keep]:
            tx.xadd(key, fields, id=mid)
        tx.xgroup_create(key, GROUP, id=entries[keep - 1][0])
        tx.execute()


def test_a_worker_will_not_start_on_a_redis_behind_the_ledger(
    events: Any, sync_redis: redis.Redis, pg_engine: Engine, ledger_settings: Settings
) -> None:
    events.busy(skus=3, rounds=12)
    LedgerWorker(sync_redis, pg_engine, ledger_settings).drain()
    roll_back(sync_redis, ledger_settings, keep=10)
    lost = lost_from_redis(sync_redis, pg_engine, ledger_settings)
    assert lost
    key = Keys(ledger_settings.key_prefix, 0).events
    with pytest.raises(RedisBehindLedger, match="Redis is behind the ledger"):
        run_worker(ledger_settings, redis_client=sync_redis, engine=pg_engine)
    assert sync_redis.xlen(key) == 10  # nothing written: no expiry, no group change
    # Then the documented repair: reconcile --fix restores what the ledger has, and the
    # worker starts again.
    report = fix(sync_redis, pg_engine, ledger_settings)
    assert len(report.lost) == len(lost)
    assert lost_from_redis(sync_redis, pg_engine, ledger_settings) == []
    assert RedisGuard(sync_redis, pg_engine, ledger_settings).check() is True


def test_a_running_worker_stops_when_redis_comes_back_older(
    tmp_path: Path, pg_engine: Engine, ledger_settings: Settings
) -> None:
    """A private Redis (AOF always) is killed and restarted from an AOF copied earlier,
    under a running worker that has already persisted what came after the copy."""
    server = RedisServer(tmp_path / "redis", appendfsync="always")
    server.start()
    settings = ledger_settings.model_copy(update={"redis_url": server.url})
    client = server.client()
    events = EventWriter(client, settings)
    events.busy(skus=3, rounds=6)
    kept = client.xlen(Keys(settings.key_prefix, 0).events)
    snapshot = tmp_path / "aof-then"
    shutil.copytree(server.dir / "appendonlydir", snapshot)  # what the disk had then
    for i in range(10):
        events.count(f"SKU-{i % 3}", 100 + i)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_worker(settings, redis_client=server.client(), engine=pg_engine, stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with pg_engine.connect() as conn:
                n = conn.execute(text("SELECT count(*) FROM ledger_events")).scalar_one()
            if n == kept + 10:
                break
            time.sleep(0.05)
        assert n == kept + 10
        server.kill()
        shutil.rmtree(server.dir / "appendonlydir")
        shutil.copytree(snapshot, server.dir / "appendonlydir")
        server.start()
        t.join(timeout=15)
        assert not t.is_alive(), "the worker went on writing to a Redis behind the ledger"
    finally:
        stop.set()
        t.join(timeout=10)
        server.stop()
    assert len(errors) == 1 and isinstance(errors[0], RedisBehindLedger), errors
    assert len(errors[0].lost) == 10
