"""The write-behind worker against real Redis and PostgreSQL: no loss, no duplicate, ever."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from sqlalchemy import Engine, text

from flashstock.db import make_engine, upgrade
from flashstock.keys import Keys
from flashstock.settings import Settings
from flashstock.worker import GROUP, ExpirySweeper, LedgerWorker

pytest_plugins = ["conftest_ledger"]

SRC = str(Path(__file__).resolve().parents[1] / "src")


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def pending(client: redis.Redis, settings: Settings, p: int = 0) -> int:
    return int(client.xpending(Keys(settings.key_prefix, p).events, GROUP)["pending"])


def assert_ledger_matches(engine: Engine, events: Any, n: int) -> None:
    """Exactly the n events written, each once, and every level as in Redis."""
    with engine.connect() as conn:
        keys = conn.execute(
            text("SELECT partition, stream_ms, stream_seq FROM ledger_events")
        ).all()
        moves = conn.execute(
            text(
                "SELECT sku, location, sum(d_on_hand), sum(d_reserved), sum(d_committed),"
                " sum(d_safety) FROM ledger_movements GROUP BY sku, location"
            )
        ).all()
    written = {(p, *map(int, mid.split("-"))) for p, mid in events.ids}
    assert len(keys) == n == len(written)
    assert {tuple(k) for k in keys} == written
    assert moves, "no movements"
    for sku, loc, *d in moves:
        assert [int(x) for x in d] == events.level(sku, loc), (sku, loc)


@pytest.mark.redis
def test_drain_persists_every_event_once(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy(rounds=60)
    n = len(events.ids)
    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings)
    assert w.drain() == n
    assert (w.inserted, w.duplicates) == (n, 0)
    assert w.batches == -(-n // ledger_settings.worker_batch)
    assert pending(sync_redis, ledger_settings) == 0
    assert_ledger_matches(ledger_engine, events, n)
    assert w.drain() == 0


@pytest.mark.redis
def test_run_reads_the_next_batch_while_one_is_written_and_stops_with_both_persisted(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    ledger_settings = ledger_settings.model_copy(update={"worker_batch": 20})
    events.busy(rounds=60)
    n = len(events.ids)
    assert n > 5 * ledger_settings.worker_batch
    stop = threading.Event()
    seen: list[tuple[int, int, str]] = []  # (pending, ledger rows, first id) as each write starts
    release = threading.Event()

    def before_insert(entries: Any) -> None:
        first = entries[0][1]
        seen.append((pending(sync_redis, ledger_settings), count(ledger_engine, "ledger_events"),
                     first.decode() if isinstance(first, bytes) else first))  # fmt: skip
        if len(seen) == 1:
            # The first write is slow: the loop reads the next batch meanwhile, and waits.
            assert wait_for(
                lambda: pending(sync_redis, ledger_settings) == 2 * ledger_settings.worker_batch
            ), "the next batch was not read while the first was written"
            release.set()
        if len(seen) == 3:
            stop.set()  # a batch in flight, the next one read: both are finished

    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings, before_insert=before_insert)
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive() and release.is_set()
    batch = ledger_settings.worker_batch
    # Written one at a time, in stream order, each after the one before had committed.
    assert [rows for _, rows, _ in seen] == [i * batch for i in range(len(seen))]
    firsts = [first for _, _, first in seen]
    assert firsts == sorted(firsts, key=lambda i: tuple(map(int, i.split("-"))))
    assert len(seen) == 4  # the three before the stop, and the one read ahead of it
    assert w.inserted == count(ledger_engine, "ledger_events") == 4 * batch
    assert pending(sync_redis, ledger_settings) == 0  # whatever it read, it acknowledged
    stream = Keys(ledger_settings.key_prefix, 0).events
    names = {c["name"].decode() for c in sync_redis.xinfo_consumers(stream, GROUP)}
    assert w.consumer not in names  # stopped cleanly, holding nothing: its name is gone
    w2 = LedgerWorker(sync_redis, ledger_engine, ledger_settings)
    assert w2.drain() == n - 4 * batch
    assert w2.duplicates == 0
    assert_ledger_matches(ledger_engine, events, n)


@pytest.mark.redis
def test_every_partition_stream_is_read(
    sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    from conftest_ledger import EventWriter

    settings = ledger_settings.model_copy(update={"partitions": 4})
    w = EventWriter(sync_redis, settings)
    for i in range(40):
        w.count(f"S{i}", i + 1)
    assert len({p for p, _ in w.ids}) == 4
    worker = LedgerWorker(sync_redis, ledger_engine, settings)
    assert worker.drain() == 40
    assert_ledger_matches(ledger_engine, w, 40)


@pytest.mark.redis
def test_batch_redelivered_after_commit_is_not_written_twice(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy()
    n = len(events.ids)

    def crash(entries: Any) -> None:
        raise RuntimeError("died after COMMIT, before XACK")

    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings, after_commit=crash)
    with pytest.raises(RuntimeError):
        w.run_once()
    committed = count(ledger_engine, "ledger_events")
    assert committed == min(n, ledger_settings.worker_batch)
    assert pending(sync_redis, ledger_settings) == committed
    w.after_commit = None
    w.drain()  # its own pending entries first: all duplicates
    assert (w.inserted, w.duplicates) == (n, committed)  # the first batch counted once
    assert_ledger_matches(ledger_engine, events, n)


@pytest.mark.redis
def test_a_dead_consumers_pending_entries_are_reclaimed(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    events.busy(rounds=40)
    n = len(events.ids)
    stream = Keys(ledger_settings.key_prefix, 0).events
    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings)
    w.ensure_groups()
    taken = sync_redis.xreadgroup(GROUP, "dead-1", {stream: ">"}, count=30)[0][1]
    assert w.drain() == n - 30  # the dead consumer's entries are not idle long enough yet
    assert pending(sync_redis, ledger_settings) == 30
    time.sleep(ledger_settings.worker_claim_idle_ms / 1000 + 0.05)
    assert w.reclaim() == 30
    assert w.reclaimed == 30 and w.inserted == n and w.duplicates == 0
    assert pending(sync_redis, ledger_settings) == 0
    consumers = {
        c["name"].decode(): c["pending"] for c in sync_redis.xinfo_consumers(stream, GROUP)
    }
    assert consumers["dead-1"] == 0
    assert len(taken) == 30
    assert_ledger_matches(ledger_engine, events, n)


@pytest.mark.redis
def test_trim_never_drops_an_unpersisted_entry(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    settings = ledger_settings.model_copy(update={"worker_batch": 50})
    for i in range(100):
        events.count("A", i + 1)
    ids = [mid for _, mid in events.ids]
    stream = Keys(settings.key_prefix, 0).events
    w = LedgerWorker(sync_redis, ledger_engine, settings)
    assert w.trim() == 0  # nothing delivered yet
    assert w.run_once() == 50  # entries 0..49 persisted and acknowledged
    sync_redis.xreadgroup(GROUP, "dead-1", {stream: ">"}, count=20)  # 50..69 pending
    assert w.trim() == 50
    left = [m.decode() for m, _ in sync_redis.xrange(stream)]
    assert left == ids[50:]  # pending and undelivered entries all kept
    assert w.trim() == 0

    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.05)
    w.reclaim()  # 50..69 persisted
    assert w.trim() == 20
    assert [m.decode() for m, _ in sync_redis.xrange(stream)] == ids[70:]
    w.drain()
    assert w.trim() == 30
    assert sync_redis.xlen(stream) == 0
    events.count("A", 7)  # a new entry after a full trim stays until persisted
    assert w.trim() == 0 and sync_redis.xlen(stream) == 1
    assert count(ledger_engine, "ledger_events") == 100


def test_worker_runs_on_fakeredis(tmp_path: Path, ledger_settings: Settings) -> None:
    """The embedded default may run an in-process fakeredis: the same commands must work."""
    from conftest_ledger import EventWriter

    client = fakeredis.FakeRedis()
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        w = EventWriter(client, ledger_settings)
        w.busy(rounds=10)
        worker = LedgerWorker(client, engine, ledger_settings)
        assert worker.drain() == len(w.ids)
        assert worker.trim() == len(w.ids)
        assert_ledger_matches(engine, w, len(w.ids))
    finally:
        engine.dispose()


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_worker_killed_between_commit_and_ack_loses_and_duplicates_nothing(
    events: Any,
    sync_redis: redis.Redis,
    ledger_settings: Settings,
    pg_url: str,
    pg_engine: Engine,
    tmp_path: Path,
) -> None:
    for i in range(200):
        events.count(f"S{i % 7}", i)
    marker = tmp_path / "committed"
    script = textwrap.dedent(
        """
        import pathlib, sys, time
        import redis
        from flashstock.db import make_engine
        from flashstock.settings import Settings
        from flashstock.worker import LedgerWorker

        prefix, redis_url, db_url, marker = sys.argv[1:5]
        settings = Settings(key_prefix=prefix, redis_url=redis_url, database_url=db_url,
                            worker_batch=50)

        def hang(entries):
            pathlib.Path(marker).write_text(str(len(entries)))
            time.sleep(600)

        w = LedgerWorker(redis.Redis.from_url(redis_url), make_engine(db_url), settings,
                         after_commit=hang)
        w.run_once()
        """
    )
    from conftest_ledger import REDIS_URL

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, ledger_settings.key_prefix, REDIS_URL, pg_url, str(marker)],
        env=env,
    )
    try:
        assert wait_for(marker.exists, timeout=60), "the worker never committed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "50"
    assert count(pg_engine, "ledger_events") == 50  # committed...
    assert pending(sync_redis, ledger_settings) == 50  # ...but never acknowledged

    w = LedgerWorker(sync_redis, pg_engine, ledger_settings)
    time.sleep(ledger_settings.worker_claim_idle_ms / 1000 + 0.05)
    assert w.drain() == 200
    assert (w.inserted, w.duplicates, w.reclaimed) == (150, 50, 50)
    assert pending(sync_redis, ledger_settings) == 0
    assert_ledger_matches(pg_engine, events, 200)
    assert count(pg_engine, "ledger_movements") == 200


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_down_worker_backs_off_then_persists_everything(
    events: Any,
    sync_redis: redis.Redis,
    ledger_settings: Settings,
    pg_url: str,
    pg_engine: Engine,
    forwarder: Callable[[int], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nothing listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dbname = pg_url.rsplit("/", 1)[1]
    unreachable = make_engine(f"postgresql://postgres@127.0.0.1:{port}/{dbname}")
    events.busy(rounds=30)
    n = len(events.ids)
    w = LedgerWorker(sync_redis, unreachable, ledger_settings)
    stop = threading.Event()
    caplog.set_level(logging.WARNING, logger="flashstock.worker")
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    try:
        assert wait_for(lambda: w.errors >= 3, timeout=10)
        assert "ledger database down" in caplog.text
        assert count(pg_engine, "ledger_events") == 0
        assert sync_redis.xlen(Keys(ledger_settings.key_prefix, 0).events) == n  # all kept
        events.count("SKU-0", 3)  # traffic goes on meanwhile
        forwarder(port)  # PostgreSQL is back
        assert wait_for(lambda: count(pg_engine, "ledger_events") == n + 1, timeout=30)
        assert wait_for(lambda: pending(sync_redis, ledger_settings) == 0, timeout=10)
    finally:
        stop.set()
        t.join(timeout=10)
        unreachable.dispose()
    assert not t.is_alive()
    assert (w.inserted, w.duplicates) == (n + 1, 0)
    assert_ledger_matches(pg_engine, events, n + 1)


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_flight_and_exits(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, pg_url: str, pg_engine: Engine
) -> None:
    from conftest_ledger import REDIS_URL

    script = textwrap.dedent(
        """
        import logging, sys
        from flashstock.settings import Settings
        from flashstock.worker import run_worker

        logging.basicConfig(level=logging.INFO)
        prefix, redis_url, db_url = sys.argv[1:4]
        w = run_worker(Settings(key_prefix=prefix, redis_url=redis_url, database_url=db_url,
                                worker_batch=20, worker_block_ms=50))
        print("stopped", w.inserted, w.duplicates, flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, ledger_settings.key_prefix, REDIS_URL, pg_url],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(300):
            events.count(f"S{i % 5}", i)
        assert wait_for(lambda: count(pg_engine, "ledger_events") > 0, timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    inserted = int(out.split()[1])
    assert inserted == count(pg_engine, "ledger_events")
    # Whatever it read it persisted and acknowledged; the rest is still there for the next one.
    assert pending(sync_redis, ledger_settings) == 0
    w = LedgerWorker(sync_redis, pg_engine, ledger_settings)
    w.drain()
    assert w.duplicates == 0
    assert_ledger_matches(pg_engine, events, 300)


class _FakeScripts:
    def __init__(self, backlog: dict[str, int], limit: int) -> None:
        self.backlog, self.limit, self.calls = backlog, limit, []

    def __getitem__(self, name: str) -> object:
        return object()

    def call_sync(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((name, keys, args))
        n = min(self.backlog.get(keys[0], 0), args[1])
        self.backlog[keys[0]] = self.backlog.get(keys[0], 0) - n
        return [0, n]


def test_sweeper_calls_sweep_on_every_partition_until_caught_up() -> None:
    settings = Settings(key_prefix="fsx", partitions=3, sweep_batch=10, retention_seconds=60)
    bases = [Keys("fsx", p).base for p in range(3)]
    scripts = _FakeScripts({bases[0]: 25, bases[2]: 3}, 10)
    sweeper = ExpirySweeper(None, settings, scripts=scripts)  # type: ignore[arg-type]
    assert sweeper.sweep_once() == 28
    assert sweeper.expired == 28
    assert [c[1][0] for c in scripts.calls] == [bases[0]] * 3 + [bases[1], bases[2]]
    assert scripts.calls[0][2] == [60_000, 10]
    assert sweeper.sweep_once() == 0


@pytest.mark.redis
def test_sweeper_expires_holds_with_the_real_script(
    sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    pytest.importorskip("flashstock.engine")
    import asyncio

    import redis.asyncio as aredis
    from conftest_ledger import REDIS_URL

    from flashstock.engine import Engine as StockEngine

    sweeper = ExpirySweeper(sync_redis, ledger_settings)
    if not sweeper.available:
        pytest.skip("no sweep script")

    async def setup() -> None:
        client = aredis.Redis.from_url(REDIS_URL)
        eng = StockEngine(client, ledger_settings)
        await eng.set_on_hand("A", "default", 10)
        await eng.reserve([{"sku": "A", "quantity": 3}], reservation_id="short", ttl_seconds=1)
        await eng.reserve([{"sku": "A", "quantity": 2}], reservation_id="long", ttl_seconds=600)
        await client.aclose()

    asyncio.run(setup())
    assert sweeper.sweep_once() == 0
    time.sleep(1.1)
    assert sweeper.sweep_once() == 1
    lv = sync_redis.hget(Keys(ledger_settings.key_prefix, 0).level("A", "default"), "reserved")
    assert int(lv) == 2
    LedgerWorker(sync_redis, ledger_engine, ledger_settings).drain()
    with ledger_engine.connect() as conn:
        status = dict(conn.execute(text("SELECT id, status FROM reservations")).all())
    assert status == {"short": "expired", "long": "active"}


@pytest.mark.redis
def test_an_entry_deleted_while_pending_is_acknowledged_not_invented(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, ledger_engine: Engine
) -> None:
    for i in range(5):
        events.count("A", i + 1)
    stream = Keys(ledger_settings.key_prefix, 0).events
    w = LedgerWorker(sync_redis, ledger_engine, ledger_settings, consumer="stable")
    w.ensure_groups()
    w.read()  # delivered, not persisted: as if the process died here
    sync_redis.xdel(stream, events.ids[0][1])  # someone deletes one by hand
    assert w.process_own_pending() == 5
    assert (w.inserted, w.duplicates) == (4, 0)
    assert pending(sync_redis, ledger_settings) == 0
    assert count(ledger_engine, "ledger_events") == 4


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.slow
def test_workers_racing_on_the_same_streams_write_each_event_once(
    events: Any, sync_redis: redis.Redis, ledger_settings: Settings, pg_engine: Engine
) -> None:
    """Several workers, each also reclaiming everything pending at once (idle 0), so they
    keep taking batches from each other mid-flight: exactly once, and no deadlock."""
    settings = ledger_settings.model_copy(update={"worker_batch": 40})
    workers = [LedgerWorker(sync_redis, pg_engine, settings, consumer=f"w{i}") for i in range(4)]
    stop = threading.Event()

    def work(w: LedgerWorker) -> None:
        while not stop.is_set():
            w.reclaim(min_idle_ms=0)
            w.run_once(block_ms=5)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        events.busy(skus=6, rounds=150)
        n = len(events.ids)
        assert wait_for(lambda: count(pg_engine, "ledger_events") == n, timeout=60)
        assert wait_for(lambda: pending(sync_redis, settings) == 0, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert sum(w.inserted for w in workers) == n
    assert sum(w.errors for w in workers) == 0
    assert_ledger_matches(pg_engine, events, n)


def test_an_unmigrated_ledger_says_to_run_db_upgrade(sync_redis, ledger_settings, tmp_path, caplog):
    """A database with no tables is not 'down': the log says what to do, the events wait."""
    from flashstock.worker import LedgerWorker
    from flashstock.worker.consumer import Stopped

    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    worker = LedgerWorker(sync_redis, engine, ledger_settings)
    worker.ensure_groups()
    keys = Keys(ledger_settings.key_prefix, 0)
    sync_redis.xadd(keys.events, {"e": '{"type": "extended", "at": 1, "rid": "r"}'})
    entries = worker.read(block_ms=10)
    stop = threading.Timer(0.3, worker.stop)
    stop.start()
    with caplog.at_level(logging.ERROR, logger="flashstock.worker"):
        with pytest.raises(Stopped):  # stopped while waiting for the tables
            worker.persist(entries)
    stop.cancel()
    assert any("flashstock db upgrade" in r.getMessage() for r in caplog.records)
    assert sync_redis.xpending(keys.events, "ledger")["pending"] == 1
