"""The write-behind worker: partition streams → the PostgreSQL (or SQLite) ledger.

``flashstock worker`` runs :func:`run_worker`: the ledger loop in the main
thread and the expiry sweeper beside it.
"""

from __future__ import annotations

import logging
import threading

import redis
from sqlalchemy import Engine

from flashstock.settings import Settings
from flashstock.worker.checks import DriftWatch, fault_hooks, serve_metrics, start_drift_watch
from flashstock.worker.consumer import GROUP, LedgerWorker, stop_on_signals
from flashstock.worker.persist import PersistResult, persist_batch
from flashstock.worker.sweeper import ExpirySweeper, start_sweeper

__all__ = [
    "GROUP",
    "DriftWatch",
    "ExpirySweeper",
    "LedgerWorker",
    "PersistResult",
    "persist_batch",
    "run_worker",
]

log = logging.getLogger("flashstock.worker")


def run_worker(
    settings: Settings,
    stop_event: threading.Event | None = None,
    *,
    redis_client: redis.Redis | None = None,
    engine: Engine | None = None,
    sweep: bool = True,
) -> LedgerWorker:
    """Persist the event streams and sweep expired holds until stopped.

    Stops on ``stop_event``, or SIGTERM/SIGINT when called from the main
    thread, after finishing the batch in flight. Without URLs in ``settings``
    the embedded default is used, and its SQLite ledger is migrated on start
    (a PostgreSQL ledger is migrated explicitly, ``flashstock db upgrade``).

    Returns:
        The worker, whose counters tell what it did.
    """
    from flashstock.db import make_engine, upgrade

    if redis_client is None or engine is None:
        if settings.redis_url is None or settings.database_url is None:
            from flashstock.embedded import start

            settings = start(settings).settings
    if redis_client is None:
        from flashstock.redis_client import create_sync

        assert settings.redis_url is not None
        redis_client = create_sync(settings.redis_url, "worker")
    own_engine = engine is None
    if engine is None:
        assert settings.database_url is not None
        engine = make_engine(settings.database_url)
    if engine.dialect.name == "sqlite":
        upgrade(engine)
    stop = stop_event or threading.Event()
    worker = LedgerWorker(redis_client, engine, settings, **fault_hooks())
    sweeper = ExpirySweeper(redis_client, settings, guard=worker.guard.ok)
    sweeper_thread = start_sweeper(sweeper, stop) if sweep else None
    watch_thread = start_drift_watch(DriftWatch(redis_client, engine, settings), stop)
    serve_metrics(settings)
    try:
        with stop_on_signals(stop):
            worker.run(stop)
    finally:
        stop.set()
        for t in (sweeper_thread, watch_thread):
            if t is not None:
                t.join(timeout=5)
        if own_engine:
            engine.dispose()
    return worker
